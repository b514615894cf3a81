"""Files back out: a version's file list, one file, or its whole package as uploaded.

Every download is conditional and resumable the same way: a strong ``ETag`` (the sha256 of the bytes, so
it is the same on every registry and for every version holding the same file), ``If-None-Match`` -> 304,
one ``Range`` -> 206 (416 when it starts past the end; ``If-Range`` with another ETag serves the whole
file), and ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530: the digest of the whole file, also on a 206) for
the client to verify what it stored. Bytes are read from the stored package in chunks off the event loop
(``package_files``), never loaded whole.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from aiohttp import web

from dlhub.common.errors import NotFound, RangeNotSatisfiable
from dlhub.common.logging import get_logger
from dlhub.registry.blobs import blob_store
from dlhub.registry.dataset_files import PackageFileSigner
from dlhub.registry.http.contract import ArchiveFormat, FileList, PackageArchive, PackageFile
from dlhub.registry.http.errors import error_response
from dlhub.registry.http.keys import FILES, SERVABLES, SETTINGS
from dlhub.registry.http.request import caller_of, version_of
from dlhub.registry.http.response import json_response
from dlhub.registry.package_files import ByteStream, IndexedPackage, check_request_path, open_range
from dlhub.registry.store import VersionRecord
from dlhub.registry.urls import API_PREFIX

log = get_logger(__name__)

REPR_DIGEST: Final = "Repr-Digest"
FILES_MARKER: Final = "/files/"
_RANGE = re.compile(r"bytes=(\d{0,20})-(\d{0,20})", re.ASCII | re.IGNORECASE)
_ARCHIVE_TYPES: Final[dict[ArchiveFormat, tuple[str, str]]] = {
    "zip": ("application/zip", ".zip"),
    "tar": ("application/x-tar", ".tar"),
    "tar.gz": ("application/gzip", ".tar.gz"),
    "tar.bz2": ("application/x-bzip2", ".tar.bz2"),
    "tar.xz": ("application/x-xz", ".tar.xz"),
}


@dataclass(frozen=True, slots=True)
class Download:
    """What one download sends: the bytes (opened on demand), their digest, size and names."""

    sha256: str
    size: int
    content_type: str
    filename: str
    location: str
    open: Callable[[int, int], ByteStream]
    """Blocking: bytes [start, start + length)."""


# -- the version --------------------------------------------------------------------------------------------


async def _version(request: web.Request) -> VersionRecord:
    caller = await caller_of(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    version = version_of(request) if "version" in request.match_info else None
    return await request.app[SERVABLES].downloadable(caller, owner, name, version)


async def _indexed(request: web.Request, record: VersionRecord) -> IndexedPackage | None:
    if not record.package_sha256:
        return None  # a pipeline, or a version published without files
    return await request.app[FILES].indexed(record.package_sha256)


def _version_url(record: VersionRecord) -> str:
    return f"{API_PREFIX}/servables/{record.owner}/{record.name}/versions/{record.version}"


_TAR_FORMATS: Final[dict[str, ArchiveFormat]] = {
    "": "tar",
    "gz": "tar.gz",
    "bz2": "tar.bz2",
    "xz": "tar.xz",
}


def archive_format(indexed: IndexedPackage) -> ArchiveFormat:
    if indexed.index.archive == "zip":
        return "zip"
    return _TAR_FORMATS[indexed.index.compression]


def _archive(record: VersionRecord, indexed: IndexedPackage) -> PackageArchive:
    fmt = archive_format(indexed)
    return PackageArchive(
        sha256=record.package_sha256,
        size=indexed.package.stat().st_size,
        format=fmt,
        filename=f"{record.owner}-{record.name}-{record.version}{_ARCHIVE_TYPES[fmt][1]}",
    )


# -- handlers -----------------------------------------------------------------------------------------------


async def list_files(request: web.Request) -> web.Response:
    """GET .../files: every file of the version with its size and sha256."""
    record = await _version(request)
    indexed = await _indexed(request, record)
    entries = indexed.served() if indexed is not None else []
    files = [
        PackageFile(path=e.path, size=e.size, sha256=e.sha256, **({"link": e.link} if e.link else {}))
        for e in entries
    ]
    listing = FileList(
        owner=record.owner,
        name=record.name,
        version=record.version,
        shorthand_name=record.shorthand_name,
        package=await asyncio.to_thread(_archive, record, indexed) if indexed is not None else None,
        total_bytes=sum(e.size for e in entries),
        files=files,
    )
    response = json_response(listing)
    response.headers["Content-Location"] = _version_url(record) + "/files"
    return response


async def get_file(request: web.Request) -> web.StreamResponse:
    """GET .../files/{path}: one file's bytes."""
    raw_path = request.rel_url.raw_path
    raw_tail = raw_path[raw_path.find(FILES_MARKER) + len(FILES_MARKER) :]
    path = check_request_path(request.match_info["path"], raw_tail)  # before any lookup: nothing leaks
    record = await _version(request)
    indexed = await _indexed(request, record)
    if indexed is None:
        raise NotFound(f"{record.label} has no files")
    entry = indexed.find(path)
    content_type = mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"
    download = Download(
        sha256=entry.sha256,
        size=entry.size,
        content_type=content_type,
        filename=path.rsplit("/", 1)[-1],
        location=f"{_version_url(record)}/files/{quote(path, safe='/')}",
        open=lambda start, length: indexed.open(entry, start, length),
    )
    return await send(request, download)


async def get_signed_package_file(request: web.Request) -> web.StreamResponse:
    """GET /packages/{sha256}/files/{path}?expires=&sig=: one file of a stored package, for whoever holds
    the signed URL a dataset job handed a worker (no token; ``dataset_files``)."""
    sha256, path = request.match_info["sha256"], request.match_info["path"]
    signer = PackageFileSigner(blob_store(request.app[SETTINGS]))
    # The signature first: without one nothing about the package, not even a path's validity, is answered.
    signer.check(sha256, path, request.query.get("expires"), request.query.get("sig"))
    raw_path = request.rel_url.raw_path
    check_request_path(path, raw_path[raw_path.find(FILES_MARKER) + len(FILES_MARKER) :])
    indexed = await request.app[FILES].indexed(sha256)
    entry = indexed.find(path)
    download = Download(
        sha256=entry.sha256,
        size=entry.size,
        content_type=mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream",
        filename=path.rsplit("/", 1)[-1],
        location=request.rel_url.path,
        open=lambda start, length: indexed.open(entry, start, length),
    )
    return await send(request, download)


async def get_package(request: web.Request) -> web.StreamResponse:
    """GET .../package: the package exactly as it was uploaded."""
    record = await _version(request)
    indexed = await _indexed(request, record)
    if indexed is None:
        raise NotFound(f"{record.label} was published without a package")
    archive = await asyncio.to_thread(_archive, record, indexed)
    package = indexed.package
    download = Download(
        sha256=archive.sha256,
        size=archive.size,
        content_type=_ARCHIVE_TYPES[archive.format][0],
        filename=archive.filename,
        location=_version_url(record) + "/package",
        open=lambda start, length: open_range(package, start, length),
    )
    return await send(request, download)


# -- conditional and partial answers ------------------------------------------------------------------------


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, length)`` of a single ``Range`` header, or None to send the whole file (no header, or one
    this server ignores as RFC 9110 allows: several ranges, another unit, bad syntax). 416 when it starts
    at or past the end (every range of an empty file does)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = int(match[2]) if match[2] else None
        if end is not None and end < start:
            return None  # an invalid range-spec is ignored, not refused
        if start >= size:
            raise RangeNotSatisfiable(f"the range starts at byte {start}; the file has {size} bytes")
        last = size - 1 if end is None else min(end, size - 1)
        return start, last - start + 1
    suffix = int(match[2])
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable(f"the range asks for the last {suffix} bytes of a {size}-byte file")
    start = max(size - suffix, 0)
    return start, size - start


def _none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for this header)."""
    if header is None:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _disposition(filename: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def send(request: web.Request, download: Download) -> web.StreamResponse:
    """Answer a download: 304, 416, 206 or 200, streamed in chunks read off the event loop."""
    etag = f'"{download.sha256}"'
    digest = base64.b64encode(bytes.fromhex(download.sha256)).decode("ascii")
    headers = {
        "ETag": etag,
        REPR_DIGEST: f"sha-256=:{digest}:",
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",  # caches may keep it, but ask again: visibility can change
        "Content-Location": download.location,
    }
    if _none_match(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    ranged = request.headers.get("If-Range") in (None, etag)  # another ETag: the file changed, send it all
    try:
        wanted = byte_range(request.headers.get("Range"), download.size) if ranged else None
    except RangeNotSatisfiable as exc:
        headers["Content-Range"] = f"bytes */{download.size}"
        return error_response(exc.http_status, exc.to_dict(), headers=headers)
    start, length = wanted if wanted is not None else (0, download.size)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{download.size}"
    headers |= {
        "Content-Type": download.content_type,
        "Content-Disposition": _disposition(download.filename),
        "X-Content-Type-Options": "nosniff",  # a package's HTML is never rendered as this API's page
    }
    head = request.method == "HEAD"
    # Opened before the answer starts, so a package that cannot be read still answers as a JSON error.
    stream = None if head or length == 0 else await asyncio.to_thread(download.open, start, length)
    response = web.StreamResponse(status=206 if wanted is not None else 200, headers=headers)
    response.content_length = length
    try:
        await response.prepare(request)
        while stream is not None and (chunk := await asyncio.to_thread(stream.next_chunk)):
            await response.write(chunk)
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away
    except Exception as exc:
        # Past the headers no error envelope can follow: cut the connection so the client sees a short body
        # (fewer bytes than Content-Length) rather than a complete-looking file.
        log.error("download broke off", location=download.location, error=type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        if stream is not None:
            await asyncio.to_thread(stream.close)
    await response.write_eof()
    return response
