"""The worker's file fetches share one HTTP client per executor process (building one per task cost tens of
milliseconds per call), yet nothing a server set during one task travels with the next task's fetches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dlhub.worker import files
from dlhub.worker.files import FileLimits, TaskFiles

pytestmark = pytest.mark.unit

FILE_SPEC = {"input": {"type": "file"}}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = (self.headers.get("Cookie") or "").encode()
        self.send_response(200)
        if self.path.startswith("/set"):
            self.send_header("Set-Cookie", "session=secret; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str) -> str:
    with TaskFiles(FileLimits()) as task:
        return Path(task.localize(FILE_SPEC, {"url": url})).read_text()


def test_one_client_serves_every_task_and_cookies_do_not_cross_tasks(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_clients", {})  # other tests in this process may have made theirs
    assert fetch(f"{base_url}/set") == ""
    assert fetch(f"{base_url}/echo") == ""  # the cookie set by the first task is not sent
    assert len(files._clients) == 1
    client = next(iter(files._clients.values()))
    fetch(f"{base_url}/echo")
    assert next(iter(files._clients.values())) is client
