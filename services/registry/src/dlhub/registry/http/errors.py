"""Turn every failure into the JSON error shape of docs/api.md.

``DLHubError`` keeps its code and status; aiohttp's own HTTP errors (unknown route, wrong method, body over
``client_max_size``) get a code from their status; anything unexpected becomes a 500 that names a request id
and is logged with it, without leaking internals to the caller.
"""

from __future__ import annotations

import errno
import math
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from dlhub.common.errors import DLHubError, StorageFull
from dlhub.common.ids import new_id
from dlhub.common.logging import get_logger
from dlhub.registry.metrics import RequestStats, route_of

log = get_logger(__name__)

_encoder = msgspec.json.Encoder()

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

HTTP_ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    503: "service_unavailable",
}


def error_response(
    status: int, error: dict[str, Any], *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encoder.encode({"error": error}),
        content_type="application/json",
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    error_type = HTTP_ERROR_TYPES.get(exc.status, "http_error")
    if exc.status == 413:
        message = "the request body is larger than this registry accepts"
    elif exc.status == 404:
        message = "no such resource"
    elif exc.status == 405:
        message = "method not allowed on this resource"
    else:
        message = exc.reason
    headers: dict[str, str] = {}
    if "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    return error_response(exc.status, {"type": error_type, "message": message}, headers=headers)


async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DLHubError as exc:
        if exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
            return error_response(exc.http_status, exc.to_dict(), headers=headers)
        return error_response(exc.http_status, exc.to_dict())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            return _internal_error(request)
        log.warning("disk full", method=request.method, path=request.path, error=str(exc))
        full = StorageFull("no space left on the registry's data disk; retry once space is freed")
        return error_response(full.http_status, full.to_dict())
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    request_id = new_id()
    log.exception("unhandled error", request_id=request_id, method=request.method, path=request.path)
    return error_response(
        500,
        {"type": "internal_error", "message": f"internal server error (request id {request_id})"},
        headers={"X-Request-ID": request_id},
    )


def error_middleware(requests: RequestStats | None = None) -> Middleware:
    """The one middleware: every failure as the JSON envelope and, with ``requests``, each answer counted.

    Recording lives here rather than in a middleware of its own because each aiohttp middleware layer costs a
    partial and a coroutine per request, as much as the recording itself on the noop path.
    """
    if requests is None:
        return web.middleware(_answer_errors)
    record = requests.record
    clock = time.perf_counter

    @web.middleware
    async def recording_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        try:
            response = await _answer_errors(request, handler)
        except web.HTTPException as exc:  # a redirect: passed on for aiohttp to send
            record(request.method, route_of(request), exc.status, clock() - started)
            raise
        record(request.method, route_of(request), response.status, clock() - started)
        return response

    return recording_error_middleware
