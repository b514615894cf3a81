"""The Parsl back end end to end: `dlhub up` whose worker runs tasks on a HighThroughputExecutor with the
local provider and 2 Parsl workers, driven through REST."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document, sklearn_document
from tests.support.polling import wait_until
from tests.support.stack import start_stack, stop_stack, unique

PARSL_WORKERS = 2
PARSL_HEARTBEAT_PERIOD_S = 1
PARSL_HEARTBEAT_THRESHOLD_S = 3

FUNCTIONS = """
import os
import time

CALLS = 0


def whoami(seconds):
    # The Parsl worker's pid and how many calls this loaded copy has served: a warm servable counts up.
    global CALLS
    CALLS += 1
    time.sleep(seconds)  # a slow servable keeps a Parsl worker busy (the condition under test)
    return {"pid": os.getpid(), "calls": CALLS}


def boom(x):
    raise ValueError(f"boom {x}")


def pid_then_sleep(spec):
    with open(spec["pidfile"] + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(spec["pidfile"] + ".tmp", spec["pidfile"])
    time.sleep(spec["seconds"])  # still running when the test kills its worker
    return "finished"
"""


# -- a stack whose worker runs its servables on Parsl (the provider configurations: tests/unit/) ----------


@dataclass
class ParslStack:
    url: str
    data_dir: Path
    token: str
    process: subprocess.Popen[bytes]
    base: Path

    @property
    def api(self) -> str:
        return self.url + "/api/v1"


@contextlib.contextmanager
def running_parsl_stack(base: Path) -> Iterator[ParslStack]:
    """`dlhub up`, one worker on the Parsl backend (shared with tests/fault/test_worker_parsl_faults.py)."""
    env = {
        "DLHUB_WORKER__BACKEND": "parsl",
        "DLHUB_WORKER__PARSL__WORKERS_PER_NODE": str(PARSL_WORKERS),
        "DLHUB_WORKER__PARSL__HEARTBEAT_PERIOD_S": str(PARSL_HEARTBEAT_PERIOD_S),
        "DLHUB_WORKER__PARSL__HEARTBEAT_THRESHOLD_S": str(PARSL_HEARTBEAT_THRESHOLD_S),
        "DLHUB_WORKER__PARSL__STARTUP_TIMEOUT_S": "90",
    }
    process, info = start_stack(
        base,
        workers=1,
        extra_args=["--startup-timeout-s", "120"],
        extra_env=env,
        ready_timeout_s=130,
    )
    try:
        yield ParslStack(info["url"], info["data_dir"], info["alice"], process, base)
    finally:
        code = stop_stack(process)
        assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


@pytest.fixture(scope="module")
def parsl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParslStack]:
    with running_parsl_stack(tmp_path_factory.mktemp("parsl_stack")) as stack:
        yield stack


@pytest.fixture(scope="module")
def alice(parsl_stack: ParslStack) -> DLHubClient:
    return DLHubClient(parsl_stack.url, parsl_stack.token)


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parslfns")
    (path / "parslfns.py").write_text(FUNCTIONS)
    return path


def publish(alice: DLHubClient, functions_dir: Path, function: str) -> str:
    name = unique(function)
    doc = python_function_document(
        name=name, module="parslfns", function=function, files=["parslfns.py"],
        title=f"{function} on Parsl", authors=["Doe, Jane"],
    )  # fmt: skip
    doc["dlhub"]["deterministic"] = False  # they report where they ran: the registry must not memoize them
    assert alice.publish(doc, base_dir=functions_dir)["status"] == "ready"
    return f"alice/{name}"


def rest_run(stack: ParslStack, servable: str, inputs: Any, *, timeout_s: float = 60) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.api}/servables/{servable}/run",
        json={"inputs": inputs},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=timeout_s,
    )
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def output(record: dict[str, Any]) -> Any:
    assert record["state"] == "completed", record
    return record["output"]


def load_lines(stack: ParslStack, servable: str) -> int:
    """How often the worker logged a cold load of ``servable`` (``load_ms`` > 0 in the executor's reply)."""
    owner, name = servable.split("/")
    text = (stack.data_dir / "logs" / "worker-0.log").read_text()
    return sum(1 for line in text.splitlines() if "servable loaded" in line and f"{owner}/{name}@" in line)


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def worker_service_pid(stack: ParslStack) -> int:
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == stack.process.pid and fields[0] != "Z":
            with contextlib.suppress(OSError):
                if b"dlhub.worker" in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
    return 0  # none right now (being restarted)


def parsl_processes(stack: ParslStack) -> list[int]:
    """Live processes the worker service started for Parsl: its interchange and, although the local provider
    detaches the block from the process tree, the worker pool and its workers, all in the service's session
    (`dlhub up` starts each service in a session of its own)."""
    service = worker_service_pid(stack)
    if not service:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == service and int(entry.name) != service:
            found.append(int(entry.name))
    return [pid for pid in found if _alive(pid)]


# -- tests (in order: the last one stops the stack) ---------------------------------------------------------


def test_concurrent_requests_land_on_both_parsl_workers_and_stay_warm(
    parsl_stack: ParslStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "whoami")
    with ThreadPoolExecutor(6) as threads:
        replies = [output(r) for r in threads.map(lambda _: rest_run(parsl_stack, servable, 0.5), range(6))]
    pids = {reply["pid"] for reply in replies}
    assert len(pids) == PARSL_WORKERS, replies
    assert pids <= set(parsl_processes(parsl_stack))

    # Warm: each Parsl worker loaded the servable once; later calls reuse the loaded copy (its counter grows).
    later = [output(rest_run(parsl_stack, servable, 0)) for _ in range(6)]
    assert {reply["pid"] for reply in later} <= pids
    assert max(reply["calls"] for reply in later) > 3
    assert load_lines(parsl_stack, servable) == PARSL_WORKERS


def test_scikit_learn_servable_runs_on_parsl(
    parsl_stack: ParslStack, alice: DLHubClient, tmp_path: Path
) -> None:
    iris = load_iris()
    clf = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    joblib.dump(clf, tmp_path / "model.joblib")
    name = unique("parsl_iris")
    doc = sklearn_document(
        name=name, model_path="model.joblib", title="Iris on Parsl", authors=["Doe, Jane"],
        n_input_columns=4, method="predict_proba", serialization_method="joblib",
    )  # fmt: skip
    alice.publish(doc, base_dir=tmp_path)
    rows = iris.data[::10]
    record = rest_run(parsl_stack, f"alice/{name}", rows.tolist())
    np.testing.assert_allclose(np.asarray(output(record)), clf.predict_proba(rows))
    assert record["timings"]["inference_ms"] > 0

    # Concurrent single rows are merged by the worker's batcher and the batch runs on Parsl.
    with ThreadPoolExecutor(8) as threads:
        records = list(
            threads.map(lambda i: rest_run(parsl_stack, f"alice/{name}", [rows[i].tolist()]), range(8))
        )
    merged = np.asarray([output(r)[0] for r in records])
    np.testing.assert_allclose(merged, clf.predict_proba(rows[:8]))


def test_servable_exception_fails_the_task_with_its_type(
    parsl_stack: ParslStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "boom")
    record = rest_run(parsl_stack, servable, 7)
    assert record["state"] == "failed", record
    assert record["error"]["type"] == "servable_error"
    assert record["error"]["exception_type"] == "ValueError"
    assert "boom 7" in record["error"]["message"]


def _burst(stack: ParslStack, servable: str) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(4) as threads:
        return list(threads.map(lambda _: rest_run(stack, servable, 0.3), range(4)))


def test_stopping_the_stack_leaves_no_parsl_process_and_no_run_dir(parsl_stack: ParslStack) -> None:
    found = parsl_processes(parsl_stack)
    assert len(found) >= PARSL_WORKERS + 2, found  # interchange, worker pool, its workers
    run_dirs = list((parsl_stack.data_dir / "parsl").iterdir())
    assert len(run_dirs) == 1, run_dirs
    assert stop_stack(parsl_stack.process) == 0
    wait_until(
        lambda: not [pid for pid in found if _alive(pid)], timeout_s=30, message="every Parsl process to exit"
    )
    assert not list((parsl_stack.data_dir / "parsl").iterdir())
