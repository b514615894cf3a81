"""Shared fixtures, and the kind of every test from its folder: unit, stack, contract or fault.

The session's stack (`dlhub up` as separate processes on loopback), its users, a broker process alone and
the external test servers; the helpers behind them are in tests/support/.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.errors import PyMongoError

from dlhub.client import DLHubClient
from dlhub.common.config import BusConfig
from dlhub.worker.pool import ExecutorPool
from tests.support import broker as broker_helpers
from tests.support.broker import BrokerProcess
from tests.support.net import free_port
from tests.support.servers import missing_test_server, mongodb_build_info
from tests.support.stack import StackInfo, running_stack, unique
from tests.support.worker_servables import EXECUTOR_MAX_MESSAGE_BYTES

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "stack", "contract", "fault")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its kind, the name of the folder it lives in (tests/<kind>/...)."""
    for item in items:
        try:
            kind = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(tmp_path_factory.mktemp("stack"), users=("alice", "bob")) as info:
        yield info


# --- real database/search test servers (scripts/test-servers) -----------------------------------------------


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


@pytest.fixture(scope="session")
def container_registry() -> str:
    """``host:port`` of the container registry test server (``DLHUB_TEST_CONTAINER_REGISTRY``), checked with
    ``GET /v2/``."""
    address = os.environ.get("DLHUB_TEST_CONTAINER_REGISTRY", "").strip().rstrip("/")
    if not address:
        missing_test_server("DLHUB_TEST_CONTAINER_REGISTRY is not set")
    try:
        response = httpx.get(f"http://{address}/v2/", timeout=5)
    except httpx.HTTPError as exc:
        missing_test_server(f"no container registry answers at {address}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        missing_test_server(f"the registry at {address} answers HTTP {response.status_code} to GET /v2/")
    return address


@pytest.fixture(scope="session")
def s3_url() -> str:
    """URL of the S3-compatible test server (``DLHUB_TEST_S3_URL``: moto in server mode), checked with an
    unsigned ListBuckets."""
    url = os.environ.get("DLHUB_TEST_S3_URL", "").strip().rstrip("/")
    if not url:
        missing_test_server("DLHUB_TEST_S3_URL is not set")
    try:
        response = httpx.get(url + "/", timeout=5)
    except httpx.HTTPError as exc:
        missing_test_server(f"no S3 server answers at {url}: {type(exc).__name__}: {exc}")
    if response.status_code != 200 or b"ListAllMyBucketsResult" not in response.content:
        missing_test_server(
            f"the server at {url} does not answer S3 ListBuckets: HTTP {response.status_code}"
        )
    return url


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """This environment with ``SLURM_CONF`` of the one-node Slurm test cluster (``DLHUB_TEST_SLURM_CONF``),
    checked with ``scontrol ping``."""
    conf = os.environ.get("DLHUB_TEST_SLURM_CONF", "").strip()
    if not conf:
        missing_test_server("DLHUB_TEST_SLURM_CONF is not set")
    env = dict(os.environ, SLURM_CONF=conf)
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_test_server(f"scontrol cannot reach the Slurm controller of {conf}: {exc}")
    if "is UP" not in ping.stdout:
        missing_test_server(f"no Slurm controller answers for {conf}: {ping.stdout}{ping.stderr}")
    return env


# -- shared by the end-to-end modules -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the e2efns.py module the end-to-end servables are published from."""
    from tests.support.e2e_servables import FUNCTIONS

    path = tmp_path_factory.mktemp("pkg")
    (path / "e2efns.py").write_text(FUNCTIONS)
    return path


@pytest.fixture(scope="module")
def alice(stack: StackInfo) -> DLHubClient:
    return DLHubClient(stack.url, stack.tokens["alice"])


@pytest.fixture(scope="module")
def bob(stack: StackInfo) -> DLHubClient:
    return DLHubClient(stack.url, stack.tokens["bob"])


# -- a broker process alone (tests/stack/test_broker.py, tests/fault/, tests/stack/test_replicas.py) ---------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(free_port(), tmp_path / "broker.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def bus(broker: BrokerProcess) -> BusConfig:
    return broker_helpers.bus_config(broker.port)


# -- importable modules and an executor pool (unit and stack tests) ------------------------------------------


@pytest.fixture
def module_factory(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Write ``FUNCTIONS``-like source to a uniquely named module in tmp_path and import it."""
    names: list[str] = []
    sys.path.insert(0, str(tmp_path))

    def make(source: str) -> Any:
        name = unique("descfns")
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return importlib.import_module(name)

    try:
        yield make
    finally:
        sys.path.remove(str(tmp_path))
        for name in names:
            sys.modules.pop(name, None)


@pytest.fixture
async def pool() -> AsyncIterator[ExecutorPool]:
    executors = ExecutorPool(processes=1, max_message_bytes=EXECUTOR_MAX_MESSAGE_BYTES)
    await executors.start()
    try:
        yield executors
    finally:
        await executors.close()
