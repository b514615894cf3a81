"""The search service down: searches answer 503 at once, publishing goes on, and the index catches up by
itself once search is back. Broker, registry, builder and search as separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dlhub.client import DLHubClient
from tests.stack.test_e2e import function_doc
from tests.support.polling import wait_until
from tests.support.separate import SeparateServices
from tests.support.stack import unique

INDEX_RETRY_INTERVAL_S = 0.5


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SeparateServices]:
    services = SeparateServices(
        tmp_path, env={"DLHUB_REGISTRY__INDEX_RETRY_INTERVAL_S": str(INDEX_RETRY_INTERVAL_S)}
    )
    try:
        for name in ("broker", "registry", "builder", "search"):
            services.start(name)
        services.wait_registry()
        services.wait_handlers(builder=1, search=1)
        yield services
    finally:
        services.stop_all()


def _found(client: DLHubClient, name: str) -> bool:
    return any(hit["name"] == name for hit in client.search(name)["hits"])


def test_search_down_answers_503_publish_succeeds_and_the_index_catches_up(
    services: SeparateServices, pkg_dir: Path
) -> None:
    """Pass criteria: with the search service SIGKILLed, GET /search answers 503 ``no_handler`` (JSON
    envelope) within 5 s, not after its 30 s deadline; a publish still succeeds and its version becomes
    ``ready``; once a search service runs again, GET /search finds the servable published while it was
    down within 15 s, with no manual reindex; servables indexed before the outage are still found."""
    client = DLHubClient(services.url, services.token("alice"))
    before = unique("before")
    client.publish(function_doc(before, "noop"), base_dir=pkg_dir, timeout_s=60)
    wait_until(lambda: _found(client, before), timeout_s=15, message="the first servable indexed")

    services.kill("search")
    services.wait_handlers(search=0)
    started = time.monotonic()
    response = httpx.get(services.api + "/search", params={"q": before}, timeout=40)
    assert time.monotonic() - started < 5
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "no_handler"

    during = unique("during")
    reply = client.publish(function_doc(during, "noop"), base_dir=pkg_dir, timeout_s=60)
    assert reply["status"] == "ready"

    services.start("search")
    services.wait_handlers(search=1)
    wait_until(lambda: _found(client, during), timeout_s=15, message="the index to catch up")
    assert _found(client, before)
    assert "search index caught up" in services.log("registry")


def test_index_updates_missed_while_search_was_down_survive_a_registry_sigkill(
    services: SeparateServices, pkg_dir: Path
) -> None:
    """Pass criteria: with the search service down, a publish succeeds; the registry is then SIGKILLed (its
    in-memory retry gone) and restarted, and only then does a search service come back: the version becomes
    searchable within 15 s without a manual reindex (the pending update was kept in the store), and the
    pending entry is cleared (the registry logs that the index caught up)."""
    client = DLHubClient(services.url, services.token("alice"))
    services.kill("search")
    services.wait_handlers(search=0)
    during = unique("during")
    assert client.publish(function_doc(during, "noop"), base_dir=pkg_dir, timeout_s=60)["status"] == "ready"

    services.kill("registry")
    services.start("registry")
    services.wait_registry()
    services.start("search")
    services.wait_handlers(search=1)
    wait_until(lambda: _found(client, during), timeout_s=15, message="the index to catch up")
    wait_until(
        lambda: "search index caught up" in services.log("registry"),
        timeout_s=10,
        message="the pending update to be cleared",
    )
