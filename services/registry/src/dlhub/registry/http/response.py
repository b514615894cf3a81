"""Writing answers: typed structs (and the odd raw body) as JSON or msgpack."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

_encoder = msgspec.json.Encoder()


def json_response(data: msgspec.Struct | Any, *, status: int = 200) -> web.Response:
    """Encode ``data`` (normally a ``contract`` struct) as the JSON body."""
    return web.Response(status=status, body=_encoder.encode(data), content_type=JSON)


def raw_json_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


def raw_msgpack_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=MSGPACK)


def wants_msgpack(request: web.Request) -> bool:
    """Whether the client asked for a msgpack answer (``Accept: application/msgpack``)."""
    accept = request.headers.get("Accept", "")
    return "msgpack" in accept and any(kind in accept for kind in MSGPACK_TYPES)
