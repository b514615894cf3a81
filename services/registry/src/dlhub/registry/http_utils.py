"""Small request/response helpers shared by the handlers: JSON bodies, multipart uploads, query values."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from dlhub.common.codec import decode_body
from dlhub.common.errors import DLHubError, PayloadTooLarge, ValidationFailed

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
CHUNK_BYTES = 1024 * 1024


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encoder.encode(data), content_type="application/json")


def raw_json_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})


def raw_msgpack_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=MSGPACK)


def wants_msgpack(request: web.Request) -> bool:
    """Whether the client asked for a msgpack answer (``Accept: application/msgpack``)."""
    accept = request.headers.get("Accept", "")
    return "msgpack" in accept and any(kind in accept for kind in MSGPACK_TYPES)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _check_length(request: web.Request, max_bytes: int) -> None:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the request body of {length} bytes exceeds the limit of {max_bytes} bytes")


async def read_json_bytes(request: web.Request, *, max_bytes: int) -> bytes:
    """Return the raw JSON body after checking its content type and size."""
    if not _is_json(request.content_type):
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
    return body


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
    try:
        return decode_body(body, type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        field = match.group("path") if match and match.group("path") else None
        raise ValidationFailed(f"invalid request body: {message}", field=field) from None
    except (msgspec.DecodeError, DLHubError) as exc:
        raise ValidationFailed(f"malformed msgpack in the request body: {exc}") from None
    except (ValueError, TypeError) as exc:  # an ndarray extension whose header does not fit its buffer
        raise ValidationFailed(f"malformed ndarray in the request body: {exc}") from None


def decode_json(body: bytes, type_: type[T], *, what: str = "request body") -> T:
    """Decode JSON into ``type_``; malformed or mistyped input raises a 400 naming the field."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        field = match.group("path") if match and match.group("path") else None
        raise ValidationFailed(f"invalid {what}: {message}", field=field) from None
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"malformed JSON in the {what}: {exc}") from None


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
            else:
                await part.release()
    except (ValueError, HttpProcessingError) as exc:  # e.g. a part header aiohttp cannot parse
        raise ValidationFailed(f"malformed multipart body: {exc}") from None
    if metadata_bytes is None:
        raise ValidationFailed("the multipart body has no 'metadata' part", field="metadata")
    try:
        metadata = msgspec.json.decode(metadata_bytes)
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"malformed JSON in the metadata part: {exc}", field="metadata") from None
    return Upload(metadata=metadata, package=package, filename=filename)


def int_query(request: web.Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer, got {text!r}", field=name) from None
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", field=name)
    return value


def str_query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value else None


def choice_query(request: web.Request, name: str, choices: Sequence[str]) -> str | None:
    """One of ``choices`` or None when absent; anything else is a 400 naming the parameter."""
    value = str_query(request, name)
    if value is not None and value not in choices:
        raise ValidationFailed(f"{name} must be one of {', '.join(choices)}, got {value!r}", field=name)
    return value


def list_query(request: web.Request, name: str, choices: Sequence[str]) -> list[str]:
    """A comma-separated subset of ``choices`` (order kept, duplicates dropped); 400 on unknown values."""
    text = request.query.get(name, "")
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ValidationFailed(
            f"{name}: unknown value(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(choices)}",
            field=name,
        )
    return list(dict.fromkeys(values))


def time_query(request: web.Request, name: str, *, end_of_day: bool = False) -> float | None:
    """Epoch seconds from an ISO 8601 date or date-time (UTC unless it has an offset) or a number.

    A date without a time means the start of that day (UTC), or its last millisecond with ``end_of_day``,
    so ``published_to=2024-05-31`` includes the whole of May 31st.
    """
    text = (request.query.get(name) or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValidationFailed(f"{name} must be finite epoch seconds, got {text!r}", field=name)
        return seconds
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if end_of_day:
            start += timedelta(days=1, milliseconds=-1)
        return start.timestamp()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an ISO 8601 date or date-time (2024-05-31, 2024-05-31T12:00:00Z) or epoch "
            f"seconds, got {text!r}",
            field=name,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
