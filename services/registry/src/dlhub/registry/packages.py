"""Uploaded package blobs, kept by content under ``<data_dir>/packages/<sha256>.bin``.

Keeping them lets a metadata-only update rebuild a new version from the previous version's files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from dlhub.common.errors import ValidationFailed
from dlhub.registry.store import PackageFormat

_SUFFIXES: tuple[tuple[str, PackageFormat], ...] = (
    (".tar.gz", "tar"),
    (".tgz", "tar"),
    (".tar", "tar"),
    (".zip", "zip"),
)


def detect_format(filename: str | None, data: bytes) -> PackageFormat:
    """Return the archive format from the file name, else from its magic bytes; 400 if neither fits."""
    if not data:
        return "none"
    lowered = (filename or "").lower()
    for suffix, fmt in _SUFFIXES:
        if lowered.endswith(suffix):
            return fmt
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
        return "tar"
    raise ValidationFailed(
        f"unsupported package {filename!r}: expected a .tar.gz, .tgz, .tar or .zip archive", field="package"
    )


class PackageBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.bin"

    async def put(self, data: bytes) -> str:
        """Store ``data`` (idempotently) and return its sha256 hex digest."""
        return await asyncio.to_thread(self._put, data)

    def _put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{digest}.{os.getpid()}.{id(data)}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        return digest

    async def get(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self.path(sha256).read_bytes)

    async def remove(self, sha256: str) -> None:
        await asyncio.to_thread(self._remove, sha256)

    def _remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
        # the file index downloads build (``package_files``) goes with its package
        (self.root / f"{sha256}.files.json").unlink(missing_ok=True)
