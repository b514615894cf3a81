"""The search service over the bus: real broker and search processes (split from
tests/unit/test_search.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.ids import SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import (
    IndexRequest,
    SearchQuery,
    SearchResults,
    decode_payload,
)
from tests.support.services import ServiceProcesses
from tests.unit.test_search import DOCS


@pytest.fixture
async def search_bus(tmp_path: Path) -> AsyncIterator[tuple[Path, BusClient]]:
    processes = ServiceProcesses(tmp_path)
    processes.start("broker")
    processes.start("search")
    client = BusClient(bus=processes.bus, codec=Codec())
    await client.start()
    try:
        await processes.wait_registered(client, "search", timeout_s=30, ready="ready")
        yield tmp_path, client
    finally:
        await client.close()
        search_code = processes.stop("search")
        processes.stop("broker")
        assert search_code == 0, processes.log("search")
        assert "stopped" in processes.log("search")


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
