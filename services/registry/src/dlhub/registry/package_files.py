"""The files of a stored package, served one at a time without extracting the package or loading it.

The registry keeps each uploaded package as it came (``packages.PackageBlobs``: a tar, compressed or not, or
a zip). The first download from a package indexes it once: every regular file's normalised path, size and
sha256, and where its bytes start (the offset in the uncompressed tar stream, or the zip member's name).
The index is written next to the package as ``<sha256>.files.json``; a package is content-addressed and
never changes, so neither does its index, and every registry sharing the data directory reuses it.

Reading a file then opens the package, seeks to the member (a plain tar and a stored zip member seek in
place; a compressed one decompresses up to the offset and discards it) and hands out fixed-size chunks, so
memory stays bounded whatever the file's size.

Paths are resolved in the index, never on a filesystem: a symlink member is followed lexically inside the
package, and one that leaves it (or names no file) is refused (``InvalidPath``) rather than resolved.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal, cast

import msgspec

from dlhub.common.errors import InvalidPath, NotFound, PayloadTooLarge, UnsafePackage
from dlhub.registry.packages import PackageBlobs

CHUNK_BYTES: Final = 256 * 1024
HASH_CHUNK_BYTES: Final = 1024 * 1024
INDEX_SUFFIX: Final = ".files.json"
MAX_PATH_CHARS: Final = 4096
MAX_LINK_HOPS: Final = 40
INDEX_FORMAT: Final = 1
ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")

Compression = Literal["", "gz", "bz2", "xz"]
_MAGIC: Final[tuple[tuple[bytes, Compression], ...]] = (
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
)


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    size: int
    """-1 for a link that leaves the package or names no regular file (listed nowhere, refused if asked)."""
    sha256: str = ""
    offset: int = -1
    """Tar: where the bytes start in the uncompressed stream. Zip: -1 (``member`` names them)."""
    member: str = ""
    """Zip: the member holding the bytes (a link's: its target's)."""
    link: str = ""
    """A symlink: the package path it resolves to ("" for a regular file)."""


class PackageIndex(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    archive: Literal["tar", "zip"]
    compression: Compression
    files: list[FileEntry]


class IndexedPackage:
    """A package's index with its files by path (what the download handlers look files up in)."""

    __slots__ = ("by_path", "index", "package")

    def __init__(self, package: Path, index: PackageIndex) -> None:
        self.package = package
        self.index = index
        self.by_path = {entry.path: entry for entry in index.files}

    def served(self) -> list[FileEntry]:
        """The entries a download can fetch (regular files and links to them), sorted by path."""
        return [entry for entry in self.index.files if entry.size >= 0]

    def find(self, path: str) -> FileEntry:
        """The entry of ``path``; 404 when the package has no such file, 400 for a link that leaves it."""
        entry = self.by_path.get(path)
        if entry is None:
            raise NotFound(f"no file {path!r} in this version")
        if entry.size < 0:
            raise InvalidPath(f"{path!r} is a link that leaves the package or names no file", field="path")
        return entry

    def open(self, entry: FileEntry, start: int, length: int) -> ByteStream:
        return open_entry(self.package, self.index, entry, start, length)


@dataclass(frozen=True, slots=True)
class IndexLimits:
    max_files: int
    max_bytes: int


# -- request paths ----------------------------------------------------------------------------------------


def check_request_path(path: str, raw_tail: str) -> str:
    """The package path a request names, or ``InvalidPath``: ``raw_tail`` is the still percent-encoded
    part of the URL after ``/files/``, where an encoded slash or backslash would hide a path separator."""
    lowered = raw_tail.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise InvalidPath("encoded slashes are not allowed in a file path; send '/' as is", field="path")
    if not path or len(path) > MAX_PATH_CHARS:
        raise InvalidPath(f"a file path has 1 to {MAX_PATH_CHARS} characters", field="path")
    if "\x00" in path or "\\" in path:
        raise InvalidPath("a file path may not hold a NUL byte or a backslash", field="path")
    if path.startswith("/"):
        raise InvalidPath("a file path is relative to the package; it may not start with '/'", field="path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidPath("a file path may not hold empty, '.' or '..' components", field="path")
    return path


# -- indexing ---------------------------------------------------------------------------------------------


def _member_path(raw: str) -> str:
    """A member name as the builder extracts it; refuse what it would have refused."""
    if "\x00" in raw or "\\" in raw or raw.startswith("/"):
        raise UnsafePackage(f"member {raw!r} has an unsafe name")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePackage(f"member {raw!r} has a '..' path component")
    return "/".join(parts)


def compression_of(package: Path) -> Compression:
    with package.open("rb") as handle:
        head = handle.read(6)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "")


class _Budget:
    def __init__(self, limits: IndexLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0

    def count(self, size: int) -> None:
        self.files += 1
        self.bytes += max(size, 0)
        if self.files > self.limits.max_files or self.bytes > self.limits.max_bytes:
            raise PayloadTooLarge("the package holds more files or bytes than this registry indexes")


def _digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def _index_tar(package: Path, budget: _Budget) -> list[FileEntry]:
    entries: dict[str, FileEntry] = {}
    links: dict[str, str] = {}
    with tarfile.open(package, mode="r|*") as archive:  # one forward pass, compressed or not
        for member in archive:
            path = _member_path(member.name)
            if member.issym():
                links[path] = member.linkname
            elif member.islnk():
                target = entries.get(_member_path(member.linkname))
                if target is not None:
                    entries[path] = msgspec.structs.replace(target, path=path)
            elif member.isreg() and not member.issparse():
                budget.count(member.size)
                handle = archive.extractfile(member)
                sha = _digest(handle) if handle is not None else hashlib.sha256().hexdigest()
                entries[path] = FileEntry(path=path, size=member.size, sha256=sha, offset=member.offset_data)
    return _with_links(entries, links)


def _index_zip(package: Path, budget: _Budget) -> list[FileEntry]:
    entries: dict[str, FileEntry] = {}
    links: dict[str, str] = {}
    with zipfile.ZipFile(package) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            path = _member_path(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                links[path] = archive.read(info)[:MAX_PATH_CHARS].decode("utf-8", "replace")
                continue
            budget.count(info.file_size)
            with archive.open(info) as handle:
                sha = _digest(handle)
            entries[path] = FileEntry(path=path, size=info.file_size, sha256=sha, member=info.filename)
    return _with_links(entries, links)


def _resolve(path: str, links: dict[str, str]) -> str | None:
    """Follow ``path`` through links lexically; None when it leaves the package or loops."""
    for _ in range(MAX_LINK_HOPS):
        target = links.get(path)
        if target is None:
            return path
        if target.startswith("/") or "\x00" in target or "\\" in target:
            return None
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if joined == ".." or joined.startswith("../") or joined == ".":
            return None
        path = joined
    return None


def _with_links(entries: dict[str, FileEntry], links: dict[str, str]) -> list[FileEntry]:
    out = list(entries.values())
    for path in links:
        resolved = _resolve(path, links)
        target = entries.get(resolved) if resolved is not None else None
        if target is None:
            out.append(FileEntry(path=path, size=-1))
        else:
            out.append(msgspec.structs.replace(target, path=path, link=target.path))
    return sorted(out, key=lambda entry: entry.path)


def build_index(package: Path, archive: Literal["tar", "zip"], limits: IndexLimits) -> PackageIndex:
    """Index ``package`` (blocking: hashes every file once)."""
    budget = _Budget(limits)
    compression: Compression = ""
    try:
        if archive == "zip":
            files = _index_zip(package, budget)
        else:
            files, compression = _index_tar(package, budget), compression_of(package)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a disk error, not a bad archive
        raise UnsafePackage(f"the stored package cannot be read: {exc}") from None
    return PackageIndex(format=INDEX_FORMAT, archive=archive, compression=compression, files=files)


_index_encoder = msgspec.json.Encoder()
_index_decoder = msgspec.json.Decoder(PackageIndex)


def load_or_build_index(package: Path, archive: Literal["tar", "zip"], limits: IndexLimits) -> PackageIndex:
    """The stored index of ``package``, else a new one, stored (atomically) for next time."""
    index_path = package.with_name(package.name.removesuffix(".bin") + INDEX_SUFFIX)
    try:
        index = _index_decoder.decode(index_path.read_bytes())
        if index.format == INDEX_FORMAT:
            return index
    except (OSError, msgspec.DecodeError):
        pass
    index = build_index(package, archive, limits)
    temp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    try:
        temp.write_bytes(_index_encoder.encode(index))
        os.replace(temp, index_path)
    finally:
        temp.unlink(missing_ok=True)
    return index


# -- reading ----------------------------------------------------------------------------------------------


def _open_compressed(package: Path, compression: Compression) -> IO[bytes]:
    if compression == "gz":
        return cast(IO[bytes], gzip.open(package, "rb"))
    if compression == "bz2":
        return bz2.open(package, "rb")
    if compression == "xz":
        return lzma.open(package, "rb")
    return package.open("rb")


class ByteStream:
    """``length`` bytes of an open file-like object in chunks (blocking: call ``next_chunk`` in a thread)."""

    def __init__(self, handle: IO[bytes], length: int, closers: tuple[IO[bytes] | zipfile.ZipFile, ...] = ()):
        self._handle = handle
        self._left = length
        self._closers = closers

    def next_chunk(self) -> bytes:
        """The next chunk; b"" once ``length`` bytes were read. A short read means the package is broken."""
        if self._left <= 0:
            return b""
        chunk = self._handle.read(min(CHUNK_BYTES, self._left))
        if not chunk:
            raise UnsafePackage("the stored package ended before the file did")
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._handle.close()
        for closer in self._closers:
            closer.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.next_chunk():
            yield chunk


def open_entry(package: Path, index: PackageIndex, entry: FileEntry, start: int, length: int) -> ByteStream:
    """Bytes ``[start, start + length)`` of ``entry`` (blocking)."""
    if index.archive == "zip":
        archive = zipfile.ZipFile(package)
        try:
            handle: IO[bytes] = archive.open(entry.member)
            if start:
                handle.seek(start)  # a compressed member decompresses up to here in bounded chunks
        except BaseException:
            archive.close()
            raise
        return ByteStream(handle, length, (archive,))
    handle = _open_compressed(package, index.compression)
    try:
        handle.seek(entry.offset + start)
    except BaseException:
        handle.close()
        raise
    return ByteStream(handle, length)


def open_range(path: Path, start: int, length: int) -> ByteStream:
    """Bytes ``[start, start + length)`` of a file on disk (the whole package)."""
    handle = path.open("rb")
    try:
        handle.seek(start)
    except BaseException:
        handle.close()
        raise
    return ByteStream(handle, length)


# -- the registry's view ----------------------------------------------------------------------------------


class PackageFiles:
    """Indexes of stored packages, built on first use (once, however many requests ask at the same time)
    and kept for the ``max_cached`` packages used last."""

    def __init__(self, blobs: PackageBlobs, limits: IndexLimits, *, max_cached: int = 64) -> None:
        self._blobs = blobs
        self._limits = limits
        self._max_cached = max_cached
        self._cache: dict[str, IndexedPackage] = {}
        self._building: dict[str, asyncio.Future[IndexedPackage]] = {}

    def package_path(self, sha256: str) -> Path:
        return self._blobs.path(sha256)

    async def indexed(self, sha256: str) -> IndexedPackage:
        cached = self._cache.pop(sha256, None)
        if cached is not None:
            self._cache[sha256] = cached  # most recently used last
            return cached
        pending = self._building.get(sha256)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[IndexedPackage] = asyncio.get_running_loop().create_future()
        self._building[sha256] = future
        try:
            indexed = await asyncio.to_thread(self._load, sha256)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(indexed)
        finally:
            del self._building[sha256]
        self._cache[sha256] = indexed
        while len(self._cache) > self._max_cached:
            del self._cache[next(iter(self._cache))]
        return indexed

    def _load(self, sha256: str) -> IndexedPackage:
        package = self._blobs.path(sha256)
        if not package.is_file():
            raise NotFound("the version's package is no longer stored")
        # By its bytes, as the builder decides: the stored format follows the upload's file name, and the
        # SDK names every package .tar.gz, a zip passed as ``package=`` included.
        with package.open("rb") as handle:
            archive: Literal["tar", "zip"] = "zip" if handle.read(4) in ZIP_MAGIC else "tar"
        return IndexedPackage(package, load_or_build_index(package, archive, self._limits))
