"""A version's bundle: its whole folder of the servable store as one archive, addressed by sha256.

The builder makes one after a build (``make_bundle``) and the registry keeps it under its digest, recorded
on the version; a Task Manager that lacks the version's folder (it shares no disk with the builder) fetches
the bundle by that digest, checks it and unpacks it into its own cache (``install_bundle``). The digest
travels to the worker with each dispatch, over the authenticated bus, never with the bytes: a bundle altered
on the registry's disk or on the way is refused (``PackageTampered``) and leaves nothing behind. Unpacking
reuses the upload checks of ``dlhub.common.package`` (no member leaves the folder, sizes bounded).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Final

from dlhub.common.errors import PackageTampered, PackageUnavailable
from dlhub.common.package import ExtractLimits, extract_package

DIGEST_RE: Final = re.compile(r"^[0-9a-f]{64}$")
STAGING_DIRNAME: Final = ".staging"


def make_bundle(version_dir: Path) -> bytes:
    """The version folder as a gzip'd tar (members sorted, owners and times zeroed: the same folder gives
    the same bytes). Links are kept as links; the builder has checked they stay inside."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(version_dir.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(version_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def bundle_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is a lower-case sha256 hex digest (it becomes a file name and a URL path)."""
    if not DIGEST_RE.match(digest):
        raise PackageUnavailable(f"not a sha256 digest: {digest[:80]!r}")
    return digest


def cached_bundle(cache_root: Path, digest: str) -> Path | None:
    path = cache_root / check_digest(digest)
    return path if path.is_dir() else None


def install_bundle(data: bytes, digest: str, cache_root: Path, limits: ExtractLimits) -> Path:
    """Check ``data`` against ``digest``, unpack it into ``<cache_root>/<digest>`` (atomically: a staging
    folder renamed into place) and return that folder. Blocking: run it off the event loop."""
    check_digest(digest)
    actual = bundle_digest(data)
    if actual != digest:
        raise PackageTampered(
            f"bundle digest mismatch: expected sha256 {digest}, "
            f"received {len(data)} bytes with sha256 {actual}"
        )
    target = cache_root / digest
    if target.is_dir():
        return target
    staging_root = cache_root / STAGING_DIRNAME
    staging_root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f"{digest[:16]}.", dir=staging_root))
    try:
        extract_package(data, "tar", staged, limits)
        os.chmod(staged, 0o755)
        try:
            os.rename(staged, target)
        except OSError:
            if not target.is_dir():  # not another process that installed the same bundle first
                raise
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return target
