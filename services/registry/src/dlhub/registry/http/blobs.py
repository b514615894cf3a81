"""Blob endpoints: upload a file to pass as a ``{"blob": id}`` input, inspect or delete it, and the signed
download workers use (``dlhub.registry.blobs``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from msgspec import UNSET

from dlhub.common.errors import PayloadTooLarge, ValidationFailed
from dlhub.registry.blobs import BlobInfo, BlobStore, blob_store
from dlhub.registry.clock import iso_ms
from dlhub.registry.http.contract import Blob, BlobDeleted, BlobUploadQuery
from dlhub.registry.http.keys import AUTH, SETTINGS
from dlhub.registry.http.query import parse_query
from dlhub.registry.http.request import CHUNK_BYTES, caller_of
from dlhub.registry.http.response import json_response

MULTIPART_OVERHEAD_BYTES: Final = 64 * 1024


def _store(request: web.Request) -> BlobStore:
    return blob_store(request.app[SETTINGS])


def blob_body(info: BlobInfo) -> Blob:
    return Blob(
        blob_id=info.blob_id,
        size=info.size,
        sha256=info.sha256,
        filename=info.filename,
        content_type=info.content_type,
        created_at=iso_ms(info.created_at_ms),
        expires_at=iso_ms(info.expires_at_ms),
    )


async def _chunks_of(source: web.Request | BodyPartReader) -> AsyncIterator[bytes]:
    if isinstance(source, BodyPartReader):
        while chunk := await source.read_chunk(CHUNK_BYTES):
            yield chunk
        return
    async for chunk in source.content.iter_chunked(CHUNK_BYTES):
        yield chunk


async def _file_part(request: web.Request) -> tuple[MultipartReader, BodyPartReader]:
    """The reader and its ``file`` part; the form is closed (as documented), so any other part is a 400
    rather than silently dropped."""
    try:
        reader = await request.multipart()
        part = await reader.next()
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise ValidationFailed(f"malformed multipart body: {exc}") from None
    if isinstance(part, BodyPartReader) and part.name == "file":
        return reader, part
    if part is None:
        raise ValidationFailed("the multipart body has no 'file' part", field="file")
    name = part.name if isinstance(part, BodyPartReader) else None
    raise ValidationFailed(f"unexpected multipart part {name!r}: expected 'file'", field="file")


async def _check_no_more_parts(reader: MultipartReader, store: BlobStore, blob_id: str) -> None:
    """A part after ``file``: the upload is refused and the blob just saved from it removed."""
    try:
        extra = await reader.next()
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        await store.remove(blob_id)
        raise ValidationFailed(f"malformed multipart body: {exc}") from None
    if extra is not None:
        await store.remove(blob_id)
        name = extra.name if isinstance(extra, BodyPartReader) else None
        raise ValidationFailed(f"unexpected multipart part {name!r} after 'file'", field="file")


async def upload(request: web.Request) -> web.Response:
    """POST /blobs: the raw body (``?filename=`` optional) or a multipart ``file`` part -> 201."""
    user = await _uploader(request)
    query = parse_query(request, BlobUploadQuery)
    store = _store(request)
    multipart = request.content_type == "multipart/form-data"
    length = request.content_length
    if not multipart and not request.body_exists:
        # The body is required: an upload with none is a mistake, not an empty file.
        raise ValidationFailed("the request body is empty; expected the file's bytes", field="body")
    # Fail before reading when the body is surely too large; the stream is counted exactly in any case.
    if length is not None and length > store.max_bytes + (MULTIPART_OVERHEAD_BYTES if multipart else 0):
        raise PayloadTooLarge(f"the blob of {length} bytes exceeds the limit of {store.max_bytes} bytes")
    try:
        if multipart:
            reader, part = await _file_part(request)
            filename, content_type = part.filename, part.headers.get("Content-Type")
            info = await store.save(user, _chunks_of(part), filename=filename, content_type=content_type)
            await _check_no_more_parts(reader, store, info.blob_id)
        else:
            filename, content_type = None if query.filename is UNSET else query.filename, request.content_type
            info = await store.save(user, _chunks_of(request), filename=filename, content_type=content_type)
    except (ValueError, HttpProcessingError) as exc:  # a part that breaks off, a malformed chunked body
        raise ValidationFailed(f"malformed upload body: {exc}") from None
    return json_response(blob_body(info), status=201)


async def _uploader(request: web.Request) -> str:
    caller = await caller_of(request)
    return request.app[AUTH].require_user(caller)


async def describe(request: web.Request) -> web.Response:
    """GET /blobs/{blob_id}: the caller's own blob (404 otherwise)."""
    caller = await caller_of(request)
    request.app[AUTH].require_user(caller)
    info = await _store(request).owned(caller, request.match_info["blob_id"])
    return json_response(blob_body(info))


async def delete(request: web.Request) -> web.Response:
    """DELETE /blobs/{blob_id}: remove the caller's blob before it expires."""
    caller = await caller_of(request)
    request.app[AUTH].require_user(caller)
    store = _store(request)
    info = await store.owned(caller, request.match_info["blob_id"])
    await store.remove(info.blob_id)
    return json_response(BlobDeleted(deleted=info.blob_id))


async def content(request: web.Request) -> web.StreamResponse:
    """GET /blobs/{blob_id}/content?expires=&sig=: the bytes, for whoever holds the signed URL (no token)."""
    store = _store(request)
    blob_id = request.match_info["blob_id"]
    # The signature check names what is wrong (403); the typed parse only documents the parameters.
    store.check_signature(blob_id, request.query.get("expires"), request.query.get("sig"))
    info = await store.existing(blob_id)
    headers = {"Content-Type": info.content_type}
    if info.filename:
        headers["Content-Disposition"] = f'attachment; filename="{info.filename}"'
    return web.FileResponse(store.data_path(blob_id), headers=headers)
