"""A real HTTP file server on 127.0.0.1 for the URL-component tests, run in a thread of the test process.

Routes: ``/files/<name>`` serves what ``files`` holds; ``/big/<n>`` sends n bytes with a Content-Length and
``/stream/<n>`` n bytes without one (the end of the body is the end of the connection), both recording how
many bytes actually left; ``/slow/<n>`` trickles n bytes, one every ``slow_interval_s``; ``/redirect/<k>``
redirects to ``/redirect/<k+1>`` forever; ``/redirect-to?url=`` redirects anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024


@dataclass
class FileServer:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    """Bytes of the body that left per path, once its handler finished."""
    slow_interval_s: float = 0.2

    def sent_for(self, path: str) -> int | None:
        return self.sent.get(path)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read assertions, not access logs
        return

    def do_GET(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        if parts[0] == "files" and "/".join(parts[1:]) in state.files:
            self._send_body(path, state.files["/".join(parts[1:])])
        elif parts[0] in ("big", "stream") and len(parts) == 2:
            self._send_zeros(path, int(parts[1]), announce=parts[0] == "big")
        elif parts[0] == "slow" and len(parts) == 2:
            self._send_slowly(path, int(parts[1]), state.slow_interval_s)
        elif parts[0] == "redirect" and len(parts) == 2:
            self._redirect(f"/redirect/{int(parts[1]) + 1}")
        elif parts[0] == "redirect-to":
            self._redirect(parse_qs(urlsplit(self.path).query)["url"][0])
        else:
            self.send_error(404)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, path: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.state.sent[path] = len(body)

    def _send_zeros(self, path: str, size: int, *, announce: bool) -> None:
        self.send_response(200)
        if announce:
            self.send_header("Content-Length", str(size))
        else:
            self.close_connection = True
        self.end_headers()
        sent = 0
        try:
            while sent < size:
                n = min(CHUNK, size - sent)
                self.wfile.write(b"\0" * n)
                sent += n
        except OSError:
            pass  # the client hung up: what it refused is what this measures
        finally:
            self.server.state.sent[path] = sent

    def _send_slowly(self, path: str, size: int, interval_s: float) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        sent = 0
        try:
            for _ in range(size):
                self.wfile.write(b"x")
                self.wfile.flush()
                sent += 1
                time.sleep(interval_s)  # the trickle itself: this server is slow on purpose
        except OSError:
            pass
        finally:
            self.server.state.sent[path] = sent


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FileServer


@contextmanager
def file_server(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """Serve on 127.0.0.1 (a free port) until the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    state = FileServer(url=f"http://{host!s}:{port}", files=dict(files or {}))
    server.state = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
