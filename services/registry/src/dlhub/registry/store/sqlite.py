"""SQLite backend of ``MetadataStore`` (aiosqlite, WAL).

One connection per store; every write runs under one asyncio lock so statements of concurrent coroutines
never interleave inside a transaction. Version numbers come from a per-servable counter row bumped with an
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` inside ``BEGIN IMMEDIATE``, which is atomic across
processes too; ``UNIQUE(owner, name, version)`` backs it up.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import aiosqlite
import msgspec

from dlhub.common.errors import StorageFull, StoreUnavailable
from dlhub.common.payloads import FileEntry, TablePreview
from dlhub.registry.store.interface import (
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS servables (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS versions (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL,
    published_at_ms INTEGER NOT NULL,
    package_sha256 TEXT NOT NULL DEFAULT '',
    package_format TEXT NOT NULL DEFAULT 'none',
    build_task_id TEXT NOT NULL DEFAULT '',
    deprecated INTEGER NOT NULL DEFAULT 0,
    deprecation_reason TEXT NOT NULL DEFAULT '',
    deprecation_replacement TEXT NOT NULL DEFAULT '',
    deprecated_at_ms INTEGER NOT NULL DEFAULT 0,
    deleted_at_ms INTEGER NOT NULL DEFAULT 0,
    deleted_by TEXT NOT NULL DEFAULT '',
    environment TEXT NOT NULL DEFAULT '',
    build_state TEXT NOT NULL DEFAULT '',
    manifest TEXT NOT NULL DEFAULT '[]',
    previews TEXT NOT NULL DEFAULT '[]',
    bundle_sha256 TEXT NOT NULL DEFAULT '',
    UNIQUE (owner, name, version)
);
CREATE TABLE IF NOT EXISTS version_links (
    target TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (target, owner, name, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_links_version ON version_links (owner, name, version);
CREATE INDEX IF NOT EXISTS versions_status ON versions (status);
CREATE INDEX IF NOT EXISTS versions_package ON versions (package_sha256);
CREATE TABLE IF NOT EXISTS builds (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (owner, name, version)
);
CREATE TABLE IF NOT EXISTS verifications (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (owner, name, version)
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    servable TEXT NOT NULL,
    submitter TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    output BLOB,
    error TEXT,
    timings TEXT,
    owner TEXT NOT NULL DEFAULT '',
    deadline_ms INTEGER NOT NULL DEFAULT 0,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at_ms);
CREATE TABLE IF NOT EXISTS index_pending (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    mark TEXT NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS memo (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS memo_expiry ON memo (expires_at_ms);
CREATE TABLE IF NOT EXISTS registries (
    instance_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (grp, user)
);
CREATE INDEX IF NOT EXISTS group_members_user ON group_members (user);
CREATE TABLE IF NOT EXISTS identity_links (
    identity_id TEXT PRIMARY KEY,
    user TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS identity_links_user ON identity_links (user);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
"""

_VERSION_COLUMNS = (
    "owner, name, version, status, status_reason, digest, files, metadata, published_at_ms, "
    "package_sha256, package_format, build_task_id, deprecated, deprecation_reason, deprecation_replacement, "
    "deprecated_at_ms, deleted_at_ms, deleted_by, environment, build_state, manifest, previews, bundle_sha256"
)
# Columns added after the first release: (name, declaration) for ``ALTER TABLE`` on older files.
_ADDED_VERSION_COLUMNS = (
    ("deprecated", "INTEGER NOT NULL DEFAULT 0"),
    ("deprecation_reason", "TEXT NOT NULL DEFAULT ''"),
    ("deprecation_replacement", "TEXT NOT NULL DEFAULT ''"),
    ("deprecated_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("deleted_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("deleted_by", "TEXT NOT NULL DEFAULT ''"),
    ("environment", "TEXT NOT NULL DEFAULT ''"),
    ("build_state", "TEXT NOT NULL DEFAULT ''"),
    ("manifest", "TEXT NOT NULL DEFAULT '[]'"),
    ("previews", "TEXT NOT NULL DEFAULT '[]'"),
    ("bundle_sha256", "TEXT NOT NULL DEFAULT ''"),
)
_ADDED_TASK_COLUMNS = (
    ("owner", "TEXT NOT NULL DEFAULT ''"),
    ("deadline_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("progress", "TEXT"),
)
# Only open tasks are indexed: the reaper and reconciliation look at those, and they are few.
_TASK_INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (owner, created_at_ms) WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS tasks_open_deadline ON tasks (deadline_ms) WHERE state IN ('pending', 'running');
"""
_TASK_COLUMNS = (
    "task_id, kind, state, servable, submitter, created_at_ms, updated_at_ms, expires_at_ms, "
    "output, error, timings, owner, deadline_ms, progress"
)
_TASK_VALUES = "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
_OPEN_STATES_SQL = "state IN ('pending', 'running')"

_json_encoder = msgspec.json.Encoder()
_manifest_decoder = msgspec.json.Decoder(tuple[FileEntry, ...])
_previews_decoder = msgspec.json.Decoder(tuple[TablePreview, ...])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(value: Any) -> str:
    return _json_encoder.encode(value).decode()


def _version_from_row(row: Any) -> VersionRecord:
    return VersionRecord(
        owner=row[0],
        name=row[1],
        version=row[2],
        status=cast(VersionStatus, row[3]),
        status_reason=row[4],
        digest=row[5],
        files=tuple(msgspec.json.decode(row[6])),
        metadata=msgspec.json.decode(row[7]),
        published_at_ms=row[8],
        package_sha256=row[9],
        package_format=cast(PackageFormat, row[10]),
        build_task_id=row[11],
        deprecated=bool(row[12]),
        deprecation_reason=row[13],
        deprecation_replacement=row[14],
        deprecated_at_ms=row[15],
        deleted_at_ms=row[16],
        deleted_by=row[17],
        environment=row[18],
        build_state=cast(BuildStateValue, row[19]),
        manifest=_manifest_decoder.decode(row[20]),
        previews=_previews_decoder.decode(row[21]),
        bundle_sha256=row[22],
    )


def _task_from_row(row: Any) -> TaskRecord:
    return TaskRecord(
        task_id=row[0],
        kind=cast(TaskKind, row[1]),
        state=cast(TaskState, row[2]),
        servable=row[3],
        submitter=row[4],
        created_at_ms=row[5],
        updated_at_ms=row[6],
        expires_at_ms=row[7],
        output_json=bytes(row[8]) if row[8] is not None else None,
        error=msgspec.json.decode(row[9]) if row[9] is not None else None,
        timings=msgspec.json.decode(row[10]) if row[10] is not None else None,
        owner=row[11],
        deadline_ms=row[12],
        progress=msgspec.json.decode(row[13]) if row[13] is not None else None,
    )


def _task_params(task: TaskRecord) -> tuple[Any, ...]:
    return (
        task.task_id,
        task.kind,
        task.state,
        task.servable,
        task.submitter,
        task.created_at_ms,
        task.updated_at_ms,
        task.expires_at_ms,
        task.output_json,
        _dumps(task.error) if task.error is not None else None,
        _dumps(task.timings) if task.timings is not None else None,
        task.owner,
        task.deadline_ms,
        _dumps(task.progress) if task.progress is not None else None,
    )


# Primary result codes (https://sqlite.org/rescode.html) meaning "cannot use the database right now".
SQLITE_FULL: Final = 13
UNAVAILABLE_CODES: Final = frozenset({5, 6, 8, 10, 14, 15})  # BUSY LOCKED READONLY IOERR CANTOPEN PROTOCOL

_Method = TypeVar("_Method", bound=Callable[..., Coroutine[Any, Any, Any]])


def _typed(method: _Method) -> _Method:
    @functools.wraps(method)
    async def call(self: SQLiteMetadataStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code == SQLITE_FULL:
                raise StorageFull("the metadata store's disk is full; retry once space is freed") from exc
            if code in UNAVAILABLE_CODES:
                raise StoreUnavailable(f"the metadata store (SQLite) is unavailable: {exc}") from exc
            raise

    return cast(_Method, call)


def _typed_errors(cls: type[SQLiteMetadataStore]) -> type[SQLiteMetadataStore]:
    """Wrap the store's public coroutine methods so that SQLite's "cannot use the database now" failures
    leave it typed, as the MongoDB store's do: a full disk as ``StorageFull`` (507), a database locked past
    the busy timeout or unreadable as ``StoreUnavailable`` (503). Other errors (bugs) pass unchanged."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _typed(member))
    return cls


@_typed_errors
class SQLiteMetadataStore(MetadataStore):
    """``MetadataStore`` on one SQLite file."""

    def __init__(self, path: Path | str, *, busy_timeout_ms: float = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(self.path), isolation_level=None)
        await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.executescript(SCHEMA)
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(versions)")}
        for column, declaration in _ADDED_VERSION_COLUMNS:
            if column not in columns:
                await db.execute(f"ALTER TABLE versions ADD COLUMN {column} {declaration}")
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(tasks)")}
        for column, declaration in _ADDED_TASK_COLUMNS:
            if column not in columns:
                await db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {declaration}")
        await db.executescript(_TASK_INDEXES)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        async with self._write_lock:
            cursor = await self.db.execute(sql, params)
            count = cursor.rowcount
            await cursor.close()
            return count

    # -- versions ---------------------------------------------------------------------------------------

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
        metadata_text = _dumps(metadata)
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                rows = await db.execute_fetchall(
                    "INSERT INTO servables (owner, name, last_version) VALUES (?, ?, 1) "
                    "ON CONFLICT (owner, name) DO UPDATE SET last_version = last_version + 1 "
                    "RETURNING last_version",
                    (owner, name),
                )
                version = int(next(iter(rows))[0])
                await db.execute(
                    f"INSERT INTO versions ({_VERSION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, '', '', '[]', ?, ?, ?, ?, ?, 0, '', '', 0, 0, '', '', '', "
                    "'[]', '[]', '')",
                    (
                        owner,
                        name,
                        version,
                        status,
                        metadata_text,
                        published_at_ms,
                        package_sha256,
                        package_format,
                        build_task_id,
                    ),
                )
                await db.executemany(
                    "INSERT OR IGNORE INTO version_links (target, owner, name, version) VALUES (?, ?, ?, ?)",
                    [(target, owner, name, version) for target in link_targets(metadata)],
                )
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself (a full disk, an I/O error)
                    await db.execute("ROLLBACK")
                raise
        return VersionRecord(
            owner=owner,
            name=name,
            version=version,
            status=status,
            metadata=metadata,
            published_at_ms=published_at_ms,
            package_sha256=package_sha256,
            package_format=package_format,
            build_task_id=build_task_id,
        )

    async def get_version(self, owner: str, name: str, version: int) -> VersionRecord | None:
        rows = await self.db.execute_fetchall(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE owner = ? AND name = ? AND version = ?",
            (owner, name, version),
        )
        for row in rows:
            return _version_from_row(row)
        return None

    async def list_versions(self, owner: str, name: str) -> list[VersionRecord]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE owner = ? AND name = ? ORDER BY version",
            (owner, name),
        )
        return [_version_from_row(row) for row in rows]

    async def list_servables(self, owner: str | None = None) -> list[tuple[str, str]]:
        if owner is None:
            rows = await self.db.execute_fetchall(
                "SELECT DISTINCT owner, name FROM versions WHERE status != 'deleted' ORDER BY owner, name"
            )
        else:
            rows = await self.db.execute_fetchall(
                "SELECT DISTINCT owner, name FROM versions WHERE owner = ? AND status != 'deleted' "
                "ORDER BY name",
                (owner,),
            )
        return [(row[0], row[1]) for row in rows]

    async def list_versions_with_status(self, status: VersionStatus) -> list[VersionRecord]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE status = ? ORDER BY owner, name, version",
            (status,),
        )
        return [_version_from_row(row) for row in rows]

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
        changed = await self._write(
            "UPDATE versions SET status = ?, status_reason = ?, digest = ?, files = ?, manifest = ?, "
            "previews = ?, bundle_sha256 = ? "
            "WHERE owner = ? AND name = ? AND version = ? AND status != 'deleted'",
            (
                status,
                status_reason,
                digest,
                _dumps(list(files)),
                _dumps(manifest),
                _dumps(previews),
                bundle_sha256,
                owner,
                name,
                version,
            ),
        )
        if not changed:
            return None
        return await self.get_version(owner, name, version)

    async def list_linking_versions(self, targets: Sequence[str], limit: int = 1000) -> list[VersionRecord]:
        if not targets:
            return []
        marks = ", ".join("?" for _ in targets)
        columns = ", ".join(f"v.{c.strip()}" for c in _VERSION_COLUMNS.split(","))
        # The keys first, limited, then their rows: DISTINCT and ORDER BY over whole rows (metadata
        # included) made a dataset named by 10,000 servables cost ~150 ms per describe.
        rows = await self.db.execute_fetchall(
            f"SELECT {columns} FROM versions v JOIN ("
            "SELECT DISTINCT l.owner, l.name, l.version FROM version_links l JOIN versions k "
            "ON k.owner = l.owner AND k.name = l.name AND k.version = l.version "
            f"WHERE l.target IN ({marks}) AND k.status != 'deleted' "
            "ORDER BY l.owner, l.name, l.version LIMIT ?"
            ") AS keys ON v.owner = keys.owner AND v.name = keys.name AND v.version = keys.version "
            "ORDER BY v.owner, v.name, v.version",
            (*targets, limit),
        )
        return [_version_from_row(row) for row in rows]

    async def delete_versions(self, owner: str, name: str, versions: list[int] | None = None) -> list[int]:
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                rows = await db.execute_fetchall(
                    "SELECT version FROM versions WHERE owner = ? AND name = ? ORDER BY version",
                    (owner, name),
                )
                existing = [int(row[0]) for row in rows]
                doomed = existing if versions is None else [v for v in existing if v in set(versions)]
                await db.executemany(
                    "DELETE FROM versions WHERE owner = ? AND name = ? AND version = ?",
                    [(owner, name, v) for v in doomed],
                )
                for table in ("version_links", "verifications"):
                    await db.executemany(
                        f"DELETE FROM {table} WHERE owner = ? AND name = ? AND version = ?",
                        [(owner, name, v) for v in doomed],
                    )
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself (a full disk, an I/O error)
                    await db.execute("ROLLBACK")
                raise
        return doomed

    async def mark_deleted(
        self,
        owner: str,
        name: str,
        versions: list[int] | None = None,
        *,
        deleted_by: str,
        deleted_at_ms: int,
    ) -> list[int]:
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                rows = await db.execute_fetchall(
                    "SELECT version, metadata FROM versions "
                    "WHERE owner = ? AND name = ? AND status != 'deleted' ORDER BY version",
                    (owner, name),
                )
                wanted = None if versions is None else set(versions)
                doomed = [(int(r[0]), r[1]) for r in rows if wanted is None or int(r[0]) in wanted]
                await db.executemany(
                    "UPDATE versions SET status = 'deleted', status_reason = '', files = '[]', metadata = ?, "
                    "manifest = '[]', previews = '[]', "
                    "deprecated = 0, deprecation_reason = '', deprecation_replacement = '', "
                    "deprecated_at_ms = 0, deleted_at_ms = ?, deleted_by = ? "
                    "WHERE owner = ? AND name = ? AND version = ?",
                    [
                        (
                            _dumps(tombstone_metadata(msgspec.json.decode(text))),
                            deleted_at_ms,
                            deleted_by,
                            owner,
                            name,
                            v,
                        )
                        for v, text in doomed
                    ],
                )
                await db.executemany(
                    "DELETE FROM version_links WHERE owner = ? AND name = ? AND version = ?",
                    [(owner, name, v) for v, _ in doomed],
                )
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself (a full disk, an I/O error)
                    await db.execute("ROLLBACK")
                raise
        return [v for v, _ in doomed]

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
        changed = await self._write(
            "UPDATE versions SET deprecated = ?, deprecation_reason = ?, deprecation_replacement = ?, "
            "deprecated_at_ms = ? WHERE owner = ? AND name = ? AND version = ? AND status != 'deleted'",
            (int(deprecated), reason, replacement, at_ms, owner, name, version),
        )
        if not changed:
            return None
        return await self.get_version(owner, name, version)

    async def count_package_refs(self, package_sha256: str) -> int:
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*) FROM versions WHERE package_sha256 = ? AND status != 'deleted'",
            (package_sha256,),
        )
        return int(next(iter(rows))[0])

    # -- build records ----------------------------------------------------------------------------------

    async def save_build(self, owner: str, name: str, version: int, build: StoredBuild) -> None:
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    "INSERT OR REPLACE INTO builds (owner, name, version, record) VALUES (?, ?, ?, ?)",
                    (owner, name, version, _dumps(build)),
                )
                await db.execute(
                    "UPDATE versions SET build_state = ?, "
                    "environment = CASE WHEN ? != '' THEN ? ELSE environment END "
                    "WHERE owner = ? AND name = ? AND version = ?",
                    (build.state, build.environment, build.environment, owner, name, version),
                )
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself (a full disk, an I/O error)
                    await db.execute("ROLLBACK")
                raise

    async def get_build(self, owner: str, name: str, version: int) -> StoredBuild | None:
        rows = await self.db.execute_fetchall(
            "SELECT record FROM builds WHERE owner = ? AND name = ? AND version = ?", (owner, name, version)
        )
        for row in rows:
            return msgspec.json.decode(row[0], type=StoredBuild)
        return None

    # -- test-vector verifications ----------------------------------------------------------------------

    async def save_verification(
        self, owner: str, name: str, version: int, verification: StoredVerification
    ) -> None:
        await self._write(
            "INSERT OR REPLACE INTO verifications (owner, name, version, record) VALUES (?, ?, ?, ?)",
            (owner, name, version, _dumps(verification)),
        )

    async def get_verification(self, owner: str, name: str, version: int) -> StoredVerification | None:
        rows = await self.db.execute_fetchall(
            "SELECT record FROM verifications WHERE owner = ? AND name = ? AND version = ?",
            (owner, name, version),
        )
        for row in rows:
            return msgspec.json.decode(row[0], type=StoredVerification)
        return None

    # -- tasks ------------------------------------------------------------------------------------------

    async def save_task(self, task: TaskRecord) -> None:
        await self._write(
            f"INSERT OR REPLACE INTO tasks ({_TASK_COLUMNS}) VALUES ({_TASK_VALUES})", _task_params(task)
        )

    async def update_open_task(self, task: TaskRecord, *, owner: str | None = None) -> bool:
        # Every column is set, so this is the same record as save_task writes, guarded by the stored state.
        assignments = ", ".join(f"{c.strip()} = ?" for c in _TASK_COLUMNS.split(",")[1:])
        sql = f"UPDATE tasks SET {assignments} WHERE task_id = ? AND {_OPEN_STATES_SQL}"
        params = (*_task_params(task)[1:], task.task_id)
        if owner is not None:
            sql += " AND owner = ?"
            params = (*params, owner)
        return bool(await self._write(sql, params))

    async def claim_task(self, task: TaskRecord, *, new_owner: str) -> bool:
        sql = f"UPDATE tasks SET owner = ? WHERE task_id = ? AND owner = ? AND {_OPEN_STATES_SQL}"
        return bool(await self._write(sql, (new_owner, task.task_id, task.owner)))

    async def beat_registry(self, instance_id: str, *, url: str, now_ms: int) -> None:
        await self._write(
            "INSERT OR REPLACE INTO registries (instance_id, url, last_seen_ms) VALUES (?, ?, ?)",
            (instance_id, url, now_ms),
        )

    async def list_registries(self) -> list[RegistryInstance]:
        rows = await self.db.execute_fetchall("SELECT instance_id, url, last_seen_ms FROM registries")
        return [RegistryInstance(instance_id=r[0], url=r[1], last_seen_ms=int(r[2])) for r in rows]

    async def list_open_tasks(
        self, *, owner: str | None = None, deadline_before_ms: int | None = None, limit: int = 1000
    ) -> list[TaskRecord]:
        where: list[str] = [_OPEN_STATES_SQL]
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if deadline_before_ms is not None:
            where.append("deadline_ms > 0 AND deadline_ms < ?")
            params.append(deadline_before_ms)
        rows = await self.db.execute_fetchall(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {' AND '.join(where)} ORDER BY created_at_ms LIMIT ?",
            (*params, limit),
        )
        return [_task_from_row(row) for row in rows]

    async def get_task(self, task_id: str, *, now_ms: int) -> TaskRecord | None:
        rows = await self.db.execute_fetchall(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ? AND expires_at_ms > ?", (task_id, now_ms)
        )
        for row in rows:
            return _task_from_row(row)
        return None

    async def delete_expired_tasks(self, *, now_ms: int) -> int:
        return await self._write("DELETE FROM tasks WHERE expires_at_ms <= ?", (now_ms,))

    # -- search index updates not taken yet --------------------------------------------------------------

    async def mark_index_pending(self, owner: str, name: str, mark: str) -> None:
        await self._write(
            "INSERT OR REPLACE INTO index_pending (owner, name, mark) VALUES (?, ?, ?)", (owner, name, mark)
        )

    async def clear_index_pending(self, owner: str, name: str, mark: str) -> bool:
        sql = "DELETE FROM index_pending WHERE owner = ? AND name = ? AND mark = ?"
        return await self._write(sql, (owner, name, mark)) > 0

    async def list_index_pending(self, limit: int = 10_000) -> list[tuple[str, str, str]]:
        rows = await self.db.execute_fetchall(
            "SELECT owner, name, mark FROM index_pending ORDER BY owner, name LIMIT ?", (limit,)
        )
        return [(str(row[0]), str(row[1]), str(row[2])) for row in rows]

    # -- memoized results -------------------------------------------------------------------------------

    async def get_memo(self, key: str, *, now_ms: int) -> bytes | None:
        rows = await self.db.execute_fetchall(
            "SELECT value FROM memo WHERE key = ? AND expires_at_ms > ?", (key, now_ms)
        )
        for row in rows:
            return bytes(row[0])
        return None

    async def put_memo(self, key: str, value: bytes, *, expires_at_ms: int) -> None:
        # Expired entries are removed as new ones arrive (the index on expires_at_ms keeps this cheap).
        async with self._write_lock:
            await self.db.execute("DELETE FROM memo WHERE expires_at_ms <= ?", (_now_ms(),))
            await self.db.execute(
                "INSERT OR REPLACE INTO memo (key, value, expires_at_ms) VALUES (?, ?, ?)",
                (key, value, expires_at_ms),
            )

    # -- tokens -----------------------------------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> None:
        await self._write(
            "INSERT INTO tokens (token_hash, user, label, created_at_ms, expires_at_ms, revoked) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                token.token_hash,
                token.user,
                token.label,
                token.created_at_ms,
                token.expires_at_ms,
                int(token.revoked),
            ),
        )

    async def get_token(self, token_hash: str) -> TokenRecord | None:
        rows = await self.db.execute_fetchall(
            "SELECT token_hash, user, label, created_at_ms, expires_at_ms, revoked FROM tokens "
            "WHERE token_hash = ?",
            (token_hash,),
        )
        for row in rows:
            return TokenRecord(
                token_hash=row[0],
                user=row[1],
                label=row[2],
                created_at_ms=row[3],
                expires_at_ms=row[4],
                revoked=bool(row[5]),
            )
        return None

    async def revoke_token(self, token_hash: str) -> bool:
        return bool(await self._write("UPDATE tokens SET revoked = 1 WHERE token_hash = ?", (token_hash,)))

    # -- identity: local groups, linked identities, access, audit ----------------------------------------

    async def add_group_member(self, group: str, user: str) -> bool:
        sql = "INSERT OR IGNORE INTO group_members (grp, user) VALUES (?, ?)"
        return bool(await self._write(sql, (group, user)))

    async def remove_group_member(self, group: str, user: str) -> bool:
        sql = "DELETE FROM group_members WHERE grp = ? AND user = ?"
        return bool(await self._write(sql, (group, user)))

    async def groups_of(self, user: str) -> list[str]:
        sql = "SELECT grp FROM group_members WHERE user = ? ORDER BY grp"
        return [row[0] for row in await self.db.execute_fetchall(sql, (user,))]

    async def group_members(self, group: str) -> list[str]:
        sql = "SELECT user FROM group_members WHERE grp = ? ORDER BY user"
        return [row[0] for row in await self.db.execute_fetchall(sql, (group,))]

    async def user_for_identities(self, identity_ids: Sequence[str]) -> str | None:
        if not identity_ids:
            return None
        marks = ",".join("?" * len(identity_ids))
        sql = f"SELECT user FROM identity_links WHERE identity_id IN ({marks}) ORDER BY user LIMIT 1"
        rows = list(await self.db.execute_fetchall(sql, tuple(identity_ids)))
        return str(rows[0][0]) if rows else None

    async def link_identities(self, user: str, identity_ids: Sequence[str]) -> None:
        async with self._write_lock:
            await self.db.executemany(
                "INSERT OR IGNORE INTO identity_links (identity_id, user) VALUES (?, ?)",
                [(identity_id, user) for identity_id in identity_ids],
            )

    async def user_has_identities(self, user: str) -> bool:
        sql = "SELECT 1 FROM identity_links WHERE user = ? LIMIT 1"
        return bool(list(await self.db.execute_fetchall(sql, (user,))))

    async def set_access(
        self, owner: str, name: str, *, visible_to: Sequence[str], maintainers: Sequence[str]
    ) -> list[int]:
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                rows = await db.execute_fetchall(
                    "SELECT version, metadata FROM versions WHERE owner = ? AND name = ?", (owner, name)
                )
                changed = [
                    (int(v), with_access(msgspec.json.decode(text), visible_to, maintainers))
                    for v, text in rows
                ]
                await db.executemany(
                    "UPDATE versions SET metadata = ? WHERE owner = ? AND name = ? AND version = ?",
                    [(_dumps(metadata), owner, name, v) for v, metadata in changed],
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return [v for v, _ in changed]

    async def add_audit(self, record: AuditRecord) -> None:
        await self._write(
            "INSERT INTO audit (at_ms, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (record.at_ms, record.actor, record.action, record.target, _dumps(record.detail)),
        )

    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("actor", query.actor), ("action", query.action), ("target", query.target)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.since_ms is not None:
            clauses.append("at_ms >= ?")
            params.append(query.since_ms)
        if query.until_ms is not None:
            clauses.append("at_ms < ?")
            params.append(query.until_ms)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT at_ms, actor, action, target, detail FROM audit {where}ORDER BY seq DESC LIMIT ?"
        rows = await self.db.execute_fetchall(sql, (*params, query.limit))
        return [
            AuditRecord(at_ms=r[0], actor=r[1], action=r[2], target=r[3], detail=msgspec.json.decode(r[4]))
            for r in rows
        ]
