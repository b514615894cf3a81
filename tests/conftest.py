"""Shared fixtures: the real embedded stack started with `dlhub up` as separate processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pymongo
import pytest
from pymongo.errors import PyMongoError

from dlhub.client import DLHubClient
from dlhub.common.config import BusConfig
from tests import broker_helpers
from tests.broker_helpers import BrokerProcess

T = TypeVar("T")
HEARTBEAT_INTERVAL_S = 0.25
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class StackInfo:
    url: str
    api: str
    data_dir: Path
    broker_url: str
    tokens: dict[str, str]
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.api + "/health", timeout=5).json()
        return body

    def worker_count(self) -> int:
        handlers = self.health().get("broker", {}).get("handlers", [])
        return sum(1 for h in handlers if h.get("kind") == "worker")


def stack_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DLHUB_HOME": str(home),
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
            "DLHUB_REGISTRY__MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            # The SDK-layout documents of the ML tests pin framework versions other than the installed ones
            # (torch 2.4.0 ...); with per-servable environments those would each build a multi-GB venv. The
            # shared stacks run them in the worker environment on purpose (recorded in environment.json);
            # tests/test_environments.py and test_docker_backend.py start stacks with mode "auto".
            "DLHUB_ENVIRONMENTS__MODE": "shared",
        }
    )
    env.pop("DLHUB_URL", None)
    env.pop("DLHUB_TOKEN", None)
    return env


def start_stack(
    base: Path,
    *,
    workers: int = 2,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 60,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    data_dir = base / "data"
    port, broker_port = free_port(), free_port()
    env = stack_env(base / "home") | (extra_env or {})
    cmd = [
        sys.executable, "-m", "dlhub.client.cli", "up",
        "--data-dir", str(data_dir), "--port", str(port), "--broker-port", str(broker_port),
        "--workers", str(workers), "--user", "alice", *extra_args,
    ]  # fmt: skip
    log = (base / "up.log").open("wb")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_json = data_dir / "client.json"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"dlhub up exited early: {(base / 'up.log').read_text()}")
        return client_json.is_file()

    wait_for(ready, ready_timeout_s, "dlhub up to become ready")
    info = {
        "url": f"http://127.0.0.1:{port}",
        "broker_url": f"tcp://127.0.0.1:{broker_port}",
        "data_dir": data_dir,
        "env": env,
        "alice": json.loads(client_json.read_text())["token"],
    }
    return process, info


def stop_stack(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def create_token(env: dict[str, str], data_dir: Path, user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "token", "create", user, "--data-dir", str(data_dir)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    base = tmp_path_factory.mktemp("stack")
    process, info = start_stack(base)
    try:
        tokens = {"alice": info["alice"], "bob": create_token(info["env"], info["data_dir"], "bob")}
        yield StackInfo(
            url=info["url"],
            api=info["url"] + "/api/v1",
            data_dir=info["data_dir"],
            broker_url=info["broker_url"],
            tokens=tokens,
            process=process,
            env=info["env"],
        )
    finally:
        code = stop_stack(process)
        assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


# --- real database/search test servers (scripts/test-servers) -----------------------------------------------

TEST_SERVERS_HINT = 'run `scripts/test-servers start` and `eval "$(scripts/test-servers env)"`'


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_test_server(reason: str) -> NoReturn:
    """A missing test server fails the run in CI and skips the test locally."""
    if in_ci():
        pytest.fail(f"{reason} (CI requires the test servers)", pytrace=False)
    pytest.skip(f"{reason}; {TEST_SERVERS_HINT}")


def mongodb_build_info(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``buildInfo`` of the MongoDB-wire server at ``url`` (after a ``ping``); raises PyMongoError."""
    ms = int(timeout_s * 1000)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        info: dict[str, Any] = client.admin.command("buildInfo")
        return info
    finally:
        client.close()


_FERRETDB: dict[str, bool] = {}


def is_ferretdb(mongodb_url: str) -> bool:
    """Whether the server at ``mongodb_url`` is FerretDB, to skip assertions FerretDB cannot satisfy.

    Asks ``buildInfo`` once per URL (FerretDB adds ``ferretdbVersion``); PyMongoError if none answers.
    """
    if mongodb_url not in _FERRETDB:
        _FERRETDB[mongodb_url] = "ferretdbVersion" in mongodb_build_info(mongodb_url)
    return _FERRETDB[mongodb_url]


@pytest.fixture(scope="session")
def mongodb_url() -> str:
    """URL of the MongoDB-wire test server (``DLHUB_TEST_MONGODB_URL``), checked with a ping."""
    url = os.environ.get("DLHUB_TEST_MONGODB_URL", "").strip()
    if not url:
        missing_test_server("DLHUB_TEST_MONGODB_URL is not set")
    try:
        mongodb_build_info(url)
    except PyMongoError as exc:
        missing_test_server(f"no MongoDB server answers at {url}: {type(exc).__name__}: {str(exc)[:200]}")
    return url


@pytest.fixture(scope="session")
def elasticsearch_url() -> str:
    """URL of the Elasticsearch test server (``DLHUB_TEST_ELASTICSEARCH_URL``), cluster at least yellow."""
    url = os.environ.get("DLHUB_TEST_ELASTICSEARCH_URL", "").strip().rstrip("/")
    if not url:
        missing_test_server("DLHUB_TEST_ELASTICSEARCH_URL is not set")
    try:
        response = httpx.get(
            url + "/_cluster/health", params={"wait_for_status": "yellow", "timeout": "10s"}, timeout=15
        )
        status = response.json().get("status") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        missing_test_server(f"no Elasticsearch answers at {url}: {type(exc).__name__}: {exc}")
    if status not in ("green", "yellow"):
        missing_test_server(
            f"Elasticsearch at {url} is not healthy: HTTP {response.status_code} {response.text[:200]}"
        )
    return url


# -- shared by the end-to-end modules -----------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A servable name no other test uses (the session's stack is shared)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the e2efns.py module the end-to-end servables are published from."""
    from tests.e2e_servables import FUNCTIONS

    path = tmp_path_factory.mktemp("pkg")
    (path / "e2efns.py").write_text(FUNCTIONS)
    return path


@pytest.fixture(scope="module")
def alice(stack: StackInfo) -> DLHubClient:
    return DLHubClient(stack.url, stack.tokens["alice"])


@pytest.fixture(scope="module")
def bob(stack: StackInfo) -> DLHubClient:
    return DLHubClient(stack.url, stack.tokens["bob"])


# -- a broker process alone (tests/test_broker.py, tests/test_replicas.py) -----------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(broker_helpers.free_port(), tmp_path / "broker.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def bus(broker: BrokerProcess) -> BusConfig:
    return broker_helpers.bus_config(broker.port)
