"""The search service over the bus: real broker and search processes (split from
tests/unit/test_search.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.config import BusConfig
from dlhub.common.errors import DLHubError
from dlhub.common.ids import SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import (
    IndexRequest,
    SearchQuery,
    SearchResults,
    decode_payload,
)
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.unit.test_search import DOCS


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


@pytest.fixture
async def search_bus(tmp_path: Path) -> AsyncIterator[tuple[Path, BusClient]]:
    url = f"tcp://127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DLHUB_BROKER__BIND_URL": url,
        "DLHUB_BUS__BROKER_URL": url,
        "DLHUB_BUS__HEARTBEAT_INTERVAL_S": "0.2",
        "DLHUB_DATA_DIR": str(tmp_path / "data"),
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("broker", "search")}
    processes = {name: spawn(f"dlhub.{name}", env, logs[name]) for name in ("broker", "search")}
    client = BusClient(bus=BusConfig(broker_url=url, heartbeat_interval_s=0.2), codec=Codec())
    await client.start()
    try:

        async def registered() -> bool:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{logs[name].read_text()}")
            try:
                stats = await client.stats(timeout_s=0.5)
            except DLHubError:
                return False
            return any(h.kind == "search" for h in stats.handlers) and "ready" in logs["search"].read_text()

        await await_until(registered, timeout_s=30, message="the search service to register")
        yield tmp_path, client
    finally:
        await client.close()
        search_code = stop_process(processes["search"])
        stop_process(processes["broker"])
        assert search_code == 0, logs["search"].read_text()
        assert "stopped" in logs["search"].read_text()


async def test_search_over_the_bus(search_bus: tuple[Path, BusClient]) -> None:
    tmp_path, client = search_bus
    codec = Codec()
    index = [RouteStep(topic=SEARCH_INDEX_TOPIC, method="index")]
    query = [RouteStep(topic=SEARCH_QUERY_TOPIC, method="run")]

    bad = await client.call(index, codec.encode_value({"op": "nope"}), timeout_s=10)
    assert not bad.ok and bad.error is not None and bad.error.code == "invalid_message"
    garbage = await client.call(query, codec.encode_value("not a query"), timeout_s=10)
    assert not garbage.ok and garbage.error is not None and garbage.error.code == "invalid_message"

    for doc in DOCS[45:]:
        result = await client.call(
            index, codec.encode_value(IndexRequest(op="upsert", id=doc.id, document=doc)), timeout_s=10
        )
        assert result.ok, result.error

    result = await client.call(query, codec.encode_value(SearchQuery(q="iri")), timeout_s=10)
    assert result.ok, result.error
    found = decode_payload(result.output, SearchResults)
    assert [hit.document.id for hit in found.hits] == ["alice/iris_rf", "bob/iris_svm"]

    result = await client.call(
        query,
        codec.encode_value(SearchQuery(q="iri", identities=["urn:globus:groups:id:1234"])),
        timeout_s=10,
    )
    assert decode_payload(result.output, SearchResults).total == 3
    assert (tmp_path / "data" / "search.sqlite3").is_file()
