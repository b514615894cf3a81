"""MongoDB backend of ``MetadataStore`` on PyMongo's native asyncio client (``pymongo.AsyncMongoClient``).

Collections (one database, ``StoreConfig.mongodb_database``):

- ``versions``: one document per servable version, ``_id`` derived from (owner, name, version) so point reads
  and updates use the ``_id`` index; a unique index on (owner, name, version) backs the numbering up.
- ``counters``: one document per servable, ``last_version`` bumped with ``find_one_and_update($inc)``; the
  counter is never decremented, so numbers are never reused after deletion. The unique index on ``versions``
  is the last line of defence: an insert that collides (e.g. a lost counter) moves the counter past the
  highest stored number and retries.
- ``tasks``: ``_id`` is the task id; ``expires_at`` (a BSON date) carries a TTL index with
  ``expireAfterSeconds=0`` so the server deletes expired records itself. TTL monitors run about once a
  minute, so reads still compare ``expires_at_ms`` with the caller's clock.
- ``deletions``: one document per tombstoned version (same ``_id``), inserted by the deletion that claimed
  it, so concurrent deletions report each version once even where ``findAndModify`` is not atomic.
- ``verifications``: the latest test-vector verification of each version (same ``_id``), as JSON text.
- ``builds``: one document per version's build record (same ``_id`` as in ``versions``), the record as JSON
  text; saving one also copies its state and environment id onto the version document.
- ``tokens``: ``_id`` is the token's sha256 hex digest (unique by construction, like every ``_id``).
- ``group_members`` (``_id`` group and user), ``identity_links`` (``_id`` the external identity id) and
  ``audit`` (appended, read newest first): local groups, linked sign-in identities and the audit log.
- ``index_pending``: servables whose search entry has an update the index has not taken (search down);
  ``_id`` is ``owner/name``, ``mark`` the id of the latest failure.
- ``task_claims``: one document per change of a task's owner (``_id`` the task id and the owner it leaves,
  ``to`` the new owner, "" when the owner itself ended the task); one insert per pair wins, so an owner's
  outcome and another registry's takeover exclude each other. ``registries``: each registry's heartbeat
  (``_id`` its instance id).
- ``memo``: memoized run results (``dlhub.registry.memo``, ``registry.memo_shared``); ``_id`` is the
  memo key, ``value`` the output JSON, and ``expires_at`` carries the same TTL index as ``tasks``.

Records are mapped to and from documents field by field. Free-form JSON (servable metadata, task errors and
timings) is stored as JSON text, so keys MongoDB rejects or treats specially (``$``-prefixed, dotted, empty)
round-trip exactly, as do integers vs. floats and key order.

Connection failures (server down, restarting, unreachable) surface as ``StoreUnavailable`` (HTTP 503) once
server selection times out; PyMongo reconnects by itself when the server is back, and retryable reads and
writes cover a single failover or dropped connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final, cast

import bson
import msgspec
from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
)

from dlhub.common.config import StoreConfig
from dlhub.common.errors import PayloadTooLarge, StoreUnavailable
from dlhub.common.logging import get_logger
from dlhub.common.payloads import FileEntry, TablePreview
from dlhub.registry.store.interface import (
    OPEN_TASK_STATES,
    AuditQuery,
    AuditRecord,
    BuildStateValue,
    MetadataStore,
    PackageFormat,
    RegistryInstance,
    StoredBuild,
    StoredVerification,
    TaskKind,
    TaskRecord,
    TaskState,
    TokenRecord,
    VersionRecord,
    VersionStatus,
    link_targets,
    tombstone_metadata,
    with_access,
)

log = get_logger(__name__)

Document = dict[str, Any]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_DATE = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
_MAX_ALLOCATION_ATTEMPTS = 100

_json_encoder = msgspec.json.Encoder()
_manifest_decoder = msgspec.json.Decoder(tuple[FileEntry, ...])
_previews_decoder = msgspec.json.Decoder(tuple[TablePreview, ...])


def _dumps(value: Any) -> str:
    return _json_encoder.encode(value).decode()


def redact_url(url: str) -> str:
    """Return ``url`` with the password of its user-info part (``user:password@``) replaced by ``***``."""
    return re.sub(r"^([a-zA-Z0-9+.-]+://[^:@/]*:)[^@/]*@", r"\1***@", url)


def ms_to_date(epoch_ms: int) -> dt.datetime:
    """Epoch milliseconds as a UTC datetime (exact: BSON dates have millisecond precision)."""
    try:
        return _EPOCH + dt.timedelta(milliseconds=epoch_ms)
    except OverflowError:
        return _MAX_DATE


def _version_doc(record: VersionRecord, publish_id: str) -> Document:
    return {
        "_id": _version_id(record.owner, record.name, record.version),
        "publish_id": publish_id,
        "owner": record.owner,
        "name": record.name,
        "version": record.version,
        "status": record.status,
        "status_reason": record.status_reason,
        "digest": record.digest,
        "files": list(record.files),
        "metadata_json": _dumps(record.metadata),
        "published_at_ms": record.published_at_ms,
        "package_sha256": record.package_sha256,
        "package_format": record.package_format,
        "build_task_id": record.build_task_id,
        "deprecated": record.deprecated,
        "deprecation_reason": record.deprecation_reason,
        "deprecation_replacement": record.deprecation_replacement,
        "deprecated_at_ms": record.deprecated_at_ms,
        "deleted_at_ms": record.deleted_at_ms,
        "deleted_by": record.deleted_by,
        "environment": record.environment,
        "build_state": record.build_state,
        "manifest_json": _dumps(record.manifest),
        "previews_json": _dumps(record.previews),
        # The reverse lookup of dataset links (``list_linking_versions``) goes through this indexed array.
        "link_targets": [] if record.deleted else link_targets(record.metadata),
        "bundle_sha256": record.bundle_sha256,
    }


def _version_from_doc(doc: Document) -> VersionRecord:
    return VersionRecord(
        owner=doc["owner"],
        name=doc["name"],
        version=int(doc["version"]),
        status=cast(VersionStatus, doc["status"]),
        status_reason=doc.get("status_reason", ""),
        digest=doc.get("digest", ""),
        files=tuple(doc.get("files", ())),
        metadata=msgspec.json.decode(doc["metadata_json"]),
        published_at_ms=int(doc["published_at_ms"]),
        package_sha256=doc.get("package_sha256", ""),
        package_format=cast(PackageFormat, doc.get("package_format", "none")),
        build_task_id=doc.get("build_task_id", ""),
        deprecated=bool(doc.get("deprecated", False)),
        deprecation_reason=doc.get("deprecation_reason", ""),
        deprecation_replacement=doc.get("deprecation_replacement", ""),
        deprecated_at_ms=int(doc.get("deprecated_at_ms", 0)),
        deleted_at_ms=int(doc.get("deleted_at_ms", 0)),
        deleted_by=doc.get("deleted_by", ""),
        environment=doc.get("environment", ""),
        build_state=cast(BuildStateValue, doc.get("build_state", "")),
        manifest=_manifest_decoder.decode(doc.get("manifest_json") or "[]"),
        previews=_previews_decoder.decode(doc.get("previews_json") or "[]"),
        bundle_sha256=doc.get("bundle_sha256", ""),
    )


def _task_doc(task: TaskRecord) -> Document:
    return {
        "_id": task.task_id,
        "kind": task.kind,
        "state": task.state,
        "servable": task.servable,
        "submitter": task.submitter,
        "created_at_ms": task.created_at_ms,
        "updated_at_ms": task.updated_at_ms,
        "expires_at_ms": task.expires_at_ms,
        "expires_at": ms_to_date(task.expires_at_ms),
        "output": Binary(task.output_json) if task.output_json is not None else None,
        "error_json": _dumps(task.error) if task.error is not None else None,
        "timings_json": _dumps(task.timings) if task.timings is not None else None,
        "owner": task.owner,
        "deadline_ms": task.deadline_ms,
        "progress_json": _dumps(task.progress) if task.progress is not None else None,
    }


def _dumps_doc(doc: Document) -> Binary:
    """A task document kept whole inside another (BSON, so its dates and binaries survive)."""
    return Binary(bson.encode(doc))


def _loads_doc(data: bytes) -> Document:
    return bson.decode(data, codec_options=bson.CodecOptions(tz_aware=True))


def _task_from_doc(doc: Document) -> TaskRecord:
    output = doc.get("output")
    error_json = doc.get("error_json")
    timings_json = doc.get("timings_json")
    return TaskRecord(
        task_id=doc["_id"],
        kind=cast(TaskKind, doc["kind"]),
        state=cast(TaskState, doc["state"]),
        servable=doc["servable"],
        submitter=doc.get("submitter"),
        created_at_ms=int(doc["created_at_ms"]),
        updated_at_ms=int(doc["updated_at_ms"]),
        expires_at_ms=int(doc["expires_at_ms"]),
        output_json=bytes(output) if output is not None else None,
        error=msgspec.json.decode(error_json) if error_json is not None else None,
        timings=msgspec.json.decode(timings_json) if timings_json is not None else None,
        owner=doc.get("owner", ""),
        deadline_ms=int(doc.get("deadline_ms", 0)),
        progress=msgspec.json.decode(progress_json) if (progress_json := doc.get("progress_json")) else None,
    )


def _token_doc(token: TokenRecord) -> Document:
    return {
        "_id": token.token_hash,
        "user": token.user,
        "label": token.label,
        "created_at_ms": token.created_at_ms,
        "expires_at_ms": token.expires_at_ms,
        "revoked": token.revoked,
    }


def _token_from_doc(doc: Document) -> TokenRecord:
    expires = doc.get("expires_at_ms")
    return TokenRecord(
        token_hash=doc["_id"],
        user=doc["user"],
        label=doc.get("label", ""),
        created_at_ms=int(doc["created_at_ms"]),
        expires_at_ms=int(expires) if expires is not None else None,
        revoked=bool(doc.get("revoked", False)),
    )


def _counter_id(owner: str, name: str) -> str:
    return _dumps([owner, name])  # unambiguous whatever characters the names hold


def _version_id(owner: str, name: str, version: int) -> str:
    """The ``_id`` of a version document: point reads and updates go through the ``_id`` index."""
    return _dumps([owner, name, version])


VERSION_INDEXES = [
    IndexModel(
        [("owner", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)],
        name="servable_version",
        unique=True,
    ),
    IndexModel(
        [("status", ASCENDING), ("owner", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)],
        name="status",
    ),
    IndexModel([("package_sha256", ASCENDING)], name="package_sha256"),
    IndexModel([("link_targets", ASCENDING)], name="link_targets"),
]
TASK_TTL_INDEX = IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)
TASK_PLAIN_INDEX = IndexModel([("expires_at", ASCENDING)], name="expires_at")
TASK_STATE_INDEX = IndexModel([("state", ASCENDING), ("deadline_ms", ASCENDING)], name="state_deadline")
OPEN_STATES: Final = {"$in": list(OPEN_TASK_STATES)}
# Server error codes meaning "this server does not implement that" (NotImplemented, CommandNotSupported).
_NOT_IMPLEMENTED_CODES = frozenset({238, 115})


async def _create_task_indexes(tasks: AsyncCollection[Document]) -> bool:
    """Create the TTL index on ``tasks.expires_at``; return whether the server accepted it.

    MongoDB does; a server without TTL indexes (e.g. FerretDB 1.x) gets a plain index instead and expired
    tasks are removed by the registry's periodic ``delete_expired_tasks`` sweep alone.
    """
    try:
        await tasks.create_indexes([TASK_TTL_INDEX])
        return True
    except OperationFailure as exc:
        if exc.code not in _NOT_IMPLEMENTED_CODES:
            raise
        log.warning(
            "the MongoDB server does not support TTL indexes; expired tasks are deleted by the sweep only",
            error=str(exc),
        )
        await tasks.create_indexes([TASK_PLAIN_INDEX])
        return False


async def _create_memo_indexes(memo: AsyncCollection[Document]) -> bool:
    """The same TTL index for memoized results (without it ``put_memo`` deletes expired entries itself)."""
    try:
        await memo.create_indexes([TASK_TTL_INDEX])
        return True
    except OperationFailure as exc:
        if exc.code not in _NOT_IMPLEMENTED_CODES:
            raise
        await memo.create_indexes([TASK_PLAIN_INDEX])
        return False


class MongoMetadataStore(MetadataStore):
    """``MetadataStore`` on one MongoDB database."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.url = config.mongodb_url
        self.database_name = config.mongodb_database
        self._client: AsyncMongoClient[Document] | None = None
        self._db: AsyncDatabase[Document] | None = None
        self.ttl_index = False  # whether the server expires task records itself (known after ``open``)
        self.memo_ttl_index = False  # the same for memoized results

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @property
    def db(self) -> AsyncDatabase[Document]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def versions(self) -> AsyncCollection[Document]:
        return self.db["versions"]

    @property
    def counters(self) -> AsyncCollection[Document]:
        return self.db["counters"]

    @property
    def tasks(self) -> AsyncCollection[Document]:
        return self.db["tasks"]

    @property
    def memo(self) -> AsyncCollection[Document]:
        return self.db["memo"]

    @property
    def task_ends(self) -> AsyncCollection[Document]:
        """One claim per finished task (``update_open_task``); swept with the tasks."""
        return self.db["task_ends"]

    @property
    def task_claims(self) -> AsyncCollection[Document]:
        """Owner changes of tasks (``claim_task``, ``update_open_task`` with an owner); swept with tasks."""
        return self.db["task_claims"]

    @property
    def registries(self) -> AsyncCollection[Document]:
        return self.db["registries"]

    @property
    def builds(self) -> AsyncCollection[Document]:
        """One document per version's build record (``_id`` as in ``versions``), the record as JSON text."""
        return self.db["builds"]

    @property
    def verifications(self) -> AsyncCollection[Document]:
        """The latest test-vector verification of each version (``_id`` as in ``versions``), as JSON text."""
        return self.db["verifications"]

    @property
    def deletions(self) -> AsyncCollection[Document]:
        """One document per tombstoned version (``_id`` as in ``versions``): who claimed the deletion."""
        return self.db["deletions"]

    @property
    def tokens(self) -> AsyncCollection[Document]:
        return self.db["tokens"]

    @property
    def group_members_collection(self) -> AsyncCollection[Document]:
        return self.db["group_members"]

    @property
    def identity_links(self) -> AsyncCollection[Document]:
        return self.db["identity_links"]

    @property
    def audit(self) -> AsyncCollection[Document]:
        return self.db["audit"]

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn driver failures that mean "the server is not reachable" into ``StoreUnavailable``."""
        try:
            yield
        # ConnectionFailure covers ServerSelectionTimeoutError, AutoReconnect and NetworkTimeout.
        except ConnectionFailure as exc:
            log.warning("metadata store unavailable", operation=what, url=self.safe_url, error=str(exc))
            raise StoreUnavailable(
                f"the metadata store (MongoDB at {self.safe_url}) is unavailable: {_short(exc)}"
            ) from exc
        except DocumentTooLarge as exc:
            raise PayloadTooLarge(f"the record is too large for the metadata store: {exc}") from exc

    async def open(self) -> None:
        if self._db is not None:
            return
        cfg = self.config
        try:
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                self.url,
                serverSelectionTimeoutMS=int(cfg.mongodb_server_selection_timeout_s * 1000),
                connectTimeoutMS=int(cfg.mongodb_connect_timeout_s * 1000),
                socketTimeoutMS=int(cfg.mongodb_socket_timeout_s * 1000),
                retryWrites=True,
                retryReads=True,
                appname="dlhub-registry",
                tz_aware=True,
            )
        except (ConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise StoreUnavailable(f"invalid MongoDB URL {self.safe_url}: {exc}") from exc
        try:
            await client.admin.command("ping")
            db = client[self.database_name]
            # One command per index: FerretDB 1.24 crashes on a batch of indexes that already exist.
            for index in VERSION_INDEXES:
                await db["versions"].create_indexes([index])
            self.ttl_index = await _create_task_indexes(db["tasks"])
            await db["tasks"].create_indexes([TASK_STATE_INDEX])
            self.memo_ttl_index = await _create_memo_indexes(db["memo"])
        except ConnectionFailure as exc:
            await client.close()
            raise StoreUnavailable(
                f"cannot reach MongoDB at {self.safe_url} (database {self.database_name!r}) within "
                f"{cfg.mongodb_server_selection_timeout_s:g} s: {_short(exc)}"
            ) from exc
        except OperationFailure as exc:  # e.g. authentication failed, not authorised to create indexes
            await client.close()
            raise StoreUnavailable(
                f"MongoDB at {self.safe_url} (database {self.database_name!r}) refused to start the store: "
                f"{exc.details.get('errmsg') if exc.details else exc}"
            ) from exc
        except BaseException:
            await client.close()
            raise
        self._client, self._db = client, db
        log.info("metadata store open", backend="mongodb", url=self.safe_url, database=self.database_name)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
            await client.close()

    async def server_info(self) -> Document:
        """The server's ``buildInfo`` (FerretDB adds ``ferretdbVersion``)."""
        with self._errors("buildInfo"):
            info: Document = await self.db.client.admin.command("buildInfo")
            return info

    # -- versions ---------------------------------------------------------------------------------------

    async def _next_version(self, owner: str, name: str) -> int:
        counter_id = _counter_id(owner, name)
        for _ in range(_MAX_ALLOCATION_ATTEMPTS):
            try:
                doc = await self.counters.find_one_and_update(
                    {"_id": counter_id},
                    {"$inc": {"last_version": 1}, "$setOnInsert": {"owner": owner, "name": name}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:  # two first publishes raced to insert the counter: the loser retries
                continue
            assert doc is not None  # upsert with AFTER always returns the document
            return int(doc["last_version"])
        raise StoreUnavailable(f"could not allocate a version number for {owner}/{name}")

    async def _raise_counter_to_stored_max(self, owner: str, name: str) -> None:
        """Move the counter past the highest stored version (after a collision on the unique index)."""
        newest = await self.versions.find_one(
            {"owner": owner, "name": name}, projection={"version": 1}, sort=[("version", -1)]
        )
        if newest is not None:
            result = await self.counters.update_one(
                {"_id": _counter_id(owner, name)},
                {
                    "$max": {"last_version": int(newest["version"])},
                    "$setOnInsert": {"owner": owner, "name": name},
                },
                upsert=True,
            )
            if result.modified_count or result.upserted_id is not None:
                log.info(
                    "version counter was behind the stored versions; moved it forward",
                    servable=f"{owner}/{name}",
                    last_version=int(newest["version"]),
                )

    async def create_version(
        self,
        *,
        owner: str,
        name: str,
        metadata: dict[str, Any],
        published_at_ms: int,
        package_sha256: str = "",
        package_format: PackageFormat = "none",
        build_task_id: str = "",
        status: VersionStatus = "building",
    ) -> VersionRecord:
        publish_id = uuid.uuid4().hex  # identifies this publish, so a retried insert is recognised as ours
        with self._errors("create_version"):
            for attempt in range(_MAX_ALLOCATION_ATTEMPTS):
                record = VersionRecord(
                    owner=owner,
                    name=name,
                    version=await self._next_version(owner, name),
                    status=status,
                    metadata=metadata,
                    published_at_ms=published_at_ms,
                    package_sha256=package_sha256,
                    package_format=package_format,
                    build_task_id=build_task_id,
                )
                try:
                    await self.versions.insert_one(_version_doc(record, publish_id))
                except DuplicateKeyError:
                    existing = await self.versions.find_one(
                        {"_id": _version_id(owner, name, record.version)}, projection={"publish_id": 1}
                    )
                    if existing is not None and existing.get("publish_id") == publish_id:
                        return record  # an automatic retry of our own insert had already succeeded
                    log.debug("version number collision; retrying", servable=record.label, attempt=attempt)
                    await self._raise_counter_to_stored_max(owner, name)
                    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
                    continue
                return record
        raise StoreUnavailable(f"could not allocate a version number for {owner}/{name}")

    async def get_version(self, owner: str, name: str, version: int) -> VersionRecord | None:
        with self._errors("get_version"):
            doc = await self.versions.find_one({"_id": _version_id(owner, name, version)})
        return _version_from_doc(doc) if doc is not None else None

    async def list_versions(self, owner: str, name: str) -> list[VersionRecord]:
        with self._errors("list_versions"):
            cursor = self.versions.find({"owner": owner, "name": name}, sort=[("version", ASCENDING)])
            return [_version_from_doc(doc) async for doc in cursor]

    async def list_servables(self, owner: str | None = None) -> list[tuple[str, str]]:
        match: Document = {"status": {"$ne": "deleted"}}
        if owner is not None:
            match["owner"] = owner
        pipeline: list[Document] = [{"$match": match}]
        pipeline.append({"$group": {"_id": {"owner": "$owner", "name": "$name"}}})
        with self._errors("list_servables"):
            cursor = await self.versions.aggregate(pipeline)
            pairs = {(doc["_id"]["owner"], doc["_id"]["name"]) async for doc in cursor}
        return sorted(pairs)  # code-point order, the same as SQLite's binary collation

    async def list_versions_with_status(self, status: VersionStatus) -> list[VersionRecord]:
        with self._errors("list_versions_with_status"):
            cursor = self.versions.find(
                {"status": status}, sort=[("owner", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)]
            )
            return [_version_from_doc(doc) async for doc in cursor]

    async def set_version_status(
        self,
        owner: str,
        name: str,
        version: int,
        *,
        status: VersionStatus,
        status_reason: str = "",
        digest: str = "",
        files: tuple[str, ...] = (),
        manifest: tuple[FileEntry, ...] = (),
        previews: tuple[TablePreview, ...] = (),
        bundle_sha256: str = "",
    ) -> VersionRecord | None:
        with self._errors("set_version_status"):
            doc = await self.versions.find_one_and_update(
                {"_id": _version_id(owner, name, version), "status": {"$ne": "deleted"}},
                {
                    "$set": {
                        "status": status,
                        "status_reason": status_reason,
                        "digest": digest,
                        "files": list(files),
                        "manifest_json": _dumps(manifest),
                        "previews_json": _dumps(previews),
                        "bundle_sha256": bundle_sha256,
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        return _version_from_doc(doc) if doc is not None else None

    async def list_linking_versions(self, targets: Sequence[str], limit: int = 1000) -> list[VersionRecord]:
        if not targets:
            return []
        with self._errors("list_linking_versions"):
            cursor = self.versions.find(
                {"link_targets": {"$in": sorted(set(targets))}, "status": {"$ne": "deleted"}},
                sort=[("owner", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)],
                limit=limit,
            )
            return [_version_from_doc(doc) async for doc in cursor]

    async def delete_versions(self, owner: str, name: str, versions: list[int] | None = None) -> list[int]:
        query: Document = {"owner": owner, "name": name}
        if versions is not None:
            query["version"] = {"$in": sorted(set(versions))}
        with self._errors("delete_versions"):
            # Delete one document at a time and report what was actually deleted, so two concurrent
            # deletions never both claim the same version (each delete_one is atomic).
            cursor = self.versions.find(query, projection={"version": 1}, sort=[("version", ASCENDING)])
            candidates = [(doc["_id"], int(doc["version"])) async for doc in cursor]
            deleted: list[int] = []
            for doc_id, number in candidates:
                result = await self.versions.delete_one({"_id": doc_id})
                if result.deleted_count:
                    deleted.append(number)
                    await self.verifications.delete_one({"_id": doc_id})
        return deleted

    async def mark_deleted(
        self,
        owner: str,
        name: str,
        versions: list[int] | None = None,
        *,
        deleted_by: str,
        deleted_at_ms: int,
    ) -> list[int]:
        query: Document = {"owner": owner, "name": name, "status": {"$ne": "deleted"}}
        if versions is not None:
            query["version"] = {"$in": sorted(set(versions))}
        with self._errors("mark_deleted"):
            cursor = self.versions.find(
                query, projection={"version": 1, "metadata_json": 1}, sort=[("version", ASCENDING)]
            )
            candidates = [(doc["_id"], int(doc["version"]), doc["metadata_json"]) async for doc in cursor]
            deleted: list[int] = []
            for doc_id, number, metadata_json in candidates:
                # Conditional on "not yet deleted", so two concurrent deletions never both claim a version.
                before = await self.versions.find_one_and_update(
                    {"_id": doc_id, "status": {"$ne": "deleted"}},
                    {
                        "$set": {
                            "status": "deleted",
                            "status_reason": "",
                            "files": [],
                            "manifest_json": "[]",
                            "previews_json": "[]",
                            "link_targets": [],
                            "metadata_json": _dumps(tombstone_metadata(msgspec.json.decode(metadata_json))),
                            "deprecated": False,
                            "deprecation_reason": "",
                            "deprecation_replacement": "",
                            "deprecated_at_ms": 0,
                            "deleted_at_ms": deleted_at_ms,
                            "deleted_by": deleted_by,
                        }
                    },
                    return_document=ReturnDocument.BEFORE,  # no projection: FerretDB 1.x lacks it here
                )
                if before is None or before.get("status") == "deleted":
                    continue
                # findAndModify is not atomic on every server (FerretDB 1.x lets two concurrent calls both
                # see the live document), so the version is claimed with an insert on the unique _id.
                try:
                    await self.deletions.insert_one({"_id": doc_id, "deleted_at_ms": deleted_at_ms})
                except DuplicateKeyError:
                    continue
                deleted.append(number)
        return deleted

    async def set_deprecated(
        self,
        owner: str,
        name: str,
        version: int,
        *,
        deprecated: bool,
        reason: str = "",
        replacement: str = "",
        at_ms: int = 0,
    ) -> VersionRecord | None:
        if not deprecated:
            reason, replacement, at_ms = "", "", 0
        with self._errors("set_deprecated"):
            doc = await self.versions.find_one_and_update(
                {"_id": _version_id(owner, name, version), "status": {"$ne": "deleted"}},
                {
                    "$set": {
                        "deprecated": deprecated,
                        "deprecation_reason": reason,
                        "deprecation_replacement": replacement,
                        "deprecated_at_ms": at_ms,
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        return _version_from_doc(doc) if doc is not None else None

    async def count_package_refs(self, package_sha256: str) -> int:
        with self._errors("count_package_refs"):
            return await self.versions.count_documents(
                {"package_sha256": package_sha256, "status": {"$ne": "deleted"}}
            )

    # -- build records ----------------------------------------------------------------------------------

    async def save_build(self, owner: str, name: str, version: int, build: StoredBuild) -> None:
        doc_id = _version_id(owner, name, version)
        fields: Document = {"build_state": build.state}
        if build.environment:
            fields["environment"] = build.environment
        with self._errors("save_build"):
            await self.builds.replace_one(
                {"_id": doc_id}, {"_id": doc_id, "record_json": _dumps(build)}, upsert=True
            )
            await self.versions.update_one({"_id": doc_id}, {"$set": fields})

    async def get_build(self, owner: str, name: str, version: int) -> StoredBuild | None:
        with self._errors("get_build"):
            doc = await self.builds.find_one({"_id": _version_id(owner, name, version)})
        return msgspec.json.decode(doc["record_json"], type=StoredBuild) if doc is not None else None

    # -- test-vector verifications ----------------------------------------------------------------------

    async def save_verification(
        self, owner: str, name: str, version: int, verification: StoredVerification
    ) -> None:
        doc_id = _version_id(owner, name, version)
        with self._errors("save_verification"):
            await self.verifications.replace_one(
                {"_id": doc_id}, {"_id": doc_id, "record_json": _dumps(verification)}, upsert=True
            )

    async def get_verification(self, owner: str, name: str, version: int) -> StoredVerification | None:
        with self._errors("get_verification"):
            doc = await self.verifications.find_one({"_id": _version_id(owner, name, version)})
        return msgspec.json.decode(doc["record_json"], type=StoredVerification) if doc is not None else None

    # -- tasks ------------------------------------------------------------------------------------------

    async def save_task(self, task: TaskRecord) -> None:
        with self._errors("save_task"):
            await self.tasks.replace_one({"_id": task.task_id}, _task_doc(task), upsert=True)

    async def update_open_task(self, task: TaskRecord, *, owner: str | None = None) -> bool:
        # A filtered replace is not atomic on every server we support (FerretDB reads, then writes), but an
        # insert under a taken ``_id`` fails everywhere: a task's outcome is first claimed in ``task_ends``
        # (one claim per task wins), then written. A "running" write that lands after an outcome finds the
        # claim and writes the outcome back (the claim carries it). An owner's outcome first takes the owner
        # slot in ``task_claims`` that a takeover from that owner would take (``claim_task``).
        doc = _task_doc(task)
        with self._errors("update_open_task"):
            ending = task.state not in OPEN_TASK_STATES
            if owner is not None and ending and not await self._keep_owner(task, owner):
                return False
            if ending:
                try:
                    claim = {
                        "_id": task.task_id,
                        "expires_at": doc["expires_at"],
                        "task_doc": _dumps_doc(doc),
                    }
                    await self.task_ends.insert_one(claim)
                except DuplicateKeyError:
                    return False
            query: Document = {"_id": task.task_id, "state": OPEN_STATES}
            if owner is not None and not ending:
                query["owner"] = owner
            result = await self.tasks.replace_one(query, doc)
            if not ending and result.matched_count and await self._restore_outcome(task):
                return False
        return result.matched_count > 0

    async def _restore_outcome(self, task: TaskRecord) -> bool:
        """After a non-final write: write the claimed outcome back if one landed meanwhile; whether it did."""
        ended = await self.task_ends.find_one({"_id": task.task_id}, {"task_doc": 1})
        if ended is None:
            return False
        await self.tasks.replace_one({"_id": task.task_id}, _loads_doc(ended["task_doc"]))
        return True

    async def _keep_owner(self, task: TaskRecord, owner: str) -> bool:
        """Take the slot a takeover from ``owner`` would take; False if a takeover has taken it."""
        slot = {"_id": f"{task.task_id}\n{owner}", "to": "", "expires_at": ms_to_date(task.expires_at_ms)}
        try:
            await self.task_claims.insert_one(slot)
        except DuplicateKeyError:
            taken = await self.task_claims.find_one({"_id": slot["_id"]})
            return taken is not None and taken.get("to") == ""
        return True

    async def claim_task(self, task: TaskRecord, *, new_owner: str) -> bool:
        slot = {
            "_id": f"{task.task_id}\n{task.owner}",
            "to": new_owner,
            "expires_at": ms_to_date(task.expires_at_ms),
        }
        with self._errors("claim_task"):
            try:
                await self.task_claims.insert_one(slot)
            except DuplicateKeyError:
                return False
            result = await self.tasks.update_one(
                {"_id": task.task_id, "state": OPEN_STATES, "owner": task.owner},
                {"$set": {"owner": new_owner}},
            )
            # The update is a read then a write on FerretDB: an outcome landing in between is written back.
            return result.matched_count > 0 and not await self._restore_outcome(task)

    async def beat_registry(self, instance_id: str, *, url: str, now_ms: int) -> None:
        with self._errors("beat_registry"):
            await self.registries.replace_one(
                {"_id": instance_id}, {"_id": instance_id, "url": url, "last_seen_ms": now_ms}, upsert=True
            )

    async def list_registries(self) -> list[RegistryInstance]:
        with self._errors("list_registries"):
            docs = await self.registries.find({}).to_list()
        return [
            RegistryInstance(
                instance_id=d["_id"], url=str(d.get("url", "")), last_seen_ms=int(d["last_seen_ms"])
            )
            for d in docs
        ]

    async def list_open_tasks(
        self, *, owner: str | None = None, deadline_before_ms: int | None = None, limit: int = 1000
    ) -> list[TaskRecord]:
        query: Document = {"state": OPEN_STATES}
        if owner is not None:
            query["owner"] = owner
        if deadline_before_ms is not None:
            query["deadline_ms"] = {"$gt": 0, "$lt": deadline_before_ms}
        with self._errors("list_open_tasks"):
            docs = await self.tasks.find(query).sort("created_at_ms", ASCENDING).limit(limit).to_list()
        return [_task_from_doc(doc) for doc in docs]

    async def get_task(self, task_id: str, *, now_ms: int) -> TaskRecord | None:
        with self._errors("get_task"):
            doc = await self.tasks.find_one({"_id": task_id})
        if doc is None or int(doc["expires_at_ms"]) <= now_ms:  # the TTL monitor may not have run yet
            return None
        return _task_from_doc(doc)

    async def delete_expired_tasks(self, *, now_ms: int) -> int:
        with self._errors("delete_expired_tasks"):
            # ``expires_at`` is exact to the millisecond and carries the (TTL) index.
            result = await self.tasks.delete_many({"expires_at": {"$lte": ms_to_date(now_ms)}})
            await self.task_ends.delete_many({"expires_at": {"$lte": ms_to_date(now_ms)}})
            await self.task_claims.delete_many({"expires_at": {"$lte": ms_to_date(now_ms)}})
        return result.deleted_count

    # -- search index updates not taken yet --------------------------------------------------------------

    @property
    def index_pending(self) -> AsyncCollection[Document]:
        return self.db["index_pending"]

    async def mark_index_pending(self, owner: str, name: str, mark: str) -> None:
        doc = {"owner": owner, "name": name, "mark": mark}
        with self._errors("mark_index_pending"):
            await self.index_pending.replace_one({"_id": f"{owner}/{name}"}, doc, upsert=True)

    async def clear_index_pending(self, owner: str, name: str, mark: str) -> bool:
        with self._errors("clear_index_pending"):
            result = await self.index_pending.delete_one({"_id": f"{owner}/{name}", "mark": mark})
        return result.deleted_count > 0

    async def list_index_pending(self, limit: int = 10_000) -> list[tuple[str, str, str]]:
        with self._errors("list_index_pending"):
            docs = await self.index_pending.find({}).sort("_id", 1).limit(limit).to_list()
        return [(str(d["owner"]), str(d["name"]), str(d["mark"])) for d in docs]

    # -- memoized results (same TTL index on ``expires_at`` as tasks) ------------------------------------

    async def get_memo(self, key: str, *, now_ms: int) -> bytes | None:
        with self._errors("get_memo"):
            doc = await self.memo.find_one({"_id": key})
        if doc is None or int(doc["expires_at_ms"]) <= now_ms:  # the TTL monitor may not have run yet
            return None
        return bytes(doc["value"])

    async def put_memo(self, key: str, value: bytes, *, expires_at_ms: int) -> None:
        doc = {
            "_id": key,
            "value": Binary(value),
            "expires_at_ms": expires_at_ms,
            "expires_at": ms_to_date(expires_at_ms),
        }
        with self._errors("put_memo"):
            if not self.memo_ttl_index:  # no TTL monitor: expired entries go as new ones arrive
                await self.memo.delete_many({"expires_at": {"$lte": ms_to_date(int(time.time() * 1000))}})
            await self.memo.replace_one({"_id": key}, doc, upsert=True)

    # -- tokens -----------------------------------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> None:
        with self._errors("add_token"):
            await self.tokens.insert_one(_token_doc(token))

    async def get_token(self, token_hash: str) -> TokenRecord | None:
        with self._errors("get_token"):
            doc = await self.tokens.find_one({"_id": token_hash})
        return _token_from_doc(doc) if doc is not None else None

    async def revoke_token(self, token_hash: str) -> bool:
        with self._errors("revoke_token"):
            result = await self.tokens.update_one({"_id": token_hash}, {"$set": {"revoked": True}})
        return result.matched_count > 0

    # -- identity: local groups, linked identities, access, audit ----------------------------------------

    async def add_group_member(self, group: str, user: str) -> bool:
        doc = {"_id": _member_id(group, user), "group": group, "user": user}
        with self._errors("add_group_member"):
            try:
                await self.group_members_collection.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def remove_group_member(self, group: str, user: str) -> bool:
        with self._errors("remove_group_member"):
            result = await self.group_members_collection.delete_one({"_id": _member_id(group, user)})
        return result.deleted_count > 0

    async def groups_of(self, user: str) -> list[str]:
        with self._errors("groups_of"):
            docs = await self.group_members_collection.find({"user": user}).to_list(None)
        return sorted(str(d["group"]) for d in docs)

    async def group_members(self, group: str) -> list[str]:
        with self._errors("group_members"):
            docs = await self.group_members_collection.find({"group": group}).to_list(None)
        return sorted(str(d["user"]) for d in docs)

    async def user_for_identities(self, identity_ids: Sequence[str]) -> str | None:
        if not identity_ids:
            return None
        with self._errors("user_for_identities"):
            docs = await self.identity_links.find({"_id": {"$in": list(identity_ids)}}).to_list(None)
        users = sorted(str(d["user"]) for d in docs)
        return users[0] if users else None

    async def link_identities(self, user: str, identity_ids: Sequence[str]) -> None:
        with self._errors("link_identities"):
            for identity_id in identity_ids:
                with suppress(DuplicateKeyError):
                    await self.identity_links.insert_one({"_id": identity_id, "user": user})

    async def user_has_identities(self, user: str) -> bool:
        with self._errors("user_has_identities"):
            return await self.identity_links.find_one({"user": user}) is not None

    async def set_access(
        self, owner: str, name: str, *, visible_to: Sequence[str], maintainers: Sequence[str]
    ) -> list[int]:
        changed: list[int] = []
        with self._errors("set_access"):
            docs = await self.versions.find({"owner": owner, "name": name}).to_list(None)
            for doc in docs:
                metadata = with_access(msgspec.json.decode(doc["metadata_json"]), visible_to, maintainers)
                await self.versions.update_one(
                    {"_id": doc["_id"]}, {"$set": {"metadata_json": _dumps(metadata)}}
                )
                changed.append(int(doc["version"]))
        return sorted(changed)

    async def add_audit(self, record: AuditRecord) -> None:
        doc = {
            "at_ms": record.at_ms,
            "actor": record.actor,
            "action": record.action,
            "target": record.target,
            "detail_json": _dumps(record.detail),
        }
        with self._errors("add_audit"):
            await self.audit.insert_one(doc)

    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        selector: Document = {
            k: v for k, v in (("actor", query.actor), ("action", query.action), ("target", query.target)) if v
        }
        at: Document = {}
        if query.since_ms is not None:
            at["$gte"] = query.since_ms
        if query.until_ms is not None:
            at["$lt"] = query.until_ms
        if at:
            selector["at_ms"] = at
        with self._errors("list_audit"):
            cursor = self.audit.find(selector).sort([("at_ms", -1), ("_id", -1)]).limit(query.limit)
            docs = await cursor.to_list(None)
        return [
            AuditRecord(
                at_ms=int(d["at_ms"]),
                actor=d["actor"],
                action=d["action"],
                target=d["target"],
                detail=msgspec.json.decode(d["detail_json"]),
            )
            for d in docs
        ]


def _member_id(group: str, user: str) -> str:
    return _dumps([group, user])


def _short(exc: BaseException) -> str:
    """The cause without PyMongo's long topology description."""
    text = str(exc)
    for marker in (", Timeout:", " Topology Description:"):
        text = text.split(marker, 1)[0]
    return text.strip() or type(exc).__name__
