"""Prometheus metrics on the session's stack: the registry's GET /metrics after runs and errors, and the
broker's and workers' own metrics endpoints (ports found in <data_dir>/run/metrics)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import StackInfo

FUNCTIONS = """
def double(x):
    if x < 0:
        raise ValueError("negative")
    return 2 * x
"""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def _alive(port_file: Path) -> bool:
    """``<service>-<pid>.port`` of a live process: the session's stack also holds the files of workers that
    fault tests SIGKILLed (and ``dlhub up`` replaced), which never got to remove theirs."""
    try:
        os.kill(int(port_file.stem.rsplit("-", 1)[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    return True


def endpoint(stack: StackInfo, service: str) -> str:
    directory = stack.data_dir / "run" / "metrics"

    def live_files() -> list[Path]:
        return [f for f in sorted(directory.glob(f"{service}-*.port")) if _alive(f)]

    files = wait_until(live_files, timeout_s=10, message=service)
    return f"http://127.0.0.1:{files[0].read_text().strip()}/metrics"


def worker_endpoints(stack: StackInfo) -> list[str]:
    directory = stack.data_dir / "run" / "metrics"
    files = [f for f in sorted(directory.glob("worker-*.port")) if _alive(f)]
    return [f"http://127.0.0.1:{f.read_text().strip()}/metrics" for f in files]


@pytest.fixture(scope="module")
def doubler(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    pkg: Path = tmp_path_factory.mktemp("metrics_pkg")
    (pkg / "metricsfns.py").write_text(FUNCTIONS)
    name = f"double_{uuid.uuid4().hex[:8]}"
    doc = python_function_document(
        name=name, module="metricsfns", function="double", files=["metricsfns.py"], title="double",
        authors=["Doe, Jane"],
    )  # fmt: skip
    doc["servable"]["options"] = {"deterministic": True}
    assert alice.publish(doc, base_dir=pkg)["status"] == "ready"
    return f"alice/{name}"


def run(stack: StackInfo, servable: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.api}/servables/{servable}/run", json=body, timeout=60)


def test_registry_metrics_count_runs_by_route_template_status_and_outcome(
    stack: StackInfo, doubler: str
) -> None:
    route = "/api/v1/servables/{owner}/{name}/run"
    ok = {"method": "POST", "route": route, "status": "200"}
    before = httpx.get(stack.url + "/metrics", timeout=10).text
    for x in (1, 2, 2):  # the second 2 is a memo hit
        assert run(stack, doubler, {"inputs": x}).json()["state"] == "completed"
    assert run(stack, doubler, {"inputs": -1}).json()["state"] == "failed"
    assert run(stack, doubler, {"inputs": 1, "method": "nope"}).status_code == 400

    response = httpx.get(stack.url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert doubler.split("/")[1] not in after  # route templates only, never raw paths

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dlhub_registry_requests_total", **ok) == 4
    assert delta("dlhub_registry_request_duration_seconds_count", **ok) == 4
    assert delta("dlhub_registry_requests_total", **{**ok, "status": "400"}) == 1
    completed = {"mode": "sync", "outcome": "completed", "error": ""}
    assert delta("dlhub_registry_task_outcomes_total", **completed) == 3
    failed = {"mode": "sync", "outcome": "failed", "error": "servable_error"}
    assert delta("dlhub_registry_task_outcomes_total", **failed) == 1
    assert delta("dlhub_registry_memo_lookups_total", result="hit") == 1
    assert delta("dlhub_registry_memo_lookups_total", result="miss") == 3


def test_broker_and_worker_metrics_endpoints(stack: StackInfo, doubler: str) -> None:
    broker = endpoint(stack, "broker")

    def handlers_gauge() -> float | None:
        count = value(httpx.get(broker, timeout=10).text, "dlhub_broker_handlers", topic="servable/*")
        return count if count >= stack.worker_count() else None

    assert wait_until(handlers_gauge, timeout_s=10, message="the broker's handler gauge") >= 2
    text = httpx.get(broker, timeout=10).text
    assert "dlhub_broker_queue_depth" in text and "dlhub_broker_inflight_tasks" in text
    # Durable results are acknowledged at once here; the gauges exist and read a count and a byte size.
    assert value(text, "dlhub_broker_mailbox_results") >= 0 and "dlhub_broker_mailbox_bytes" in text
    assert value(text, "dlhub_broker_handlers_by_kind", kind="builder") == 1

    worker = httpx.get(endpoint(stack, "worker"), timeout=10)
    assert worker.status_code == 200
    assert "dlhub_worker_executor_restarts_total" in worker.text and "dlhub_worker_batch_size" in worker.text
    texts = [httpx.get(url, timeout=10).text for url in worker_endpoints(stack)]
    # The module's first test ran the doubler twice and failed it once, on whichever workers took them.
    tasks = "dlhub_worker_tasks_total"
    completed = sum(value(t, tasks, outcome="completed", error="") for t in texts)
    failed = sum(value(t, tasks, outcome="failed", error="servable_error") for t in texts)
    assert completed >= 2 and failed >= 1
    builder = httpx.get(endpoint(stack, "builder"), timeout=10).text
    assert value(builder, "dlhub_builder_build_duration_seconds_count", outcome="completed") >= 1
    assert httpx.get(endpoint(stack, "search"), timeout=10).status_code == 200


def test_health_shows_the_handler_table_to_administrators_only(stack: StackInfo) -> None:
    anonymous = httpx.get(stack.api + "/health", timeout=10).json()
    assert anonymous["status"] == "ok" and "handlers" not in anonymous["broker"]
    assert anonymous["broker"]["handler_counts"]["worker"] >= 2
    as_bob = httpx.get(stack.api + "/health", headers=auth(stack, "bob"), timeout=10).json()
    assert "handlers" not in as_bob["broker"]
    as_alice = httpx.get(stack.api + "/health", headers=auth(stack, "alice"), timeout=10).json()
    kinds = [h["kind"] for h in as_alice["broker"]["handlers"]]
    assert kinds.count("worker") == anonymous["broker"]["handler_counts"]["worker"] and "builder" in kinds


def auth(stack: StackInfo, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.tokens[user]}"}
