"""The registry's HTTP connections: hostile or broken clients get the JSON error shape, and bounded resources.

aiohttp's parser rejects an oversize request line or header, or a malformed request, before any middleware
runs, and its ``RequestHandler.handle_error`` writes a text/plain page. ``GuardedProtocol`` overrides that
hook to answer the JSON error envelope of docs/api.md, closes a connection that has not delivered its first
request's headers within ``header_read_timeout_s`` (aiohttp's keep-alive timer, armed at connect, bounds the
idle time between requests), and answers 503 to a connection past ``max_connections``.

Graceful stop (SIGTERM, ``GuardedServer.drain``): the listener stays open, but every request not yet handed
to the application, on a new connection or an open one, is answered 503 ``shutting_down`` with
``Retry-After`` (health checks included, so a load balancer takes the registry out); the requests in progress
finish, for up to ``shutdown_grace_s``; then the runner's cleanup closes what is left. The switch swaps the
request handler of the server and of each open connection, so serving costs nothing extra before it.

``GuardedRunner`` is an ``AppRunner`` whose server (the protocol factory a ``TCPSite`` listens with) makes
these protocols: ``BaseRunner._make_server`` is the hook runners override to supply their server.
"""

from __future__ import annotations

import asyncio
import re
import time
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from dlhub.common.config import RegistryConfig
from dlhub.common.errors import ShuttingDown
from dlhub.common.logging import get_logger
from dlhub.registry.http.errors import HTTP_ERROR_TYPES, error_response

log = get_logger(__name__)

# The pure-Python parser reports the whole request line; the C parser reports the target, as a bytearray
# (a header name or value comes as bytes).
_REQUEST_LINE = re.compile(rb"^[A-Z]+ ")


def _busy_reply() -> bytes:
    body = msgspec.json.encode(
        {"error": {"type": "service_unavailable", "message": "too many open connections; retry later"}}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_BUSY = _busy_reply()
DRAIN_POLL_INTERVAL_S = 0.05


async def _refuse_shutting_down(request: web.BaseRequest) -> web.StreamResponse:
    error = ShuttingDown("the registry is shutting down; retry shortly")
    response = error_response(error.http_status, error.to_dict(), headers={"Retry-After": "1"})
    response.force_close()  # the next try opens a new connection: to a registry that is still serving
    return response


def parse_error(exc: BaseException | None, status: int, config: RegistryConfig) -> tuple[int, str, str]:
    """The status, error type and message for a request aiohttp could not parse."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytearray) or (isinstance(line, bytes) and _REQUEST_LINE.match(line)):
            return 414, "uri_too_long", f"the request line exceeds {config.max_line_bytes} bytes"
        return (
            431,
            "request_header_fields_too_large",
            f"a header field exceeds {config.max_field_bytes} bytes",
        )
    if status >= 500:
        return status, "internal_error", "internal server error"
    reason = exc.message if isinstance(exc, BadHttpMessage) else HTTPStatus(status).phrase
    return status, HTTP_ERROR_TYPES.get(status, "bad_request"), f"malformed HTTP request: {reason}"


class GuardedProtocol(RequestHandler):
    """One client connection (see the module docstring)."""

    def __init__(self, manager: GuardedServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = manager
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._guard.open_connections > self._guard.config.max_connections:
            log.warning("connection refused: too many open", limit=self._guard.config.max_connections)
            transport.write(_BUSY)  # type: ignore[attr-defined]
            self.force_close()
            return
        self._header_timer = self._loop.call_later(
            self._guard.config.header_read_timeout_s, self._header_timeout
        )

    def _header_timeout(self) -> None:
        self._header_timer = None
        log.info(
            "connection closed: no request headers in time",
            timeout_s=self._guard.config.header_read_timeout_s,
        )
        self.force_close()

    def headers_received(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.headers_received()
        super().connection_lost(exc)

    def refuse_new_requests(self) -> None:
        """Answer the requests still to come on this connection 503 ``shutting_down`` (graceful stop)."""
        self._request_handler = _refuse_shutting_down

    @property
    def busy(self) -> bool:
        """A request is being handled on this connection (the flag aiohttp's own ``shutdown`` waits on)."""
        return self._request_in_progress

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of a response is out already: nothing valid to add
            raise ConnectionError("the response had started; closing the connection")
        status, error_type, text = parse_error(exc, status, self._guard.config)
        if status >= 500:
            log.error("error handling request", error=repr(exc))
        else:
            log.info("malformed request refused", status=status, error=text)
        response = error_response(status, {"type": error_type, "message": text})
        response.force_close()
        return response


class GuardedServer(web.Server):
    """The protocol factory: counts open connections and makes ``GuardedProtocol``s."""

    def __init__(self, inner: web.Server, config: RegistryConfig, **protocol_args: Any) -> None:
        super().__init__(inner.request_handler, request_factory=self._request, handler_cancellation=False)
        self.config = config
        self.open_connections = 0
        self._inner_factory = inner.request_factory
        self._protocol_args = protocol_args

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self, loop=asyncio.get_running_loop(), **self._protocol_args)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.open_connections += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.open_connections -= 1
        super().connection_lost(handler, exc)

    async def drain(self, grace_s: float) -> bool:
        """Refuse new requests (503 ``shutting_down``); wait up to ``grace_s`` for those in progress.

        True if they all finished in time."""
        self.request_handler = _refuse_shutting_down
        in_progress = []
        for connection in self.connections:
            if isinstance(connection, GuardedProtocol):
                connection.refuse_new_requests()
                if connection.busy:
                    in_progress.append(connection)
        log.info("registry draining", requests=len(in_progress), grace_s=grace_s)
        deadline = time.monotonic() + grace_s
        # Their next requests are refused at once, so a connection that is busy again is no longer ours.
        while any(c.busy for c in in_progress):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_INTERVAL_S)
        return True

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if isinstance(protocol, GuardedProtocol):  # a request's headers are in: the header timer is done
            protocol.headers_received()
        return self._inner_factory(message, payload, protocol, writer, task)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` serving through ``GuardedServer`` with the limits of ``config``."""

    def __init__(self, app: web.Application, config: RegistryConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._config = config

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        return GuardedServer(
            inner,
            self._config,
            access_log=None,
            keepalive_timeout=self._config.keepalive_timeout_s,
            max_line_size=self._config.max_line_bytes,
            max_field_size=self._config.max_field_bytes,
        )
