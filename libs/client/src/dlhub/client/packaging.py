"""Build the upload package (a .tar.gz) from the files a metadata document names."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any


def declared_files(metadata: Mapping[str, Any]) -> list[str]:
    """Return the relative paths in ``dlhub.files`` (values are a path or a list of paths) that are to be
    uploaded: those the builder fetches from a URL (``dlhub.url_files``) are left out."""
    files = metadata.get("dlhub", {}).get("files", {}) or {}
    paths: list[str] = []
    for value in files.values():
        if isinstance(value, str):
            paths.append(value)
        elif isinstance(value, list):
            paths.extend(str(v) for v in value)
    fetched = _url_file_paths(metadata)
    return sorted({path for path in paths if str(PurePosixPath(path)) not in fetched})


def _url_file_paths(metadata: Mapping[str, Any]) -> set[str]:
    entries = (metadata.get("dlhub") or {}).get("url_files") or []
    return {
        str(PurePosixPath(entry["path"]))
        for entry in entries
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str)
    }


def _arcname(path: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"package paths must be relative and stay inside the folder: {path!r}")
    return str(pure)


def build_package(base_dir: Path, paths: Iterable[str]) -> bytes:
    """Tar and gzip ``paths`` (relative to ``base_dir``; directories recurse) into memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in paths:
            source = base_dir / _arcname(rel)
            if not source.exists():
                raise FileNotFoundError(f"declared file {rel!r} not found under {base_dir}")
            tar.add(source, arcname=_arcname(rel), recursive=True)
    return buffer.getvalue()


def build_package_from_bytes(files: Mapping[str, bytes]) -> bytes:
    """Tar and gzip in-memory ``files`` (relative path -> content) into memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in sorted(files):
            content = files[rel]
            info = tarfile.TarInfo(_arcname(rel))
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
