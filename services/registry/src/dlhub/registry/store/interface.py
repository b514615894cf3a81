"""The registry's persistent state behind one backend-neutral interface.

Three collections: servable versions, tasks (builds and asynchronous runs) and API tokens. Backends (SQLite
today, MongoDB next) implement ``MetadataStore``; nothing outside a backend module speaks its query language.
Records are immutable values; callers build updated copies with ``dataclasses.replace``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from dlhub.common.links import store_target
from dlhub.common.payloads import BuildRecord, FileEntry, TablePreview

VersionStatus = Literal["building", "ready", "failed", "deleted"]
BuildStateValue = Literal["", "queued", "resolving", "installing", "ready", "failed"]
"""A version's build state; "" for versions stored before builds had records."""
TaskKind = Literal["run", "build", "job"]
TaskState = Literal["pending", "running", "completed", "failed"]
OPEN_TASK_STATES: tuple[TaskState, ...] = ("pending", "running")
"""States a task can still leave; completed and failed are final."""
PackageFormat = Literal["tar", "zip", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRecord:
    """One published version of a servable."""

    owner: str
    name: str
    version: int
    status: VersionStatus
    metadata: dict[str, Any]
    published_at_ms: int
    status_reason: str = ""
    digest: str = ""
    files: tuple[str, ...] = ()
    package_sha256: str = ""
    package_format: PackageFormat = "none"
    build_task_id: str = ""
    deprecated: bool = False
    deprecation_reason: str = ""
    deprecation_replacement: str = ""
    """``owner/name@version`` suggested instead of a deprecated version ("" when none)."""
    deprecated_at_ms: int = 0
    deleted_at_ms: int = 0
    deleted_by: str = ""
    environment: str = ""
    """The environment id the version runs in ("" for the shared worker environment)."""
    build_state: BuildStateValue = ""
    """The state of its build record (``save_build`` keeps it in step; "" for versions without a record)."""
    manifest: tuple[FileEntry, ...] = ()
    """Its regular files with size and sha256 (set with the build outcome; empty before and on tombstones)."""
    previews: tuple[TablePreview, ...] = ()
    """Datasets: previews of their tabular files (set with the build outcome)."""
    bundle_sha256: str = ""
    """The sha256 hex digest of the version's bundle (its built folder as one archive, kept by the registry
    for Task Managers without the builder's disk; ``dlhub.common.bundles``); "" for versions built before."""

    @property
    def deleted(self) -> bool:
        """Whether this record is a tombstone (the version was deleted; only its identity is kept)."""
        return self.status == "deleted"

    @property
    def shorthand_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def label(self) -> str:
        return f"{self.owner}/{self.name}@{self.version}"

    @property
    def visible_to(self) -> tuple[str, ...]:
        dlhub = self.metadata.get("dlhub") or {}
        value = dlhub.get("visible_to")
        return tuple(value) if isinstance(value, list) else ("public",)

    @property
    def maintainers(self) -> tuple[str, ...]:
        """Principals (``user:<name>``, ``group:<id>``) the owner lets manage the servable."""
        dlhub = self.metadata.get("dlhub") or {}
        value = dlhub.get("maintainers")
        return tuple(str(v) for v in value) if isinstance(value, list) else ()


class StoredBuild(BuildRecord, kw_only=True):
    """The registry's build record of one version (``BuildRecord`` plus what exports and follows need).

    ``log`` is capped (``registry.max_build_log_bytes``): the head, a marker line saying how many lines
    were dropped, and the tail; ``dropped_lines`` counts them, so ``total_lines`` is every line ever logged.
    ``backend``/``python``/``lock``/``base_image`` describe the version's own environment ("" when shared).
    """

    dropped_lines: int = 0
    updated_at_unix_s: float = 0.0
    backend: str = ""
    python: str = ""
    lock: str = ""
    base_image: str = ""

    @property
    def total_lines(self) -> int:
        return len(self.log) - (1 if self.dropped_lines else 0) + self.dropped_lines


class VectorCheck(msgspec.Struct, kw_only=True, frozen=True):
    """One test vector's outcome in a stored verification (no timings: they describe one run only)."""

    index: int
    passed: bool
    message: str = ""


VerificationTrigger = Literal["publish", "verify"]


class StoredVerification(msgspec.Struct, kw_only=True, frozen=True):
    """The latest run of a version's test vectors: at publication (after the build) or ``POST .../verify``."""

    at_unix_s: float
    passed: bool
    trigger: VerificationTrigger
    vectors: tuple[VectorCheck, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """A build or an asynchronous run; ``output_json`` is the output already serialised as JSON."""

    task_id: str
    kind: TaskKind
    state: TaskState
    servable: str
    created_at_ms: int
    updated_at_ms: int
    expires_at_ms: int
    submitter: str | None = None
    output_json: bytes | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    owner: str = ""
    """The registry instance that accepted the task and awaits its outcome ("" for records stored before
    tasks had owners)."""
    deadline_ms: int = 0
    """When an unfinished task is failed ``deadline_exceeded`` by any registry (0: never, older records)."""
    progress: dict[str, Any] | None = None
    """A dataset job's progress (``{"done", "total", "failed"}``); None for other tasks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryInstance:
    """A registry process sharing the store: its heartbeat (``takeover.TaskTakeover``)."""

    instance_id: str
    url: str
    last_seen_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """A local API token, known only by the sha256 of its secret."""

    token_hash: str
    user: str
    created_at_ms: int
    label: str = ""
    expires_at_ms: int | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One audited change: who (a user, or ``-`` for the CLI acting on the store), what, on what, when.

    ``detail`` never holds a secret: a token appears only as the last characters of its hash's hex digest.
    """

    at_ms: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100


class MetadataStore(abc.ABC):
    """Versions, tasks and tokens. Every method is safe to call concurrently from one event loop."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection."""

    # -- versions ---------------------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Allocate the next version number of ``owner/name`` atomically and store the version.

        Numbers start at 1 and are never reused, even after deletion (workers cache servables by number).
        """

    @abc.abstractmethod
    async def get_version(self, owner: str, name: str, version: int) -> VersionRecord | None:
        """Return one version or None."""

    @abc.abstractmethod
    async def list_versions(self, owner: str, name: str) -> list[VersionRecord]:
        """Return every stored version of ``owner/name``, oldest first."""

    @abc.abstractmethod
    async def list_servables(self, owner: str | None = None) -> list[tuple[str, str]]:
        """Return the (owner, name) pairs that have at least one live (not deleted) version, sorted."""

    @abc.abstractmethod
    async def list_versions_with_status(self, status: VersionStatus) -> list[VersionRecord]:
        """Return every version in ``status`` (used to resume builds after a restart)."""

    @abc.abstractmethod
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
        """Update the build outcome of a live version; return the new record or None if it does not exist or
        is a tombstone (a build finishing after deletion never revives the version)."""

    @abc.abstractmethod
    async def list_linking_versions(self, targets: Sequence[str], limit: int = 1000) -> list[VersionRecord]:
        """Live versions whose ``link_targets`` include any of ``targets`` (the reverse of a servable's links
        to its datasets), at most ``limit``, ordered by owner, name, version. Tombstones never link."""

    @abc.abstractmethod
    async def delete_versions(self, owner: str, name: str, versions: list[int] | None = None) -> list[int]:
        """Remove the given version records outright (all when None); return the numbers actually removed.

        The registry tombstones instead (``mark_deleted``); this is for administrative purges.
        """

    @abc.abstractmethod
    async def mark_deleted(
        self,
        owner: str,
        name: str,
        versions: list[int] | None = None,
        *,
        deleted_by: str,
        deleted_at_ms: int,
    ) -> list[int]:
        """Turn the given live versions (all when None) into tombstones; return the numbers actually changed.

        A tombstone keeps owner, name, version, published_at_ms, digest and package_sha256, takes status
        ``deleted`` with ``deleted_at_ms``/``deleted_by``, drops its files and deprecation, and keeps only the
        citation-relevant metadata (``tombstone_metadata``). Already-deleted versions are left unchanged.
        """

    @abc.abstractmethod
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
        """Set or clear the deprecation of a live version; None if it does not exist or is a tombstone."""

    @abc.abstractmethod
    async def count_package_refs(self, package_sha256: str) -> int:
        """Return how many live (not deleted) versions use the package blob with this digest."""

    # -- build records ----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_build(self, owner: str, name: str, version: int, build: StoredBuild) -> None:
        """Insert or replace the build record of a version, and copy its state (and its environment id, when
        not empty) onto the version record (``build_state``/``environment``)."""

    @abc.abstractmethod
    async def get_build(self, owner: str, name: str, version: int) -> StoredBuild | None:
        """The build record of a version, or None (versions published before build records existed)."""

    # -- test-vector verifications ----------------------------------------------------------------------

    @abc.abstractmethod
    async def save_verification(
        self, owner: str, name: str, version: int, verification: StoredVerification
    ) -> None:
        """Insert or replace the latest verification of a version (one per version)."""

    @abc.abstractmethod
    async def get_verification(self, owner: str, name: str, version: int) -> StoredVerification | None:
        """The latest verification of a version, or None (never verified since verifications were stored)."""

    # -- tasks ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_task(self, task: TaskRecord) -> None:
        """Insert or replace a task record."""

    @abc.abstractmethod
    async def update_open_task(self, task: TaskRecord, *, owner: str | None = None) -> bool:
        """Replace a task record only while the stored one is still open (pending or running), and, with
        ``owner``, still owned by ``owner``; return whether it was replaced. Terminal states are final: a late
        or duplicate outcome never overwrites one; and an owner's outcome never lands after ``claim_task``
        took the task from it (or the other way round: one of the two wins)."""

    @abc.abstractmethod
    async def claim_task(self, task: TaskRecord, *, new_owner: str) -> bool:
        """Make ``new_owner`` the owner of ``task`` if it is still open and still owned by ``task.owner``;
        return whether it is. Of concurrent claims from the same owner one wins."""

    @abc.abstractmethod
    async def beat_registry(self, instance_id: str, *, url: str, now_ms: int) -> None:
        """Record that registry ``instance_id`` (answering at ``url``) is alive at ``now_ms``."""

    @abc.abstractmethod
    async def list_registries(self) -> list[RegistryInstance]:
        """Every registry that has beaten, with its last beat."""

    @abc.abstractmethod
    async def list_open_tasks(
        self, *, owner: str | None = None, deadline_before_ms: int | None = None, limit: int = 1000
    ) -> list[TaskRecord]:
        """Open (pending or running) tasks, of ``owner`` when given, and with a deadline (not 0) before
        ``deadline_before_ms`` when given; at most ``limit``, oldest first."""

    @abc.abstractmethod
    async def get_task(self, task_id: str, *, now_ms: int) -> TaskRecord | None:
        """Return a task unless it is unknown or expired at ``now_ms``."""

    @abc.abstractmethod
    async def delete_expired_tasks(self, *, now_ms: int) -> int:
        """Delete tasks whose expiry is at or before ``now_ms``; return how many."""

    # -- search index updates not taken yet --------------------------------------------------------------

    @abc.abstractmethod
    async def mark_index_pending(self, owner: str, name: str, mark: str) -> None:
        """Remember that the search entry of ``owner/name`` has an update the index has not taken (search
        down). ``mark`` (a fresh id per failure) replaces an earlier one, so that clearing an older mark
        cannot forget a newer failure."""

    @abc.abstractmethod
    async def clear_index_pending(self, owner: str, name: str, mark: str) -> bool:
        """Forget the pending update of ``owner/name`` if its mark is still ``mark``; True if it was."""

    @abc.abstractmethod
    async def list_index_pending(self, limit: int = 10_000) -> list[tuple[str, str, str]]:
        """The servables with a pending index update, as ``(owner, name, mark)``."""

    # -- memoized results -------------------------------------------------------------------------------

    async def get_memo(self, key: str, *, now_ms: int) -> bytes | None:
        """Return the memoized result (JSON bytes) under ``key`` unless absent or expired at ``now_ms``.

        Not abstract: a backend without a shared memo answers "absent" (the registry then uses memory only).
        """
        return None

    async def put_memo(self, key: str, value: bytes, *, expires_at_ms: int) -> None:
        """Insert or replace the memoized result under ``key``, kept until ``expires_at_ms``."""
        return None

    # -- tokens -----------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_token(self, token: TokenRecord) -> None:
        """Store a new token record."""

    @abc.abstractmethod
    async def get_token(self, token_hash: str) -> TokenRecord | None:
        """Look a token up by the sha256 hex digest of its secret."""

    @abc.abstractmethod
    async def revoke_token(self, token_hash: str) -> bool:
        """Mark a token revoked; return whether it existed."""

    # -- identity: local groups, linked identities, access, audit ----------------------------------------

    @abc.abstractmethod
    async def add_group_member(self, group: str, user: str) -> bool:
        """Add ``user`` to the local group ``group``; return False when already a member."""

    @abc.abstractmethod
    async def remove_group_member(self, group: str, user: str) -> bool:
        """Remove ``user`` from ``group``; return whether it was a member."""

    @abc.abstractmethod
    async def groups_of(self, user: str) -> list[str]:
        """The local groups ``user`` belongs to, sorted."""

    @abc.abstractmethod
    async def group_members(self, group: str) -> list[str]:
        """The members of a local group, sorted."""

    @abc.abstractmethod
    async def user_for_identities(self, identity_ids: Sequence[str]) -> str | None:
        """The user any of these (linked, external) identities belongs to, or None."""

    @abc.abstractmethod
    async def link_identities(self, user: str, identity_ids: Sequence[str]) -> None:
        """Record that these identities are ``user`` (an identity already linked keeps its user)."""

    @abc.abstractmethod
    async def user_has_identities(self, user: str) -> bool:
        """Whether any external identity is linked to ``user`` (a taken name, for sign-up)."""

    @abc.abstractmethod
    async def set_access(
        self, owner: str, name: str, *, visible_to: Sequence[str], maintainers: Sequence[str]
    ) -> list[int]:
        """Set ``dlhub.visible_to`` and ``dlhub.maintainers`` in the metadata of every stored version of
        ``owner/name`` (tombstones too, so they stay hidden alike); return the version numbers changed."""

    @abc.abstractmethod
    async def add_audit(self, record: AuditRecord) -> None:
        """Append one record to the audit log."""

    @abc.abstractmethod
    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Audit records matching every given filter, newest first, at most ``query.limit``."""


def link_targets(metadata: dict[str, Any]) -> list[str]:
    """The store keys of a version's links (``dlhub.training_data``, ``test_data``, ``derived_from``,
    ``generated_by``):
    ``owner/name`` for a DLHub reference, ``doi:<folded>`` for a DOI (``dlhub.common.links.store_target``)."""
    dlhub = metadata.get("dlhub")
    if not isinstance(dlhub, dict):
        return []
    refs = [
        ref
        for key in ("training_data", "test_data", "derived_from", "generated_by")
        if isinstance(dlhub.get(key), list)
        for ref in dlhub[key]
        if isinstance(ref, str) and ref.strip()
    ]
    return sorted({store_target(ref) for ref in refs})


def with_access(
    metadata: dict[str, Any], visible_to: Sequence[str], maintainers: Sequence[str]
) -> dict[str, Any]:
    """A copy of ``metadata`` whose ``dlhub`` section has these ``visible_to`` and ``maintainers``."""
    dlhub = dict(metadata.get("dlhub") or {})
    dlhub["visible_to"] = list(visible_to)
    dlhub["maintainers"] = list(maintainers)
    return {**metadata, "dlhub": dlhub}


_TOMBSTONE_DLHUB_KEYS = (
    "name",
    "owner",
    "visible_to",
    "maintainers",
    "identifier",
    "id",
    "publication_date",
    "type",
)


def tombstone_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a deleted version keeps of its metadata: the ``datacite`` section (for citations) and the
    identity and visibility fields of ``dlhub`` (so a tombstone stays hidden from who could not see it)."""
    kept: dict[str, Any] = {}
    if "datacite" in metadata:
        kept["datacite"] = metadata["datacite"]
    dlhub = metadata.get("dlhub")
    if isinstance(dlhub, dict):
        kept["dlhub"] = {k: dlhub[k] for k in _TOMBSTONE_DLHUB_KEYS if k in dlhub}
    return kept
