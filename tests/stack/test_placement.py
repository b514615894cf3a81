"""Placement with real Task Managers (``dlhub worker`` processes with data directories of their own): a
servable pinned to a site runs only there, one needing a gpu runs only on the Task Manager offering one (and
fails ``no_handler`` naming the gpu when that one is gone), replicas spread a servable over exactly that many
Task Managers, and a bad placement block is refused at publish."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client.metadata import python_function_document
from tests.stack.test_task_manager import Stack, TaskManager, publish, run, task_manager_stack
from tests.support.polling import wait_until

LABELS = ["pa", "pb", "pgpu"]
LIVENESS_ENV = {"DLHUB_BUS__HEARTBEAT_LIVENESS": "12"}
"""Peers are declared lost after 3 s of silence rather than 0.75 s: on this shared, loaded 2-core machine a
Task Manager fetching its first bundle was once dropped as silent after 0.785 s, and these tests are about
routing, not liveness."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with task_manager_stack(tmp_path_factory.mktemp("placement-stack"), LABELS, LIVENESS_ENV) as running:
        yield running


def start(stack: Stack, base: Path, exits: ExitStack, label: str, **options: Any) -> TaskManager:
    options.setdefault("extra_env", LIVENESS_ENV)
    manager = TaskManager(stack, base, label, ["*"], **options)
    manager.start()
    exits.callback(manager.stop)
    return manager


def served_by(stack: Stack, servable: str, calls: int) -> list[int]:
    """The worker process of each call (the `where` function returns its executor's parent)."""
    pids = []
    for i in range(calls):
        record = run(stack, "alice", servable, i)
        assert record["state"] == "completed", record
        pids.append(record["output"]["worker_pid"])
    return pids


def test_a_servable_pinned_to_a_site_only_ever_runs_there(stack: Stack, tmp_path: Path) -> None:
    with ExitStack() as exits:
        a = start(stack, tmp_path, exits, "pa", site="cluster-a")
        b = start(stack, tmp_path, exits, "pb", site="cluster-b")
        pinned = publish(stack, "alice", tmp_path / "pinned", placement={"site": "cluster-b"})
        free = publish(stack, "alice", tmp_path / "free")
        assert set(served_by(stack, pinned, 10)) == {b.pid}
        assert set(served_by(stack, free, 10)) == {a.pid, b.pid}  # without a placement: both, as before
        described = stack.client("alice").describe(pinned)
        assert described["placement"] == {"site": "cluster-b"}
        assert stack.client("alice").describe(free)["placement"] is None
        assert len(a.cached_digests()) == 1  # `free`'s bundle only: the pinned one never reached it


def test_a_servable_needing_a_gpu_runs_only_where_one_is_offered(stack: Stack, tmp_path: Path) -> None:
    with ExitStack() as exits:
        # Told it has none (`worker.devices = []`): on a machine with GPUs it would otherwise detect them.
        cpu = start(stack, tmp_path, exits, "pa", extra_env=LIVENESS_ENV | {"DLHUB_WORKER__DEVICES": "[]"})
        gpu = start(stack, tmp_path, exits, "pgpu", devices=("gpu:0",))  # configured: no GPU here
        devices = {h["instance_id"]: h["devices"] for h in stack.task_managers()}
        assert devices == {"pa": [], "pgpu": ["gpu:0"]}
        cli = subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", "--url", stack.url, "--token", stack.tokens["alice"],
             "workers", "--json"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        assert '"gpu:0"' in cli.stdout
        needs_gpu = publish(stack, "alice", tmp_path / "gpu", placement={"devices": {"gpu": 1}})
        assert set(served_by(stack, needs_gpu, 8)) == {gpu.pid}
        gpu.stop()
        wait_until(
            lambda: [h["instance_id"] for h in stack.task_managers()] == ["pa"],
            timeout_s=30,
            message="only the cpu task manager to be registered",
        )
        # cpu serves the topic but offers no gpu: the task fails after broker.unserved_timeout_s, typed, and
        # says what is missing.
        record = run(stack, "alice", needs_gpu)
        assert record["state"] == "failed" and record["error"]["type"] == "no_handler", record
        assert "no Task Manager with 1 gpu device" in record["error"]["message"]
        assert cpu.process is not None and cpu.process.poll() is None
        assert not cpu.cached_digests()  # it never fetched the gpu servable's bundle


def test_replicas_spread_a_servable_over_exactly_that_many_task_managers(
    stack: Stack, tmp_path: Path
) -> None:
    with ExitStack() as exits:
        managers = [start(stack, tmp_path, exits, label) for label in LABELS]
        twice = publish(stack, "alice", tmp_path / "twice", placement={"replicas": 2})
        pids = served_by(stack, twice, 20)
        assert len(set(pids)) == 2 and set(pids) <= {m.pid for m in managers}
        # Only the two replicas fetched the version's bundle (kept its executors warm).
        assert sum(1 for m in managers if m.cached_digests()) == 2
        # The set is sticky: more calls go to the same two.
        assert set(served_by(stack, twice, 6)) <= set(pids)


def test_a_bad_placement_block_is_refused_at_publish(stack: Stack, tmp_path: Path) -> None:
    doc = python_function_document(
        name="badplace", module="m", function="f", files=[], title="Bad", authors=["Doe, Jane"]
    )
    for block, field in [
        ({"devices": {"gpu": 0}}, "servable.placement.devices.gpu"),
        ({"replicas": 0}, "servable.placement.replicas"),
        ({"rack": "r1"}, "servable.placement"),
    ]:
        doc["servable"]["placement"] = block
        response = httpx.post(
            stack.api + "/servables",
            headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
            files={"metadata": (None, json.dumps(doc), "application/json")},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "validation_error" and error["field"] == field, error
