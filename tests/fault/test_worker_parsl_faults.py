"""Parsl faults: a Parsl worker or the whole worker service SIGKILLed (moved from
tests/stack/test_worker_parsl.py). A stack of its own with the Parsl backend."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub.client import DLHubClient
from tests.stack.test_worker_parsl import (
    FUNCTIONS,
    PARSL_HEARTBEAT_THRESHOLD_S,
    PARSL_WORKERS,
    ParslStack,
    _alive,
    _burst,
    output,
    parsl_processes,
    publish,
    rest_run,
    running_parsl_stack,
    worker_service_pid,
)
from tests.support.polling import wait_until


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


def test_killed_parsl_worker_fails_the_task_typed_and_later_tasks_succeed(
    parsl_stack: ParslStack, alice: DLHubClient, functions_dir: Path, tmp_path: Path
) -> None:
    sleeper = publish(alice, functions_dir, "pid_then_sleep")
    whoami = publish(alice, functions_dir, "whoami")
    pidfile = tmp_path / "parsl-worker.pid"
    handle = alice.run_async(sleeper, {"pidfile": str(pidfile), "seconds": 60})
    victim = int(
        wait_until(
            lambda: pidfile.read_text() if pidfile.is_file() else None,
            timeout_s=30,
            message="the task to start",
        )
    )
    assert victim in parsl_processes(parsl_stack)
    os.kill(victim, signal.SIGKILL)

    record = wait_until(
        lambda: (r := alice.status(handle.task_id))["state"] == "failed" and r,
        timeout_s=30,
        message="the failure",
    )
    assert record["error"]["type"] == "worker_lost"
    assert "Parsl worker" in record["error"]["message"]
    # Parsl replaces the dead worker; the service kept going and both workers serve again.
    wait_until(
        lambda: len({output(r)["pid"] for r in _burst(parsl_stack, whoami)}) == PARSL_WORKERS,
        timeout_s=60,
        message="two Parsl workers serving again",
    )


def test_killed_worker_service_leaves_no_parsl_process_and_its_successor_serves(
    parsl_stack: ParslStack, alice: DLHubClient, functions_dir: Path
) -> None:
    service = worker_service_pid(parsl_stack)
    orphans = parsl_processes(parsl_stack)
    os.kill(service, signal.SIGKILL)
    # The launcher clears the dead service's process group (the interchange); the worker pool, cut off from
    # its interchange, exits after the Parsl heartbeat threshold.
    wait_until(
        lambda: not [pid for pid in orphans if _alive(pid)],
        timeout_s=PARSL_HEARTBEAT_THRESHOLD_S + 30,
        message="orphans",
    )
    whoami = publish(alice, functions_dir, "whoami")
    wait_until(
        lambda: worker_service_pid(parsl_stack) != service and len(parsl_processes(parsl_stack)) >= 4,
        timeout_s=90,
        message="the restarted worker service and its Parsl workers",
    )
    assert output(rest_run(parsl_stack, whoami, 0))["pid"] in parsl_processes(parsl_stack)
    # The successor removed the run directory its killed predecessor could not.
    assert len(list((parsl_stack.data_dir / "parsl").iterdir())) == 1
