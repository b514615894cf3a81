"""Hostile clients against a real registry over real sockets: any nesting depth, oversize request line or
header gets the JSON error envelope with a 4xx; silent and half-sent connections are closed by the header
timeout while the registry keeps answering; past the connection limit a connection gets a 503 JSON. And on
the worker side: deeply nested inputs or results fail the task without hurting the executor, and a servable's
traceback names its own frames only."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from dlhub.common.errors import WorkerLost
from dlhub.common.ids import new_id
from dlhub.worker.pool import ExecutorPool
from tests.stack.test_worker_pool import call, output
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, running_stack
from tests.support.worker_servables import function_method, write_function_servable

HEADER_READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 300
MAX_NESTING = 64
MAX_LINE_BYTES = 4096


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A stack of its own with small, known limits."""
    base = tmp_path_factory.mktemp("hostile")
    env = {
        "DLHUB_REGISTRY__HEADER_READ_TIMEOUT_S": str(HEADER_READ_TIMEOUT_S),
        "DLHUB_REGISTRY__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "DLHUB_REGISTRY__MAX_BODY_NESTING": str(MAX_NESTING),
        "DLHUB_REGISTRY__MAX_LINE_BYTES": str(MAX_LINE_BYTES),
        "DLHUB_REGISTRY__MAX_FIELD_BYTES": str(MAX_LINE_BYTES),
    }
    with running_stack(base, workers=1, extra_env=env) as info:
        yield info


def _address(stack: StackInfo) -> tuple[str, int]:
    host, port = stack.url.removeprefix("http://").split(":")
    return host, int(port)


def _auth(stack: StackInfo) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.tokens['alice']}"}


def _assert_envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == error_type
    return error


def _deep_json(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _deep_msgpack(depth: int) -> bytes:
    return b"\x81\xa6inputs" + b"\x91" * depth + b"\x01"


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 990, 5000, 200_000])
def test_deep_run_bodies_are_400_naming_the_limit(guarded: StackInfo, depth: int) -> None:
    url = guarded.api + "/servables/alice/nothing/run"
    bodies = ((_deep_json(depth), "application/json"), (_deep_msgpack(depth), "application/msgpack"))
    for body, content_type in bodies:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=30)
        error = _assert_envelope(response, 400, "validation_error")
        assert str(MAX_NESTING) in error["message"] and "registry.max_body_nesting" in error["message"]


def test_deep_bodies_on_pipelines_publish_and_update_are_400(guarded: StackInfo) -> None:
    deep = _deep_json(5000)
    response = httpx.post(
        guarded.api + "/pipelines/run", content=deep, headers={"Content-Type": "application/json"}
    )
    _assert_envelope(response, 400, "validation_error")
    metadata = b'{"datacite": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    published = httpx.post(
        guarded.api + "/servables",
        headers=_auth(guarded),
        files={"metadata": (None, metadata, "application/json")},
    )
    assert "max_body_nesting" in _assert_envelope(published, 400, "validation_error")["message"]
    as_json = httpx.post(
        guarded.api + "/servables",
        headers=_auth(guarded) | {"Content-Type": "application/json"},
        content=metadata,
    )
    _assert_envelope(as_json, 400, "validation_error")


def test_nesting_within_the_limit_reaches_the_servable_lookup(guarded: StackInfo) -> None:
    response = httpx.post(
        guarded.api + "/servables/alice/nothing/run",
        content=_deep_json(MAX_NESTING - 1),
        headers={"Content-Type": "application/json"},
    )
    _assert_envelope(response, 404, "not_found")


def _raw_exchange(stack: StackInfo, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is and read the whole response (the server closes after an error)."""
    with socket.create_connection(_address(stack), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_oversize_request_line_is_414_json(guarded: StackInfo) -> None:
    path = "/api/v1/servables?" + "q=" + "a" * (MAX_LINE_BYTES + 100)
    status, headers, body = _raw_exchange(guarded, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 414 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["type"] == "uri_too_long"


def test_oversize_header_is_431_json(guarded: StackInfo) -> None:
    request = f"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * (MAX_LINE_BYTES + 100)}\r\n\r\n"
    status, headers, body = _raw_exchange(guarded, request.encode())
    assert status == 431 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["type"] == "request_header_fields_too_large"


def test_garbage_request_is_400_json(guarded: StackInfo) -> None:
    status, headers, body = _raw_exchange(guarded, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["type"] == "bad_request"


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_silent_and_half_sent_connections_are_closed_and_the_registry_keeps_answering(
    guarded: StackInfo,
) -> None:
    sockets: list[socket.socket] = []
    try:
        for i in range(250):
            sock = socket.create_connection(_address(guarded), timeout=5)
            if i % 2:
                sock.sendall(b"GET /api/v1/hea")  # half a request line, never finished
            sock.setblocking(False)
            sockets.append(sock)
        opened = time.monotonic()
        assert httpx.get(guarded.api + "/health", timeout=10).status_code == 200
        open_ = list(sockets)

        def all_closed() -> bool:
            open_[:] = [sock for sock in open_ if not _closed_by_peer(sock)]
            return not open_

        wait_until(all_closed, timeout_s=HEADER_READ_TIMEOUT_S + 10, interval_s=0.1, message="sockets closed")
        assert time.monotonic() - opened < HEADER_READ_TIMEOUT_S + 10
        assert httpx.get(guarded.api + "/health", timeout=10).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_connections_past_the_limit_get_503_json(guarded: StackInfo) -> None:
    sockets: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(_address(guarded), timeout=5)
            # A whole request, so the connection then idles in keep-alive: a silent one is dropped after
            # HEADER_READ_TIMEOUT_S, which opening 300 of them on a loaded machine can outlast.
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            sockets.append(sock)

        # The registry has seen them all when one more is refused (polled: accepts are asynchronous).
        def refused() -> bool:
            response = httpx.get(guarded.api + "/health", timeout=5, headers={"Connection": "close"})
            if response.status_code == 503:
                error = _assert_envelope(response, 503, "service_unavailable")
                assert "connections" in error["message"]
                return True
            return False

        wait_until(refused, timeout_s=10, interval_s=0.1, message="a connection past the limit refused")
    finally:
        for sock in sockets:
            sock.close()
    wait_until(
        lambda: httpx.get(guarded.api + "/health", timeout=5).status_code == 200,
        timeout_s=10,
        interval_s=0.1,
        message="the registry answering again once connections close",
    )


# --- the worker side: executor processes -------------------------------------------------------------------


async def test_traceback_shows_the_servables_frames_only(pool: ExecutorPool, tmp_path: Path) -> None:
    directory = write_function_servable(tmp_path, "nested", methods={"run": function_method("nested_fail")})
    reply = await call(pool, directory, 7)
    assert not reply.ok and reply.error is not None
    trace = reply.error.traceback
    assert reply.error.exception_type == "KeyError"
    assert "in nested_fail" in trace and "in _inner_check" in trace and "no entry 7" in trace
    assert "dlhub" not in trace and "executor.py" not in trace and "site-packages" not in trace


async def test_deep_inputs_and_results_fail_the_task_and_the_executor_serves_on(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    methods = {"run": function_method("noop"), "deep": function_method("deep_output")}
    directory = write_function_servable(tmp_path, "deep", methods=methods)
    # Deep inputs cannot reach an executor through the bus (its decoder refuses them: InvalidMessage); sent
    # straight to the pipe, the executor cannot tell which request failed, exits, and the pool replaces it.
    with pytest.raises(WorkerLost):
        await pool.execute(
            task_id=new_id(),
            servable=f"alice/{directory.parent.name}@{directory.name}",
            version_dir=str(directory),
            method="run",
            inputs=msgspec.Raw(b"\x91" * 100_000 + b"\x01"),
            parameters=msgspec.Raw(b"\x80"),
            timeout_s=30,
        )
    deep_result = await call(pool, directory, 100_000, method="deep")
    assert not deep_result.ok and deep_result.error is not None
    assert deep_result.error.code == "servable_error" and "deep" in deep_result.error.message
    assert output(await call(pool, directory, 1)) == "hello world"
