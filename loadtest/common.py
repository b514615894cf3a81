"""Helpers shared by the benchmarks: a throwaway stack, a lean HTTP client, percentile summaries."""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50), 4),
        "p99_ms": round(percentile(values, 99), 4),
        "mean_ms": round(statistics.fmean(values), 4),
        "n": len(values),
    }


@dataclass
class RunningStack:
    url: str
    token: str
    data_dir: Path
    startup_s: float
    pid: int = 0  # the `dlhub up` process: its children are the services


@contextmanager
def embedded_stack(
    workers: int = 1, extra_env: dict[str, str] | None = None, worker_keys: Sequence[str] = ()
) -> Iterator[RunningStack]:
    """Start `dlhub up` in a temporary data directory and stop it afterwards.

    ``worker_keys``: bus key pairs (``worker-gpu01``...) created in ``<data dir>/keys`` before the broker
    starts, since it admits only the keys it finds then (docs/task-managers.md), for Task Managers of their
    own."""
    with tempfile.TemporaryDirectory(prefix="dlhub-bench-") as tmp:
        base = Path(tmp)
        port, broker_port = free_port(), free_port()
        env = dict(os.environ, DLHUB_HOME=str(base / "home"), **(extra_env or {}))
        if worker_keys:
            keys = [
                sys.executable,
                "-m",
                "dlhub.broker",
                "keys",
                "create",
                "--dir",
                str(base / "data" / "keys"),
            ]
            subprocess.run([*keys, *worker_keys], env=env, check=True, capture_output=True)
        cmd = [
            sys.executable, "-m", "dlhub.client.cli", "up", "--data-dir", str(base / "data"),
            "--port", str(port), "--broker-port", str(broker_port), "--workers", str(workers),
            "--user", "bench",
        ]  # fmt: skip
        started = time.perf_counter()
        log = (base / "up.log").open("wb")
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        client_json = base / "data" / "client.json"
        deadline = time.monotonic() + 60
        while not client_json.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dlhub up failed: " + (base / "up.log").read_text()[-2000:])
            time.sleep(0.01)
        startup_s = time.perf_counter() - started
        token = json.loads(client_json.read_text())["token"]
        try:
            yield RunningStack(f"http://127.0.0.1:{port}", token, base / "data", startup_s, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_healthy(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client, so the client's own overhead stays far below the server's."""

    def __init__(self, url: str, token: str | None = None, headers: dict[str, str] | None = None) -> None:
        host_port = url.split("://", 1)[1]
        host, _, port = host_port.partition(":")
        self.conn = http.client.HTTPConnection(host, int(port or 80))
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(
            "POST", path, body=body, headers={**self.headers, **headers} if headers else self.headers
        )
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def write_results(name: str, results: dict[str, Any]) -> Path:
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
