"""Inputs of type file end to end: URLs served by a real local HTTP server and blobs uploaded to the registry,
fetched by the worker (with size, time and redirect limits) and handed to a python-function servable as paths.

The module starts its own stack (`dlhub up`, one worker) with small limits so that "too large" and "too slow"
are cheap to provoke; the worker must keep serving after each failure.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.client.sdk import TaskFailed
from dlhub.common.errors import PayloadTooLarge, Unauthorized
from dlhub.worker.files import FileFetchFailed, FileLimits, TaskFiles
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, create_token, start_stack, stop_stack, unique

FETCH_MAX_BYTES = 64 * 1024
FETCH_TIMEOUT_S = 2.0
MAX_BLOB_BYTES = 128 * 1024
NUMBERS = "1\n2\n3.5\n"

FILE_FUNCTIONS = """
import os


def sum_numbers(path):
    with open(path) as fh:
        return sum(float(line) for line in fh if line.strip())


def line_counts(paths):
    return [sum(1 for _ in open(p)) for p in paths]


def scaled_sum(spec):
    return spec["factor"] * sum_numbers(spec["data"])


def where(path):
    return {"path": path, "name": os.path.basename(path), "exists": os.path.isfile(path)}
"""

FILE = {"type": "file", "description": "a text file of numbers, one per line"}


# -- a local HTTP server ------------------------------------------------------------------------------------


@dataclass
class ServerState:
    endless_sent: int = 0
    endless_closed: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/numbers.txt":
            self._send(200, NUMBERS.encode())
        elif path == "/other.txt":
            self._send(200, b"10\n20\n")
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/numbers.txt"})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/declared-huge":
            self._send_declared_huge()
        elif path == "/endless":
            self._send_endless()
        elif path == "/stall":
            self._stall()
        else:
            self._send(404, b"not here")

    def _send_declared_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10 * FETCH_MAX_BYTES))
        self.end_headers()
        self.wfile.write(b"1\n" * 10)

    def _send_endless(self) -> None:
        """No Content-Length and no end: only the client's abort stops it."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"1\n" * 8192
        try:
            while not self.state.release.is_set():
                self.wfile.write(chunk)
                self.state.endless_sent += len(chunk)
        except OSError:
            pass
        finally:
            self.state.endless_closed.set()

    def _stall(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"1\n")
        self.wfile.flush()
        self.state.release.wait(30)


@dataclass
class FileServer:
    url: str
    state: ServerState


@pytest.fixture(scope="module")
def files_server() -> Iterator[FileServer]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(url=f"http://127.0.0.1:{server.server_address[1]}", state=state)
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


# -- a stack with small limits ------------------------------------------------------------------------------


@dataclass
class FileStack:
    stack: StackInfo
    alice: DLHubClient
    bob: DLHubClient
    servables: dict[str, str]


def _publish(client: DLHubClient, pkg: Path, function: str, input_type: dict[str, Any]) -> str:
    name = unique(f"file_{function}")
    doc = python_function_document(
        name=name, module="filefns", function=function, title=f"file input {function}",
        authors=["Doe, Jane"], files=["filefns.py"], input_type=input_type,
    )  # fmt: skip
    assert client.publish(doc, base_dir=pkg)["status"] == "ready"
    return f"alice/{name}"


@pytest.fixture(scope="module")
def files_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileStack]:
    base = tmp_path_factory.mktemp("files_stack")
    limits = {
        "DLHUB_WORKER__FILE_FETCH_MAX_BYTES": str(FETCH_MAX_BYTES),
        "DLHUB_WORKER__FILE_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "DLHUB_WORKER__FILE_FETCH_MAX_REDIRECTS": "3",
        "DLHUB_REGISTRY__MAX_BLOB_BYTES": str(MAX_BLOB_BYTES),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in limits.items():
            patch.setenv(key, value)
        process, info = start_stack(base, workers=1)
    try:
        stack = StackInfo(
            url=info["url"], api=info["url"] + "/api/v1", data_dir=info["data_dir"],
            broker_url=info["broker_url"], process=process, env=info["env"],
            tokens={"alice": info["alice"], "bob": create_token(info["env"], info["data_dir"], "bob")},
        )  # fmt: skip
        alice, bob = (
            DLHubClient(stack.url, stack.tokens["alice"]),
            DLHubClient(stack.url, stack.tokens["bob"]),
        )
        pkg = base / "pkg"
        pkg.mkdir()
        (pkg / "filefns.py").write_text(FILE_FUNCTIONS)
        servables = {
            "sum": _publish(alice, pkg, "sum_numbers", FILE),
            "counts": _publish(alice, pkg, "line_counts", {"type": "list", "item_type": FILE}),
            "scaled": _publish(
                alice,
                pkg,
                "scaled_sum",
                {"type": "dict", "properties": {"data": FILE, "factor": {"type": "float"}}},
            ),
            "where": _publish(alice, pkg, "where", FILE),
        }
        yield FileStack(stack=stack, alice=alice, bob=bob, servables=servables)
        alice.close()
        bob.close()
    finally:
        code = stop_stack(process)
        assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


def run_rest(fs: FileStack, servable: str, inputs: Any, user: str = "alice") -> httpx.Response:
    headers = {"Authorization": f"Bearer {fs.stack.tokens[user]}"} if user else {}
    return httpx.post(
        f"{fs.stack.api}/servables/{servable}/run", json={"inputs": inputs}, headers=headers, timeout=60
    )


def failed(fs: FileStack, servable: str, inputs: Any) -> dict[str, Any]:
    """Run and expect a failed task; return its error."""
    response = run_rest(fs, servable, inputs)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["state"] == "failed", reply
    error: dict[str, Any] = reply["error"]
    return error


def still_serving(fs: FileStack, server: FileServer) -> None:
    assert fs.alice.run(fs.servables["sum"], {"url": f"{server.url}/numbers.txt"}) == 6.5


# -- URLs ---------------------------------------------------------------------------------------------------


def test_url_input_is_fetched_and_passed_as_a_path(files_stack: FileStack, files_server: FileServer) -> None:
    fs = files_stack
    assert fs.alice.run(fs.servables["sum"], {"url": f"{files_server.url}/numbers.txt"}) == 6.5
    assert fs.alice.run(fs.servables["sum"], {"url": f"{files_server.url}/redirect"}) == 6.5
    # the model gets a local path named after the URL, removed once the call is over
    seen = fs.alice.run(fs.servables["where"], {"url": f"{files_server.url}/numbers.txt?x=1"})
    assert seen["exists"] is True and seen["name"].endswith("numbers.txt")
    assert not os.path.exists(seen["path"])


def test_nested_file_inputs(files_stack: FileStack, files_server: FileServer) -> None:
    fs = files_stack
    blob = fs.alice.upload_blob(b"7\n8\n9\n10\n", filename="four.txt")
    files = [
        {"url": f"{files_server.url}/numbers.txt"},
        {"blob": blob},
        {"url": f"{files_server.url}/other.txt"},
    ]
    assert fs.alice.run(fs.servables["counts"], files) == [3, 4, 2]
    spec = {"data": {"url": f"{files_server.url}/other.txt"}, "factor": 0.5}
    assert fs.alice.run(fs.servables["scaled"], spec) == 15.0


def test_url_results_are_not_memoized_blob_results_are(
    files_stack: FileStack, files_server: FileServer
) -> None:
    fs = files_stack
    url = {"url": f"{files_server.url}/numbers.txt"}
    assert run_rest(fs, fs.servables["sum"], url).json()["cached"] is False
    assert run_rest(fs, fs.servables["sum"], url).json()["cached"] is False  # the URL's content may change
    blob = {"blob": fs.alice.upload_blob(NUMBERS.encode())}
    first, second = (
        run_rest(fs, fs.servables["sum"], blob).json(),
        run_rest(fs, fs.servables["sum"], blob).json(),
    )
    assert (first["output"], first["cached"]) == (6.5, False)
    assert (second["output"], second["cached"]) == (6.5, True)  # a blob never changes


def test_fetch_failures_fail_the_task_and_the_worker_keeps_serving(
    files_stack: FileStack, files_server: FileServer
) -> None:
    fs, url = files_stack, files_server.url
    servable = fs.servables["sum"]

    error = failed(fs, servable, {"url": f"{url}/missing"})
    assert error["type"] == "file_fetch_failed" and "HTTP 404" in error["message"]
    assert error["message"].startswith("inputs:") and "127.0.0.1" in error["message"]
    still_serving(fs, files_server)

    error = failed(fs, fs.servables["counts"], [{"url": f"{url}/numbers.txt"}, {"url": f"{url}/missing"}])
    assert error["type"] == "file_fetch_failed" and error["message"].startswith("inputs[1]:")

    error = failed(fs, servable, {"url": f"{url}/declared-huge"})
    assert error["type"] == "file_fetch_failed" and f"exceeds {FETCH_MAX_BYTES} bytes" in error["message"]
    still_serving(fs, files_server)

    error = failed(fs, servable, {"url": f"{url}/loop"})
    assert error["type"] == "file_fetch_failed" and "more than 3 redirects" in error["message"]

    error = failed(fs, servable, {"url": "http://127.0.0.1:9/nothing-listens-here"})
    assert error["type"] == "file_fetch_failed" and "ConnectError" in error["message"]
    still_serving(fs, files_server)


def test_a_file_over_the_limit_is_aborted_while_streaming(
    files_stack: FileStack, files_server: FileServer
) -> None:
    fs = files_stack
    error = failed(fs, fs.servables["sum"], {"url": f"{files_server.url}/endless"})
    assert error["type"] == "file_fetch_failed" and f"exceeds {FETCH_MAX_BYTES} bytes" in error["message"]
    # the worker hung up: the endless response stopped (bounded by socket buffers, far from "downloaded")
    wait_until(
        files_server.state.endless_closed.is_set, timeout_s=10, message="the endless download to be aborted"
    )
    assert files_server.state.endless_sent < 64 * 1024 * 1024
    still_serving(fs, files_server)


def test_a_stalled_server_times_out(files_stack: FileStack, files_server: FileServer) -> None:
    fs = files_stack
    started = time.monotonic()
    error = failed(fs, fs.servables["sum"], {"url": f"{files_server.url}/stall"})
    assert error["type"] == "file_fetch_failed" and f"longer than {FETCH_TIMEOUT_S:g} s" in error["message"]
    assert time.monotonic() - started < FETCH_TIMEOUT_S + 10
    still_serving(fs, files_server)


def test_non_http_urls_are_refused_before_queueing(files_stack: FileStack) -> None:
    response = run_rest(files_stack, files_stack.servables["sum"], {"url": "file:///etc/passwd"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "inputs.url"


# -- blobs --------------------------------------------------------------------------------------------------


def test_blob_upload_and_run(files_stack: FileStack, tmp_path: Path, files_server: FileServer) -> None:
    fs = files_stack
    data = tmp_path / "numbers.txt"
    data.write_text(NUMBERS)
    info = fs.alice.upload_blob_info(data)
    assert info["size"] == len(NUMBERS) and info["sha256"] == hashlib.sha256(NUMBERS.encode()).hexdigest()
    assert info["filename"] == "numbers.txt" and info["expires_at"] > info["created_at"]
    assert fs.alice.run(fs.servables["sum"], {"blob": info["blob_id"]}) == 6.5
    assert fs.alice.run(fs.servables["sum"], data) == 6.5  # a Path is uploaded by the SDK
    assert fs.alice.run_pipeline([fs.servables["sum"]], data) == 6.5  # the first step's blobs are signed too
    assert fs.alice.run(fs.servables["counts"], [data, {"url": f"{files_server.url}/other.txt"}]) == [3, 2]
    seen = fs.alice.run(fs.servables["where"], data)
    assert seen["name"].endswith("numbers.txt")  # the blob's file name reaches the model

    raw = httpx.post(
        f"{fs.stack.api}/blobs",
        params={"filename": "raw.txt"},
        content=b"4\n4\n",
        headers={"Authorization": f"Bearer {fs.stack.tokens['alice']}", "Content-Type": "text/plain"},
    )
    assert raw.status_code == 201, raw.text
    assert raw.json()["filename"] == "raw.txt" and raw.json()["content_type"] == "text/plain"
    assert fs.alice.run(fs.servables["sum"], {"blob": raw.json()["blob_id"]}) == 8.0


def test_published_pipeline_with_a_file_input(files_stack: FileStack, files_server: FileServer) -> None:
    fs = files_stack
    name = unique("file_pipeline")
    fs.alice.publish_pipeline(name, [fs.servables["sum"]], title="Sum a file", authors=["Doe, Jane"])
    assert fs.alice.run(f"alice/{name}", {"blob": fs.alice.upload_blob(NUMBERS.encode())}) == 6.5
    assert fs.alice.run(f"alice/{name}", {"url": f"{files_server.url}/other.txt"}) == 30.0
    response = run_rest(fs, f"alice/{name}", {"blob": fs.alice.upload_blob(b"1\n")}, user="bob")
    assert response.status_code == 400 and response.json()["error"]["field"] == "inputs.blob"


def test_blobs_belong_to_their_uploader(files_stack: FileStack) -> None:
    fs = files_stack
    blob = fs.alice.upload_blob(b"1\n")
    response = run_rest(fs, fs.servables["sum"], {"blob": blob}, user="bob")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "inputs.blob" and blob in response.json()["error"]["message"]
    response = run_rest(fs, fs.servables["counts"], [{"blob": blob}, {"blob": "nope"}])
    assert response.status_code == 400 and response.json()["error"]["field"] == "inputs[1].blob"
    assert run_rest(fs, fs.servables["sum"], {"blob": blob}, user="").status_code == 401

    def blob_request(method: str, user: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {fs.stack.tokens[user]}"}
        return httpx.request(method, f"{fs.stack.api}/blobs/{blob}", headers=headers, timeout=10)

    assert blob_request("GET", "bob").status_code == 404
    assert blob_request("DELETE", "bob").status_code == 404
    assert blob_request("GET", "alice").json()["size"] == 2
    assert blob_request("DELETE", "alice").json() == {"deleted": blob}
    assert blob_request("GET", "alice").status_code == 404
    assert run_rest(fs, fs.servables["sum"], {"blob": blob}).status_code == 400  # gone
    with pytest.raises(Unauthorized):
        DLHubClient(fs.stack.url, token=None).upload_blob(b"1\n")


def _signature(data_dir: Path, blob_id: str, expires: int) -> str:
    key = bytes.fromhex((data_dir / "blobs" / ".signing-key").read_text().strip())
    return hmac.new(key, f"{blob_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def test_signed_blob_urls(files_stack: FileStack) -> None:
    fs = files_stack
    blob = fs.alice.upload_blob(b"5\n", filename="five.txt")
    content = f"{fs.stack.api}/blobs/{blob}/content"
    expires = int(time.time()) + 60
    good = httpx.get(
        content, params={"expires": expires, "sig": _signature(fs.stack.data_dir, blob, expires)}
    )
    assert good.status_code == 200 and good.content == b"5\n"
    assert good.headers["Content-Disposition"] == 'attachment; filename="five.txt"'

    def status(expires: int, sig: str) -> tuple[int, str]:
        response = httpx.get(content, params={"expires": expires, "sig": sig})
        return response.status_code, response.json()["error"]["type"]

    past = int(time.time()) - 1
    assert status(past, _signature(fs.stack.data_dir, blob, past)) == (403, "forbidden")  # expired
    assert status(expires + 1, _signature(fs.stack.data_dir, blob, expires)) == (403, "forbidden")  # tampered
    assert status(expires, "0" * 64) == (403, "forbidden")
    assert status(expires, "é" * 64) == (403, "forbidden")  # non-ASCII: a 403, not a server error
    superscript = httpx.get(content, params={"expires": "²", "sig": "0" * 64})
    assert superscript.status_code == 403, superscript.text
    assert httpx.get(content).status_code == 403  # no signature at all
    other = fs.alice.upload_blob(b"6\n")
    assert status(expires, _signature(fs.stack.data_dir, other, expires)) == (403, "forbidden")  # other blob
    still = httpx.get(
        content, params={"expires": expires, "sig": _signature(fs.stack.data_dir, blob, expires)}
    )
    assert still.status_code == 200


def test_blob_upload_over_the_limit_is_413(files_stack: FileStack) -> None:
    fs = files_stack
    with pytest.raises(PayloadTooLarge):
        fs.alice.upload_blob(b"x" * (MAX_BLOB_BYTES + 1))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(4):
            yield b"y" * (MAX_BLOB_BYTES // 2)

    response = httpx.post(
        f"{fs.stack.api}/blobs",
        content=chunks(),
        headers={"Authorization": f"Bearer {fs.stack.tokens['alice']}"},
        timeout=30,
    )
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
    assert not [p for p in (fs.stack.data_dir / "blobs").iterdir() if p.name.endswith(".tmp")]
    assert fs.alice.upload_blob(b"x" * MAX_BLOB_BYTES)  # exactly the limit is fine


def test_malformed_blob_uploads_are_400(files_stack: FileStack) -> None:
    fs = files_stack
    headers = {"Authorization": f"Bearer {fs.stack.tokens['alice']}"}
    form = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--b--\r\n'
    no_file = httpx.post(
        f"{fs.stack.api}/blobs",
        content=form,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert no_file.status_code == 400 and no_file.json()["error"]["field"] == "file", no_file.text
    garbage = httpx.post(
        f"{fs.stack.api}/blobs",
        content=b"--x\r\nnot a part header",
        headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["type"] == "validation_error"
    assert fs.alice.upload_blob(b"1\n")  # the registry keeps going


def test_cli_run_with_files(files_stack: FileStack, files_server: FileServer, tmp_path: Path) -> None:
    import subprocess

    fs = files_stack
    (tmp_path / "a.txt").write_text("1\n2\n")
    env = dict(fs.stack.env, DLHUB_URL=fs.stack.url, DLHUB_TOKEN=fs.stack.tokens["alice"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dlhub.client.cli", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    out = cli("run", fs.servables["sum"], "--file", "a.txt")
    assert out.returncode == 0 and out.stdout.strip() == "3.0", out.stderr
    out = cli("run", fs.servables["counts"], "-f", "a.txt", "-f", f"{files_server.url}/numbers.txt")
    assert out.returncode == 0 and out.stdout.split() == ["[", "2,", "3", "]"], out.stderr
    out = cli("run", fs.servables["sum"], "--file", "no-such-file.txt")
    assert out.returncode == 2 and "neither an http(s) URL nor a file" in out.stderr
    out = cli("run", fs.servables["sum"], "--file", f"{files_server.url}/missing")
    assert out.returncode == 1 and "file_fetch_failed" in out.stderr and "Traceback" not in out.stderr
    out = cli("upload", "a.txt")
    assert out.returncode == 0 and '"size": 4' in out.stdout


# -- components ---------------------------------------------------------------------------------------------


def test_task_files_refuse_other_schemes_and_clean_up(files_server: FileServer) -> None:
    spec = {"input": {"type": "list", "item_type": {"type": "file"}}}
    with TaskFiles(FileLimits(max_bytes=1024, timeout_s=5, max_redirects=0)) as files:
        with pytest.raises(FileFetchFailed) as caught:
            files.localize(spec, [{"url": f"{files_server.url}/numbers.txt"}, {"url": "ftp://example.org/x"}])
        assert caught.value.field == "inputs[1]" and "only http and https" in caught.value.message
        with pytest.raises(FileFetchFailed, match="more than 0 redirects"):
            files.localize(spec, [{"url": f"{files_server.url}/redirect"}])
        with pytest.raises(FileFetchFailed, match="malformed URL"):
            files.localize(spec, [{"url": "http://[::1/x"}])
        with pytest.raises(FileFetchFailed, match=r'expected a file reference \{"url"'):
            files.localize(spec, [{"blob": "never reaches a worker"}])
        paths = files.localize(spec, [{"url": f"{files_server.url}/numbers.txt"}])
        assert Path(paths[0]).read_text() == NUMBERS
    assert not Path(paths[0]).exists()
    assert files.localize({"input": {"type": "string"}}, "text") == "text"  # no file type: untouched


def test_the_worker_gets_an_error_not_a_crash_for_a_stopped_server(files_stack: FileStack) -> None:
    fs = files_stack
    with pytest.raises(TaskFailed) as caught:
        fs.alice.run(fs.servables["sum"], {"url": "http://127.0.0.1:9/x"})
    assert caught.value.error_type == "file_fetch_failed"
    assert fs.stack.worker_count() == 1


def test_logs_never_carry_signatures_or_the_signing_key(files_stack: FileStack) -> None:
    data_dir = files_stack.stack.data_dir
    key = (data_dir / "blobs" / ".signing-key").read_text().strip()
    logs = list((data_dir / "logs").glob("*"))
    assert logs, "the stack writes its logs under <data_dir>/logs"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "sig=" not in text and key not in text, log.name
