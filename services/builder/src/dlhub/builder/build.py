"""Turn a ``BuildRequest`` into an immutable version folder of the servable store.

Steps: validate the request, extract the package into a fresh staging folder, check the files the metadata
declares, write ``metadata.json``, digest the files, then rename the staging folder into place in one step.
A version is immutable: rebuilding it with the same files and document succeeds, anything else is a
``Conflict``. The staging folder is removed on every failure, and nothing is written outside the root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dlhub.builder.preview import PreviewLimits, is_dataset, previews
from dlhub.builder.remote import UrlFetcher, declared_url_files
from dlhub.common.bundles import make_bundle
from dlhub.common.config import DLHubSettings
from dlhub.common.environments import (
    BUILD_RECORD_FILENAME,
    ENVIRONMENT_FILENAME,
    BuildListener,
    BuildLog,
    EnvironmentRecord,
    read_environment,
    record_json,
)
from dlhub.common.errors import (
    BuildFailed,
    Conflict,
    DLHubError,
    PayloadTooLarge,
    UnsafePackage,
    ValidationFailed,
)
from dlhub.common.ids import NAME_RE
from dlhub.common.logging import get_logger
from dlhub.common.package import ExtractLimits, extract_package, normalize_member_name
from dlhub.common.payloads import BuildOutcome, BuildRequest, FileEntry
from dlhub.common.servable_store import (
    FILES_DIRNAME,
    METADATA_FILENAME,
    build_record_path,
    staging_dir,
    version_dir,
)

if TYPE_CHECKING:
    from dlhub.builder.environments import EnvironmentBuilder

log = get_logger(__name__)

DIGEST_PREFIX: Final = "sha256:"
HASH_CHUNK_BYTES: Final = 1024 * 1024
STALE_STAGING_S: Final = 3600.0
BUNDLE_MARGIN_BYTES: Final = 1024 * 1024
"""Room left in a bus message for the rest of a build's outcome (file list, lock) beside its bundle."""


@dataclass(frozen=True, slots=True)
class BuildLimits:
    max_package_bytes: int
    max_extracted_bytes: int
    max_files: int
    preview: PreviewLimits = dataclasses.field(default_factory=PreviewLimits)
    max_bundle_bytes: int = 255 * 1024 * 1024
    """Largest bundle sent back with the outcome (it crosses the bus: below ``bus.max_message_bytes``); a
    bigger version is built without one and runs only on workers sharing the builder's disk."""

    @classmethod
    def from_settings(cls, settings: DLHubSettings) -> BuildLimits:
        config = settings.builder
        return cls(
            max_package_bytes=config.max_package_bytes,
            max_extracted_bytes=config.max_extracted_bytes,
            max_files=config.max_files,
            preview=PreviewLimits.from_settings(settings),
            max_bundle_bytes=max(0, settings.bus.max_message_bytes - BUNDLE_MARGIN_BYTES),
        )


def validate_request(request: BuildRequest, limits: BuildLimits) -> None:
    """Reject names that are not safe path components, bad versions and oversize packages."""
    for field, value in (("owner", request.owner), ("name", request.name)):
        if not NAME_RE.match(value):
            raise ValidationFailed(f"{field} {value!r} is not a valid name", field=field)
    if request.version < 1:
        raise ValidationFailed(f"version must be >= 1, got {request.version}", field="version")
    if len(request.package) > limits.max_package_bytes:
        raise PayloadTooLarge(
            f"package of {len(request.package)} bytes exceeds the limit of {limits.max_package_bytes} bytes"
        )


def declared_files(metadata: Mapping[str, Any]) -> list[str]:
    """Return the package paths named in ``dlhub.files`` (role -> path or list of paths)."""
    dlhub = metadata.get("dlhub", {})
    if not isinstance(dlhub, Mapping):
        raise BuildFailed("metadata field 'dlhub' must be an object")
    files = dlhub.get("files", {})
    if files is None:
        return []
    if not isinstance(files, Mapping):
        raise BuildFailed("metadata field 'dlhub.files' must map roles to paths")
    paths: list[str] = []
    for role, value in files.items():
        values = value if isinstance(value, list) else [value]
        for path in values:
            if not isinstance(path, str) or not path:
                raise BuildFailed(f"dlhub.files.{role} must be a path or a list of paths")
            paths.append(path)
    return paths


def check_declared_files(files_dir: Path, paths: list[str]) -> None:
    """Fail unless every declared path exists (as a file or folder) in the extracted package."""
    missing: list[str] = []
    for path in paths:
        try:
            rel = normalize_member_name(path)
        except UnsafePackage as exc:
            raise BuildFailed(f"declared file {path!r} is not a relative path inside the package") from exc
        if not rel or not (files_dir / rel).exists():
            missing.append(path)
    if missing:
        raise BuildFailed(f"files declared in dlhub.files are missing from the package: {', '.join(missing)}")


def list_files(files_dir: Path) -> list[str]:
    """Relative POSIX paths of every file and link under ``files_dir``, sorted."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(files_dir):
        base = Path(folder)
        for name in filenames:
            found.append((base / name).relative_to(files_dir).as_posix())
        for name in dirnames:
            if (base / name).is_symlink():
                found.append((base / name).relative_to(files_dir).as_posix())
    return sorted(found)


def compute_digest(files_dir: Path) -> tuple[str, list[str], int]:
    """Digest the package: sha256 over sorted relative paths and their bytes (a link's target instead)."""
    digest, files, total, _ = digest_files(files_dir)
    return digest, files, total


def digest_files(files_dir: Path) -> tuple[str, list[str], int, list[FileEntry]]:
    """``compute_digest`` plus the manifest (each regular file's size and sha256), in one read."""
    digest = hashlib.sha256()
    files = list_files(files_dir) if files_dir.exists() else []
    total = 0
    manifest: list[FileEntry] = []
    for rel in files:
        path = files_dir / rel
        if path.is_symlink():
            target = os.readlink(path).encode()
            digest.update(b"L" + rel.encode() + b"\0" + len(target).to_bytes(8, "big") + target)
            continue
        size = path.stat().st_size
        total += size
        digest.update(b"F" + rel.encode() + b"\0" + size.to_bytes(8, "big"))
        own = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
                own.update(chunk)
        manifest.append(FileEntry(path=rel, size_bytes=size, sha256=own.hexdigest()))
    return DIGEST_PREFIX + digest.hexdigest(), files, total, manifest


def write_metadata(version_staging: Path, metadata: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(metadata, indent=2, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise BuildFailed(f"metadata cannot be written as JSON: {exc}") from exc
    (version_staging / METADATA_FILENAME).write_text(text + "\n", encoding="utf-8")


def _read_metadata(version: Path) -> Any:
    try:
        return json.loads((version / METADATA_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_version(existing: Path, digest: str, metadata: Mapping[str, Any]) -> bool:
    existing_digest, _, _ = compute_digest(existing / FILES_DIRNAME)
    return existing_digest == digest and _read_metadata(existing) == json.loads(json.dumps(metadata))


def publish(staged: Path, target: Path, digest: str, metadata: Mapping[str, Any]) -> bool:
    """Rename ``staged`` to ``target`` atomically; return False if an identical version is already there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.rename(staged, target)
            return True
        except OSError:
            if not target.exists():
                raise
            # Lost a race with a concurrent build of the same version: compare with the winner below.
    if _same_version(target, digest, metadata):
        return False
    raise Conflict(f"version {target.name} already exists with different content")


def _log_dependencies(request: BuildRequest) -> None:
    dlhub = request.metadata.get("dlhub")
    dependencies = dlhub.get("dependencies") if isinstance(dlhub, Mapping) else None
    if dependencies:
        # Only without an EnvironmentBuilder (library use, unit tests): the service always has one.
        log.info(
            "no environment builder: declared dependencies not installed; using the worker environment",
            servable=f"{request.owner}/{request.name}@{request.version}",
            dependencies=dependencies,
        )


def _fetch_url_files(
    request: BuildRequest, files_dir: Path, limits: BuildLimits, fetcher: UrlFetcher, build_log: BuildLog
) -> None:
    """Fetch ``dlhub.url_files`` into the package; the version as a whole stays within the extracted limit."""
    entries = declared_url_files(request.metadata, fetcher.settings)
    if not entries:
        return
    extracted = sum((files_dir / rel).lstat().st_size for rel in list_files(files_dir))
    fetcher.fetch_all(entries, files_dir, limits.max_extracted_bytes - extracted, build_log)


def build_version(
    request: BuildRequest,
    root: Path,
    limits: BuildLimits,
    environments: EnvironmentBuilder | None = None,
    listener: BuildListener | None = None,
    fetcher: UrlFetcher | None = None,
) -> BuildOutcome:
    """Validate, extract, fetch the URL components, check, digest, build the environment and publish one
    version; blocking (run it off the event loop). The build record (``build_record_path``) follows the
    states and keeps the log; ``listener`` hears each state change and log line as it happens."""
    # Names become paths: they are checked before anything (the build record included) is written.
    validate_request(request, limits)
    servable = f"{request.owner}/{request.name}@{request.version}"
    record_path = build_record_path(root, request.owner, request.name, request.version)
    build_log = BuildLog(servable, record_path, listener)
    paths = declared_files(request.metadata)
    if environments is None:
        _log_dependencies(request)
    staging_root = staging_dir(root)
    staging_root.mkdir(parents=True, exist_ok=True)
    prefix = f"{request.owner}.{request.name}.{request.version}."
    staged = Path(tempfile.mkdtemp(prefix=prefix, dir=staging_root))
    environment: EnvironmentRecord | None = None
    try:
        files_dir = staged / FILES_DIRNAME
        files_dir.mkdir()
        extract_package(
            request.package,
            request.package_format,
            files_dir,
            ExtractLimits(max_extracted_bytes=limits.max_extracted_bytes, max_files=limits.max_files),
        )
        build_log.line(f"extracted the package ({len(request.package)} bytes, {request.package_format})")
        _fetch_url_files(request, files_dir, limits, fetcher or UrlFetcher(), build_log)
        check_declared_files(files_dir, paths)
        write_metadata(staged, request.metadata)
        digest, files, size_bytes, manifest = digest_files(files_dir)
        tables = previews(files_dir, files, limits.preview) if is_dataset(request.metadata) else []
        target = version_dir(root, request.owner, request.name, request.version)
        if target.exists() and _same_version(target, digest, request.metadata):
            created = False  # an identical rebuild: its environment was built with it
            environment = read_environment(target)
        else:
            if environments is not None:
                environment = environments.prepare(request.metadata, files_dir, build_log)
                if environment.kind == "isolated":
                    (staged / ENVIRONMENT_FILENAME).write_bytes(record_json(environment))
            else:
                build_log.line("no environment builder: the version runs in the worker environment")
            build_log.set_state("ready")
            (staged / BUILD_RECORD_FILENAME).write_bytes(record_json(build_log.record))
            # mkdtemp made it 0700: a version is readable by whoever can reach the store, including the
            # unprivileged user of a docker environment's containers (which mount the store read-only).
            os.chmod(staged, 0o755)
            created = publish(staged, target, digest, request.metadata)
    except Exception as exc:
        message = exc.message if isinstance(exc, DLHubError) else f"{type(exc).__name__}: {exc}"
        build_log.set_state("failed", error=message)
        raise
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    log.info(
        "version built" if created else "version already built",
        servable=servable,
        digest=digest,
        files=len(files),
        size_bytes=size_bytes,
        environment=environment.id if environment is not None and environment.id else "shared",
    )
    isolated = environment if environment is not None and environment.kind == "isolated" else None
    bundle = make_bundle(target)
    if len(bundle) > limits.max_bundle_bytes:
        build_log.line(
            f"bundle of {len(bundle)} bytes not kept (over {limits.max_bundle_bytes}): "
            "only workers sharing the builder's disk can run this version"
        )
        build_log.save()
        log.warning("bundle too large; not kept", servable=servable, size_bytes=len(bundle))
        bundle = b""
    return BuildOutcome(
        digest=digest,
        files=files,
        size_bytes=size_bytes,
        path=str(target),
        environment=environment.id if environment is not None else "",
        backend=isolated.backend if isolated is not None else "",
        python=isolated.python if isolated is not None else "",
        lock=isolated.lock if isolated is not None else "",
        base_image=isolated.base_image if isolated is not None else "",
        manifest=manifest,
        previews=tables,
        bundle=bundle,
    )


def sweep_staging(root: Path, *, older_than_s: float = STALE_STAGING_S) -> int:
    """Remove staging folders left behind by a crashed build; return how many were removed."""
    staging_root = staging_dir(root)
    if not staging_root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for child in staging_root.iterdir():
        try:
            if child.lstat().st_mtime < cutoff:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed += 1
        except OSError:
            continue
    return removed
