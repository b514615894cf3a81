"""Reading requests: the caller, path arguments, JSON and msgpack bodies, multipart uploads."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from dlhub.common.codec import decode_body
from dlhub.common.errors import DLHubError, PayloadTooLarge, ValidationFailed
from dlhub.common.nesting import json_too_deep, msgpack_too_deep
from dlhub.registry.auth import Caller
from dlhub.registry.http.keys import AUTH, LIMITER, SETTINGS
from dlhub.registry.http.response import MSGPACK_TYPES

T = TypeVar("T")

_PATH_RE = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING_RE = re.compile(
    r"^Object missing required field `(?P<name>[^`]*)`(?: - at `\$\.?(?P<path>[^`]*)`)?$"
)
CHUNK_BYTES = 1024 * 1024
FORM = "application/x-www-form-urlencoded"


async def caller_of(request: web.Request) -> Caller:
    """Who is asking, from the ``Authorization`` header (anonymous without one; 401 when it is invalid);
    429 when the caller is over its rate limit (``auth.rate_limit``)."""
    caller = await request.app[AUTH].authenticate(request.headers.get("Authorization"))
    limiter = request.app.get(LIMITER)
    if limiter is not None:
        limiter.check(caller, request.remote)
    return caller


def version_of(request: web.Request) -> int:
    """The ``{version}`` path argument: the route only matches digits, and numbering starts at 1."""
    version = int(request.match_info["version"])
    if version < 1:
        raise ValidationFailed("version numbers start at 1", field="version")
    return version


def field_of(error: msgspec.ValidationError) -> str | None:
    """The path msgspec names in a validation error (``inputs``, ``steps[0].servable``), if any."""
    message = str(error)
    missing = _MISSING_RE.match(message)
    if missing:
        prefix = missing.group("path")
        return f"{prefix}.{missing.group('name')}" if prefix else missing.group("name")
    match = _PATH_RE.search(message)
    return match.group("path") if match and match.group("path") else None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _nesting_limit(request: web.Request) -> int:
    return request.app[SETTINGS].registry.max_body_nesting


def _too_deep(limit: int, what: str = "the request body") -> ValidationFailed:
    return ValidationFailed(
        f"{what} nests arrays and objects deeper than the limit of {limit} levels (registry.max_body_nesting)"
    )


def check_json_nesting(body: bytes, limit: int, *, what: str = "the request body") -> None:
    """Refuse (400) a JSON body nested deeper than ``limit`` before a recursive decoder sees it."""
    if json_too_deep(body, limit):
        raise _too_deep(limit, what)


def _check_length(request: web.Request, max_bytes: int) -> None:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the request body of {length} bytes exceeds the limit of {max_bytes} bytes")


async def read_json_bytes(request: web.Request, *, max_bytes: int) -> bytes:
    """Return the raw JSON body after checking its content type and size.

    ``curl -d`` labels a body ``application/x-www-form-urlencoded`` unless told otherwise; such a body is
    taken as JSON when it parses as JSON, since a JSON endpoint has no use for form fields.
    """
    form = request.content_type == FORM
    if not (form or _is_json(request.content_type)):
        raise ValidationFailed(
            f"expected Content-Type application/json, got {request.content_type or 'none'}",
            field="Content-Type",
        )
    _check_length(request, max_bytes)
    body = await request.read()
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")
    if not body.strip():
        raise ValidationFailed("the request body is empty; expected a JSON object")
    if form and not _parses_as_json(body):
        raise ValidationFailed(
            f"expected Content-Type application/json, got {FORM} with a body that is not JSON",
            field="Content-Type",
        )
    check_json_nesting(body, _nesting_limit(request))
    return body


def _parses_as_json(body: bytes) -> bool:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


async def read_run_body(request: web.Request, type_: type[T], *, max_bytes: int) -> T:
    """A run request's body as ``type_``, from JSON or msgpack (NumPy arrays as the extension type, which
    spares both sides converting large arrays to and from text)."""
    if request.content_type not in MSGPACK_TYPES:
        return decode_json(await read_json_bytes(request, max_bytes=max_bytes), type_)
    _check_length(request, max_bytes)
    body = await request.read()
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")
    if not body:
        raise ValidationFailed("the request body is empty; expected a msgpack map")
    limit = _nesting_limit(request)
    if msgpack_too_deep(body, limit):
        raise _too_deep(limit)
    try:
        return decode_body(body, type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"invalid request body: {exc}", field=field_of(exc)) from None
    except (msgspec.DecodeError, DLHubError) as exc:
        raise ValidationFailed(f"malformed msgpack in the request body: {exc}") from None
    except RecursionError:  # not reached past the scan above; kept so depth can never be a 500
        raise _too_deep(limit) from None
    except (ValueError, TypeError) as exc:  # an ndarray extension whose header does not fit its buffer
        raise ValidationFailed(f"malformed ndarray in the request body: {exc}") from None


def decode_json(body: bytes, type_: type[T], *, what: str = "request body") -> T:
    """Decode JSON into ``type_``; malformed or mistyped input raises a 400 naming the field."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"invalid {what}: {exc}", field=field_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"malformed JSON in the {what}: {exc}") from None
    except RecursionError:  # the callers scan the depth first; kept so depth can never be a 500
        raise ValidationFailed(f"the {what} nests arrays and objects too deeply") from None


async def _read_part(part: BodyPartReader, *, max_bytes: int, used: int) -> bytes:
    chunks: list[bytes] = []
    total = used
    while chunk := await part.read_chunk(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"the upload exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Upload(msgspec.Struct, kw_only=True):
    metadata: Any
    package: bytes | None
    filename: str | None


async def read_upload(request: web.Request, *, max_bytes: int, max_metadata_bytes: int) -> Upload:
    """Read a multipart publication: a ``metadata`` JSON part and an optional ``package`` file part."""
    if request.content_type != "multipart/form-data":
        raise ValidationFailed(
            f"expected Content-Type multipart/form-data, got {request.content_type or 'none'}",
            field="Content-Type",
        )
    _check_length(request, max_bytes)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise ValidationFailed(f"malformed multipart body: {exc}") from None
    metadata_bytes: bytes | None = None
    package: bytes | None = None
    filename: str | None = None
    used = 0
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationFailed("nested multipart bodies are not supported")
            if part.name == "metadata":
                metadata_bytes = await _read_part(
                    part, max_bytes=min(max_bytes, used + max_metadata_bytes), used=used
                )
                used += len(metadata_bytes)
            elif part.name == "package":
                package = await _read_part(part, max_bytes=max_bytes, used=used)
                used += len(package)
                filename = part.filename
            else:  # the form is closed (as documented): a misspelt part name is an error, not ignored
                raise ValidationFailed(
                    f"unexpected multipart part {part.name!r}: expected 'metadata' and 'package'",
                    field=part.name or "multipart",
                )
    except (ValueError, HttpProcessingError) as exc:  # e.g. a part header aiohttp cannot parse
        raise ValidationFailed(f"malformed multipart body: {exc}") from None
    if metadata_bytes is None:
        raise ValidationFailed("the multipart body has no 'metadata' part", field="metadata")
    check_json_nesting(metadata_bytes, _nesting_limit(request), what="the metadata part")
    try:
        metadata = msgspec.json.decode(metadata_bytes)
    except RecursionError:
        raise ValidationFailed("the metadata part nests too deeply", field="metadata") from None
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"malformed JSON in the metadata part: {exc}", field="metadata") from None
    return Upload(metadata=metadata, package=package, filename=filename)
