"""Servable versions: publish, update, delete, look up, build and index.

Publishing stores a ``building`` version and submits a ``BuildRequest`` to the builder in the background; the
build Result makes the version ``ready`` or ``failed`` and, when ready, the newest ready version is sent to
the search index as the servable's entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from dlhub.common.codec import Codec, to_json
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import (
    DLHubError,
    Forbidden,
    Gone,
    NotFound,
    ServableNotReady,
    ValidationFailed,
    error_class,
)
from dlhub.common.ids import BUILDER_TOPIC, NAME_RE, SEARCH_INDEX_TOPIC, SEARCH_REINDEX_TOPIC, new_id
from dlhub.common.logging import get_logger
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import (
    BuildOutcome,
    BuildRequest,
    IndexRequest,
    ReindexOutcome,
    ReindexRequest,
    SearchDocument,
    decode_payload,
)
from dlhub.registry.auth import Caller, caller_for
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.builds import BuildTracker, implied_build, new_build
from dlhub.registry.clock import iso_ms, now_ms
from dlhub.registry.datasets import dataset_targets, pin_links
from dlhub.registry.datasets import used_by as linked_users
from dlhub.registry.metadata import normalise_publication, search_document, validate_publication
from dlhub.registry.outcomes import error_dict
from dlhub.registry.packages import PackageBlobs
from dlhub.registry.pipelines import PinnedPipeline, is_pipeline, parse_servable_ref, pin_pipeline
from dlhub.registry.ports import Bus
from dlhub.registry.store import (
    OPEN_TASK_STATES,
    MetadataStore,
    PackageFormat,
    StoredBuild,
    StoredVerification,
    TaskRecord,
    VersionRecord,
)
from dlhub.registry.store.cache import VersionCache
from dlhub.registry.tasks import TaskTable
from dlhub.registry.vectors import VectorRunner, declared_vectors, failure_reason

log = get_logger(__name__)
USED_BY_SHOWN: Final = 100
"""Servables listed in a dataset's describe (``used_by``); ``used_by_truncated`` says when there are more."""
USED_BY_SCANNED: Final = 250
"""Linking versions read for one describe (every version of each linking servable counts)."""

BUILD_MARGIN_S = 120.0
"""Beyond ``environments.build_timeout_s``: extraction, pushing the image, waiting for a free builder."""

BUILD_METHOD = "build"
INDEX_METHOD = "index"
REINDEX_METHOD = "reindex"
INDEX_TIMEOUT_S = 30.0


def check_name(value: str, field: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValidationFailed(f"invalid {field} {value!r}", field=field)
    return value


class Servables:
    """Everything about servable versions, independent of HTTP."""

    def __init__(
        self,
        *,
        settings: DLHubSettings,
        store: MetadataStore,
        bus: Bus,
        codec: Codec,
        tasks: TaskTable,
        background: BackgroundTasks,
        blobs: PackageBlobs,
        bundles: PackageBlobs | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._bus = bus
        self._codec = codec
        self._tasks = tasks
        self._background = background
        self._blobs = blobs
        self.bundles = bundles or PackageBlobs(settings.data_dir / "bundles")
        """Built versions as one archive each, by sha256 (``dlhub.common.bundles``), for Task Managers that do
        not share the builder's disk; served by ``GET /internal/v1/bundles/{sha256}``."""
        self.cache = VersionCache(store, max_versions=settings.registry.version_cache_max_versions)
        # Servables whose index update failed (search down): retried until the index has caught up. The store
        # holds them too (``mark_index_pending``); this set covers a store that was away as well.
        self._unindexed: set[tuple[str, str]] = set()
        self._index_retry: asyncio.Task[None] | None = None
        self.vectors = VectorRunner(settings=settings, bus=bus, codec=codec, store=store)

    # -- reads ------------------------------------------------------------------------------------------

    async def visible_versions(self, caller: Caller, owner: str, name: str) -> list[VersionRecord]:
        """Versions of ``owner/name`` the caller may see; 404 when there are none (hides existence)."""
        versions = [v for v in await self.cache.get(owner, name) if caller.can_see(owner, v.visible_to)]
        if not versions:
            raise NotFound(f"servable {owner}/{name} not found")
        return versions

    async def describe_target(
        self, caller: Caller, owner: str, name: str, version: int | None
    ) -> VersionRecord:
        """The version to describe: the pinned one or the newest live one; 410 for a tombstone."""
        versions = await self.visible_versions(caller, owner, name)
        if version is None:
            return newest_live(versions, owner, name)
        for record in versions:
            if record.version == version:
                if record.deleted:
                    raise Gone(gone_message(record))
                return record
        raise NotFound(f"version {version} of {owner}/{name} not found")

    async def runnable(self, caller: Caller, owner: str, name: str, version: int | None) -> VersionRecord:
        """The version a run goes to: the pinned one or the "latest" one.

        "Latest" is the newest ready version that is not deprecated; when every ready version is deprecated
        it is the newest ready one (runs keep working, with a warning). Tombstones are never run (410).
        """
        versions = await self.cache.get(owner, name)
        if version is None:
            visible = [r for r in versions if caller.can_see(owner, r.visible_to)]
            if not visible:
                raise NotFound(f"servable {owner}/{name} not found")
            live = [r for r in visible if not r.deleted]
            if not live:
                raise Gone(f"servable {owner}/{name} was deleted")
            ready = [r for r in live if r.status == "ready"]
            if not ready:
                raise ServableNotReady(f"servable {owner}/{name} has no ready version yet")
            return preferred(ready)
        for record in versions:
            if record.version == version and caller.can_see(owner, record.visible_to):
                if record.deleted:
                    raise Gone(gone_message(record))
                if record.status != "ready":
                    raise ServableNotReady(
                        f"version {version} of {owner}/{name} is {record.status}"
                        + (f": {record.status_reason}" if record.status_reason else "")
                    )
                return record
        raise NotFound(f"servable {owner}/{name}@{version} not found")

    async def list_latest(self, caller: Caller, owner: str | None) -> list[VersionRecord]:
        """The newest visible live version of every servable (optionally of one owner)."""
        out: list[VersionRecord] = []
        for servable_owner, name in await self._store.list_servables(owner):
            versions = await self.cache.get(servable_owner, name)
            for record in reversed(versions):
                if not record.deleted and caller.can_see(servable_owner, record.visible_to):
                    out.append(record)
                    break
        return out

    # -- writes -----------------------------------------------------------------------------------------

    async def publish(
        self,
        *,
        owner: str,
        document: Any,
        package: bytes | None,
        package_format: PackageFormat,
        expected_name: str | None = None,
        reuse_from: VersionRecord | None = None,
        caller: Caller | None = None,
    ) -> VersionRecord:
        """Validate and store a new version, then start its build in the background.

        A pipeline document (``pipelines.py``) is checked against what ``caller`` (default: the owner) may
        run, stored with its steps pinned and ready at once: there is nothing to build.
        """
        document = validate_publication(document)
        name = check_name(document["dlhub"]["name"], "dlhub.name")
        if expected_name is not None and name != expected_name:
            raise ValidationFailed(
                f"dlhub.name {name!r} does not match the servable being updated ({expected_name!r})",
                field="dlhub.name",
            )
        document = await pin_links(self, caller or caller_for(owner), document)
        if is_pipeline(document):
            if package:
                raise ValidationFailed("a pipeline is published without a package", field="package")
            pinned = await pin_pipeline(self, caller or caller_for(owner), document)
            return await self._publish_pipeline(owner, name, pinned)
        package_sha256 = ""
        if package:
            package_sha256 = await self._blobs.put(package)
        elif reuse_from is not None and reuse_from.package_sha256:
            package_sha256 = reuse_from.package_sha256
            package_format = reuse_from.package_format
        else:
            package_format = "none"
        build_task_id = new_id()
        record = await self._create_version(
            owner,
            name,
            document,
            build_task_id,
            package_sha256=package_sha256,
            package_format=package_format,
        )
        await self._tasks.create(
            task_id=build_task_id,
            kind="build",
            servable=record.label,
            submitter=owner,
            timeout_s=self._build_timeout_s(),
        )
        build = new_build(record)
        build.log.append(f"published; queued for the builder ({package_format} package)")
        await self._store.save_build(owner, name, record.version, build)
        self.cache.invalidate(owner, name)
        log.info("version published", servable=record.label, task_id=build_task_id)
        self.start_build(record)
        return record

    async def _create_version(
        self, owner: str, name: str, document: dict[str, Any], build_task_id: str, **fields: Any
    ) -> VersionRecord:
        """Store a new version of the normalised ``document`` and forget the cached versions of the name."""
        published_at_ms = now_ms()
        metadata = normalise_publication(
            document, owner=owner, document_id=new_id(), published_at_ms=published_at_ms
        )
        record = await self._store.create_version(
            owner=owner,
            name=name,
            metadata=metadata,
            published_at_ms=published_at_ms,
            build_task_id=build_task_id,
            **fields,
        )
        self.cache.invalidate(owner, name)
        return record

    async def _publish_pipeline(self, owner: str, name: str, pinned: PinnedPipeline) -> VersionRecord:
        build_task_id = new_id()
        record = await self._create_version(owner, name, pinned.document, build_task_id, status="ready")
        # The digest identifies what the pipeline runs (its pinned steps); the store sets it with the status.
        record = (
            await self._store.set_version_status(
                owner, name, record.version, status="ready", digest=pinned.digest
            )
            or record
        )
        build = new_build(record, "ready")
        build.log.append(f"a pipeline of {len(pinned.steps)} pinned steps: nothing to build")
        await self._store.save_build(owner, name, record.version, build)
        self.cache.invalidate(owner, name)
        task = await self._tasks.create(
            task_id=build_task_id, kind="build", servable=record.label, submitter=owner, timeout_s=0.0
        )
        await self._tasks.complete(
            task, output=to_json({"digest": pinned.digest, "files": [], "steps": list(pinned.steps)})
        )
        log.info("pipeline published", servable=record.label, task_id=build_task_id, steps=len(pinned.steps))
        self._background.spawn(self.reindex(owner, name), name=f"reindex {owner}/{name}")
        return record

    async def update(
        self,
        caller: Caller,
        *,
        user: str,
        owner: str,
        name: str,
        document: Any,
        package: bytes | None,
        package_format: PackageFormat,
    ) -> VersionRecord:
        """Publish a new version of an existing servable (owner or maintainer), reusing its files without a
        package. The new version keeps the servable's visibility and maintainers unless the document names
        them; only the owner may name maintainers."""
        versions = await self.visible_versions(caller, owner, name)
        check_may_manage(caller, versions, owner, name, "update")
        # A fully deleted servable is 410 here; publishing it anew (POST /servables) is the way back.
        reuse_from = newest_live(versions, owner, name)
        document = inherit_access(document, reuse_from, owner_updates=caller.user == owner)
        return await self.publish(
            owner=owner,
            document=document,
            package=package,
            package_format=package_format,
            expected_name=name,
            reuse_from=reuse_from,
            caller=caller,
        )

    async def delete(
        self, caller: Caller, *, user: str, owner: str, name: str, version: int | None
    ) -> list[int]:
        """Tombstone one or all versions (owner only); keep the search index on the newest ready version.

        The records stay (status ``deleted``) so the numbers are never reused and describe/run answer 410;
        package blobs no live version uses any more are removed.
        """
        versions = await self.visible_versions(caller, owner, name)
        check_may_manage(caller, versions, owner, name, "delete")
        if version is not None:
            target = next((v for v in versions if v.version == version), None)
            if target is None:
                raise NotFound(f"version {version} of {owner}/{name} not found")
            if target.deleted:
                raise Gone(gone_message(target))
        elif all(v.deleted for v in versions):
            raise Gone(f"servable {owner}/{name} was deleted")
        deleted = await self._store.mark_deleted(
            owner, name, None if version is None else [version], deleted_by=user, deleted_at_ms=now_ms()
        )
        self.cache.invalidate(owner, name)
        log.info("versions deleted (tombstoned)", servable=f"{owner}/{name}", versions=deleted)
        for sha in {v.bundle_sha256 for v in versions if v.version in deleted and v.bundle_sha256}:
            await self.bundles.remove(sha)
        for sha in {v.package_sha256 for v in versions if v.version in deleted and v.package_sha256}:
            if await self._store.count_package_refs(sha) == 0:
                await self._blobs.remove(sha)
        self._background.spawn(self.reindex(owner, name), name=f"reindex {owner}/{name}")
        return deleted

    async def set_deprecated(
        self,
        caller: Caller,
        *,
        user: str,
        owner: str,
        name: str,
        version: int,
        deprecated: bool,
        reason: str = "",
        replacement: str = "",
    ) -> VersionRecord:
        """Deprecate or undeprecate one live version (owner only); the search entry follows "latest"."""
        versions = await self.visible_versions(caller, owner, name)
        target = next((v for v in versions if v.version == version), None)
        if target is None:
            raise NotFound(f"version {version} of {owner}/{name} not found")
        check_may_manage(caller, versions, owner, name, "deprecate versions of")
        if target.deleted:
            raise Gone(gone_message(target))
        if replacement:
            parse_servable_ref(replacement, "replacement")
        updated = await self._store.set_deprecated(
            owner,
            name,
            version,
            deprecated=deprecated,
            reason=reason,
            replacement=replacement,
            at_ms=now_ms(),
        )
        self.cache.invalidate(owner, name)
        if updated is None:  # deleted concurrently
            raise Gone(f"version {version} of {owner}/{name} was deleted")
        log.info("version deprecation changed", servable=updated.label, deprecated=deprecated)
        self._background.spawn(self.reindex(owner, name), name=f"reindex {owner}/{name}")
        return updated

    async def set_access(
        self,
        caller: Caller,
        owner: str,
        name: str,
        *,
        visible_to: Sequence[str] | None,
        maintainers: Sequence[str] | None,
    ) -> VersionRecord:
        """Change who may see (``visible_to``) and manage (``maintainers``, owner only) every version of
        ``owner/name``; effective at once for describe and run (the cache is invalidated) and for search
        (the index entry is rewritten before this returns). None leaves a list as it is."""
        versions = await self.visible_versions(caller, owner, name)
        check_may_manage(caller, versions, owner, name, "change the visibility of")
        current = newest_live(versions, owner, name)
        if maintainers is not None and caller.user != owner:
            raise Forbidden(f"only {owner} may name the maintainers of {owner}/{name}")
        new_visible = list(visible_to) if visible_to is not None else list(current.visible_to)
        new_maintainers = list(maintainers) if maintainers is not None else list(current.maintainers)
        await self._store.set_access(owner, name, visible_to=new_visible, maintainers=new_maintainers)
        self.cache.invalidate(owner, name)
        log.info("access changed", servable=f"{owner}/{name}", public="public" in new_visible)
        try:
            await self.reindex(owner, name)
        except DLHubError as exc:  # the store is the truth: a later reindex repairs the search entry
            log.warning(
                "search entry not updated after an access change", servable=f"{owner}/{name}", error=exc.code
            )
        return newest_live(await self.cache.get(owner, name), owner, name)

    # -- builds -----------------------------------------------------------------------------------------

    def _build_timeout_s(self) -> float:
        """How long a build may take end to end: the environment step's own limit plus the package
        extraction, a push to the container registry and the queue in front of the builder."""
        settings = self._settings
        return max(settings.registry.sync_timeout_s, settings.environments.build_timeout_s + BUILD_MARGIN_S)

    def start_build(self, record: VersionRecord, *, resumed: bool = False) -> None:
        self._background.spawn(self._build(record, resumed=resumed), name=f"build {record.label}")

    async def export_parts(
        self, caller: Caller, owner: str, name: str, version: int
    ) -> tuple[VersionRecord, StoredBuild, bytes]:
        """What an export of a version the caller may see is made of: its record, build and package."""
        record = await self.describe_target(caller, owner, name, version)
        if is_pipeline(record.metadata):
            raise ValidationFailed("a pipeline has no files or environment to export", field="version")
        if record.status != "ready":
            raise ServableNotReady(f"{record.label} is {record.status}; only ready versions can be exported")
        package = await self._blobs.get(record.package_sha256) if record.package_sha256 else b""
        return record, await self.stored_build(record), package

    async def downloadable(self, caller: Caller, owner: str, name: str, version: int | None) -> VersionRecord:
        """The version whose files a download serves (pinned, or the one describe shows): visible to the
        caller (404 otherwise, like describe), not deleted (410) and ready (409: a package the builder has
        not accepted yet, or refused, is not served)."""
        record = await self.describe_target(caller, owner, name, version)
        if record.status != "ready":
            raise ServableNotReady(
                f"{record.label} is {record.status}; only ready versions have files to fetch"
            )
        return record

    async def stored_build(self, record: VersionRecord) -> StoredBuild:
        """The stored build record, or the one implied by the version's status when it has none."""
        return await self._store.get_build(record.owner, record.name, record.version) or implied_build(record)

    async def resume_builds(self) -> int:
        """Resubmit builds of versions left ``building`` by a previous process of this registry, or by one
        that never beat in the store. Another registry's open build is its own while it beats, and its
        taker's once it is gone (``take_over_build``)."""
        pending = await self._store.list_versions_with_status("building")
        peers = {p.instance_id for p in await self._store.list_registries()} - {self._tasks.owner}
        resumed = 0
        for record in pending:
            task = await self._tasks.get(record.build_task_id)
            if task is not None and task.state in OPEN_TASK_STATES and task.owner in peers:
                continue
            resumed += 1
            if task is None:
                await self._tasks.create(
                    task_id=record.build_task_id or new_id(),
                    kind="build",
                    servable=record.label,
                    submitter=record.owner,
                    timeout_s=self._build_timeout_s(),
                )
            self.start_build(record, resumed=True)
        return resumed

    async def take_over_build(self, task: TaskRecord) -> bool:
        """Resubmit the build of ``task``, taken over from a registry that is gone, if its version is still
        ``building`` for it (the build starts again; this registry drives it); False if none is."""
        for record in await self._store.list_versions_with_status("building"):
            if record.build_task_id == task.task_id:
                log.warning("build of a gone registry resumed", servable=record.label, task_id=task.task_id)
                self.start_build(record, resumed=True)
                return True
        return False

    async def fail_overdue_build(self, task: TaskRecord) -> bool:
        """End the version of a build task the reaper failed, if it is still ``building`` for that task: no
        coroutine is left to end it (the registry driving it is gone), so it becomes ``failed`` with the
        task's reason. True if a version was ended."""
        error = task.error or {}
        message = str(error.get("message") or "the build did not finish")
        for record in await self._store.list_versions_with_status("building"):
            if record.build_task_id != task.task_id:
                continue
            tracker = await self._tracker(record, resumed=False)
            tracker.set_state("failed", error=message)
            tracker.line(f"the build task ended {error.get('type', 'failed')}: {message}")
            await tracker.close()
            await self._store.set_version_status(
                record.owner, record.name, record.version, status="failed", status_reason=message
            )
            self.cache.invalidate(record.owner, record.name)
            log.warning("build ended by the reaper", servable=record.label, task_id=task.task_id)
            return True
        return False

    async def _tracker(self, record: VersionRecord, resumed: bool) -> BuildTracker:
        build = await self._store.get_build(record.owner, record.name, record.version)
        if build is None:
            build = new_build(record)
        config = self._settings.registry
        tracker = BuildTracker(
            self._store,
            record,
            build,
            max_log_bytes=config.max_build_log_bytes,
            save_interval_s=config.build_log_save_interval_s,
            on_state_saved=lambda: self.cache.invalidate(record.owner, record.name),
        )
        if resumed:
            tracker.set_state("queued")
            tracker.line("the registry restarted during this build; it was submitted to the builder again")
        await tracker.save()
        return tracker

    async def _build(self, record: VersionRecord, *, resumed: bool = False) -> None:
        task = await self._tasks.get(record.build_task_id)
        tracker = await self._tracker(record, resumed)
        tracker.start()
        try:
            await self._build_tracked(record, task, tracker, resumed=resumed)
        finally:
            await tracker.close()  # no-op when a branch below closed it already

    async def _build_tracked(
        self, record: VersionRecord, task: TaskRecord | None, tracker: BuildTracker, *, resumed: bool
    ) -> None:
        try:
            package = await self._blobs.get(record.package_sha256) if record.package_sha256 else b""
            request = BuildRequest(
                owner=record.owner,
                name=record.name,
                version=record.version,
                metadata=record.metadata,
                package=package,
                package_format=record.package_format if package else "none",
            )
            if task is not None:
                task = await self._tasks.mark_running(task, timeout_s=self._build_timeout_s())
            result = await self._bus.call(
                [RouteStep(topic=BUILDER_TOPIC, method=BUILD_METHOD)],
                self._codec.encode_value(request),
                timeout_s=self._build_timeout_s(),
                # A resumed build is a new bus task: a broker that outlived the previous registry process
                # still holds the old one (answering the dead process) and would ignore a duplicate id.
                task_id=None if resumed else record.build_task_id or None,
                on_progress=tracker.on_progress,
            )
            if not result.ok:
                error = error_dict(result.error)
                await self._build_failed(record, task, error, tracker)
                return
            outcome = decode_payload(result.output, BuildOutcome)
            if outcome.bundle:  # before the test vectors: a Task Manager may be what runs them
                record = dataclasses.replace(record, bundle_sha256=await self.bundles.put(outcome.bundle))
                outcome.bundle = b""
            tracker.environment(outcome)
            tracker.line(
                f"built: {len(outcome.files)} files, digest {outcome.digest}, environment "
                + (f"{outcome.environment} ({outcome.backend})" if outcome.environment else "shared")
            )
            vector_count = len(declared_vectors(record.metadata))
            if vector_count:  # vectors.py: still "building" while they run
                tracker.line(f"running {vector_count} test vectors")
                outcomes = await self.vectors.run_all(record)
                await self.vectors.remember(record, outcomes, "publish")
                if not all(o.passed for o in outcomes):
                    reason = failure_reason(record, outcomes)
                    error = {"type": "test_vectors_failed", "message": reason}
                    await self._build_failed(record, task, error, tracker)
                    return
                tracker.line(f"{vector_count} test vectors passed")
        except DLHubError as exc:
            await self._build_failed(record, task, exc.to_dict(), tracker)
            return
        except (OSError, NotImplementedError) as exc:
            await self._build_failed(record, task, {"type": "build_failed", "message": str(exc)}, tracker)
            return
        tracker.set_state("ready")
        await tracker.close()
        updated = await self._store.set_version_status(
            record.owner,
            record.name,
            record.version,
            status="ready",
            digest=outcome.digest,
            files=tuple(outcome.files),
            manifest=tuple(outcome.manifest),
            previews=tuple(outcome.previews),
            bundle_sha256=record.bundle_sha256,
        )
        self.cache.invalidate(record.owner, record.name)
        if task is not None:
            summary = {"digest": outcome.digest, "files": outcome.files, "size_bytes": outcome.size_bytes}
            if vector_count:
                summary["test_vectors_passed"] = vector_count
            await self._tasks.complete(task, output=to_json(summary))
        if updated is None:
            log.info("build finished for a deleted version", servable=record.label)
            return
        log.info("version ready", servable=record.label, digest=outcome.digest)
        await self.reindex(record.owner, record.name)

    async def _build_failed(
        self, record: VersionRecord, task: TaskRecord | None, error: dict[str, Any], tracker: BuildTracker
    ) -> None:
        message = str(error.get("message") or "build failed")
        log.warning("build failed", servable=record.label, error_type=error.get("type"), reason=message)
        tracker.set_state("failed", error=message)  # the record's error is the version's status_reason
        await tracker.close()
        await self._store.set_version_status(
            record.owner, record.name, record.version, status="failed", status_reason=message
        )
        self.cache.invalidate(record.owner, record.name)
        if task is not None:
            await self._tasks.fail(task, error=error)

    # -- search index -----------------------------------------------------------------------------------

    async def search_entry(self, owner: str, name: str) -> SearchDocument | None:
        """The index entry of ``owner/name``: its "latest" version (see ``runnable``), or None."""
        versions = await self.cache.get(owner, name)
        ready = [v for v in versions if v.status == "ready"]
        if not ready:
            return None
        latest = preferred(ready)
        return search_document(
            owner=owner,
            name=name,
            version=latest.version,
            metadata=latest.metadata,
            published_at_ms=latest.published_at_ms,
            previews=latest.previews,
        )

    async def last_verification(self, record: VersionRecord) -> StoredVerification | None:
        """The latest run of the version's test vectors (none is looked up for a version without any)."""
        if record.deleted or not declared_vectors(record.metadata):
            return None
        return await self._store.get_verification(record.owner, record.name, record.version)

    async def used_by(self, caller: Caller, dataset: VersionRecord) -> tuple[list[dict[str, Any]], bool]:
        """The first ``USED_BY_SHOWN`` servables the caller can see that name ``dataset`` as training or
        test data, and whether there are more. Bounded because a popular dataset's describe (and its web
        page) would otherwise carry every model ever trained on it; search's ``trained_on``/``tested_on``
        filters page through all of them."""
        linking = await self._store.list_linking_versions(dataset_targets(dataset), limit=USED_BY_SCANNED)
        users = linked_users(dataset, linking, caller)
        return users[:USED_BY_SHOWN], len(users) > USED_BY_SHOWN or len(linking) >= USED_BY_SCANNED

    async def reindex(self, owner: str, name: str) -> bool:
        """Upsert the newest ready version into the search index, or delete the entry if there is none;
        False when the update did not go through (it is then retried, see ``_retry_index``)."""
        document = await self.search_entry(owner, name)
        if document is None:
            request = IndexRequest(op="delete", id=f"{owner}/{name}")
        else:
            request = IndexRequest(op="upsert", id=document.id, document=document)
        if await self._send_index(request):
            return True
        await self._remember_unindexed(owner, name)
        return False

    async def _remember_unindexed(self, owner: str, name: str) -> None:
        """Keep a failed index update for the catch-up loop: in the store, so that a registry restart does
        not lose it, and in memory, so that a store that is away too does not either."""
        self._unindexed.add((owner, name))
        try:
            await self._store.mark_index_pending(owner, name, new_id())
        except DLHubError as exc:
            log.warning(
                "pending index update kept in memory only", servable=f"{owner}/{name}", error=exc.message
            )
        self._start_index_retry()

    def _start_index_retry(self) -> None:
        if self._index_retry is None or self._index_retry.done():
            self._index_retry = self._background.spawn(self._retry_index(), name="search index catch-up")

    async def resume_index_updates(self) -> int:
        """Start the catch-up loop for index updates a previous registry process could not send."""
        pending = await self._store.list_index_pending()
        if pending:
            self._start_index_retry()
        return len(pending)

    async def _retry_index(self) -> None:
        """Every ``registry.index_retry_interval_s``, send the entries of the servables whose index update
        failed (held in the store and in memory) again, until none is left; an entry is forgotten only once
        sent, and only if no newer failure marked it meanwhile."""
        interval_s = self._settings.registry.index_retry_interval_s
        pending, stored, unsure = await self._index_backlog()
        while pending or unsure:
            await asyncio.sleep(interval_s)
            for owner, name in sorted(pending):
                await self._retry_one(owner, name, stored.get((owner, name)))
            pending, stored, unsure = await self._index_backlog()
        log.info("search index caught up")

    async def _index_backlog(self) -> tuple[set[tuple[str, str]], dict[tuple[str, str], str], bool]:
        """The servables to send again (taken from memory, read from the store), the store's marks, and
        whether the store could not be read (then there may be more)."""
        memory, self._unindexed = self._unindexed, set()
        try:
            stored = {(o, n): mark for o, n, mark in await self._store.list_index_pending()}
        except DLHubError as exc:
            log.info("pending index updates unreadable; retrying", error=exc.message)
            return memory, {}, True
        return memory | stored.keys(), stored, False

    async def _retry_one(self, owner: str, name: str, mark: str | None) -> None:
        try:
            sent = await self.reindex(owner, name)
            if sent and mark is not None:
                await self._store.clear_index_pending(owner, name, mark)
        except DLHubError as exc:  # the store is away: the next round tries again
            log.info("index update retry postponed", servable=f"{owner}/{name}", error=exc.message)
            self._unindexed.add((owner, name))

    async def rebuild_search_index(self) -> ReindexOutcome:
        """Send the entry of every servable to the search service, which swaps in a fresh index."""
        documents: list[SearchDocument] = []
        for owner, name in await self._store.list_servables():
            document = await self.search_entry(owner, name)
            if document is not None:
                documents.append(document)
        log.info("full search reindex requested", documents=len(documents))
        result = await self._bus.call(
            [RouteStep(topic=SEARCH_REINDEX_TOPIC, method=REINDEX_METHOD)],
            self._codec.encode_value(ReindexRequest(documents=documents)),
            timeout_s=self._settings.registry.sync_timeout_s,
            require_handler=True,
        )
        if not result.ok:
            if result.error is None:
                raise DLHubError("the search service failed to reindex without an error description")
            raise error_class(result.error.code)(result.error.message)
        return decode_payload(result.output, ReindexOutcome)

    async def _send_index(self, request: IndexRequest) -> bool:
        """Send one index update; False (logged) when it did not go through."""
        try:
            result = await self._bus.call(
                [RouteStep(topic=SEARCH_INDEX_TOPIC, method=INDEX_METHOD)],
                self._codec.encode_value(request),
                timeout_s=INDEX_TIMEOUT_S,
                require_handler=True,  # search down: retried by ``_retry_index`` rather than queued
            )
        except (DLHubError, NotImplementedError) as exc:
            log.warning("search index update failed", id=request.id, op=request.op, error=str(exc))
            return False
        if not result.ok:
            log.warning(
                "search index update failed",
                id=request.id,
                op=request.op,
                error_type=result.error.code if result.error else "",
                error=result.error.message if result.error else "",
            )
        return result.ok


def gone_message(record: VersionRecord) -> str:
    return f"{record.label} was deleted" + (
        f" at {iso_ms(record.deleted_at_ms)}" if record.deleted_at_ms else ""
    )


def deprecation_warning(record: VersionRecord) -> str:
    """The warning attached to runs of a deprecated version."""
    text = f"{record.label} is deprecated"
    if record.deprecation_reason:
        text += f": {record.deprecation_reason}"
    if record.deprecation_replacement:
        text += f" (use {record.deprecation_replacement} instead)"
    return text


def preferred(ready: Sequence[VersionRecord]) -> VersionRecord:
    """Among ready versions (oldest first): the newest not deprecated, else the newest."""
    return next((r for r in reversed(ready) if not r.deprecated), ready[-1])


def check_may_manage(
    caller: Caller, versions: Sequence[VersionRecord], owner: str, name: str, what: str
) -> None:
    """403 unless the caller owns ``owner/name`` or is one of the maintainers its newest version names."""
    maintainers: tuple[str, ...] = ()
    for record in reversed(versions):
        if not record.deleted:
            maintainers = record.maintainers
            break
    if not caller.can_manage(owner, maintainers):
        raise Forbidden(f"only {owner} and the maintainers it names may {what} {owner}/{name}")


def inherit_access(document: Any, previous: VersionRecord, *, owner_updates: bool) -> Any:
    """``document`` with the previous version's ``visible_to`` (when it names none) and ``maintainers``
    (always, unless the owner updates and names them), so an update never widens access by omission."""
    if not isinstance(document, dict) or not isinstance(document.get("dlhub"), dict):
        return document  # validation answers it
    dlhub = dict(document["dlhub"])
    if "visible_to" not in dlhub:
        dlhub["visible_to"] = list(previous.visible_to)
    if not owner_updates or "maintainers" not in dlhub:
        dlhub["maintainers"] = list(previous.maintainers)
    return {**document, "dlhub": dlhub}


def newest_live(versions: Sequence[VersionRecord], owner: str, name: str) -> VersionRecord:
    """The newest version that is not a tombstone; 410 when all are (``versions`` is not empty)."""
    for record in reversed(versions):
        if not record.deleted:
            return record
    raise Gone(f"servable {owner}/{name} was deleted")
