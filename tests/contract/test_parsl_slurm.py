"""The Parsl back end on a real Slurm (the one-node cluster of scripts/test-servers): `dlhub up` whose worker
runs servables in SlurmProvider blocks. Blocks start as batch jobs when tasks wait, tasks run inside them and
return, an idle block is released, a cancelled job's task fails typed, and stopping the stack cancels its
jobs. The jobs get no environment from the worker (``--export=NONE``): ``worker_init`` alone puts DLHub on
the Parsl workers' path, as on a cluster."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import start_stack, stop_stack, unique

WORKERS_PER_NODE = 2
MAX_IDLETIME_S = 4
BLOCK_START_TIMEOUT_S = 90
"""The first task of an empty pool waits for a job to be scheduled and its Parsl workers to connect."""
CANCELLED_TASK_DEADLINE_S = 60

FUNCTIONS = """
import os
import time

CALLS = 0


def where(seconds):
    # Which Slurm job and Parsl worker ran the task, and how often this loaded copy has served.
    global CALLS
    CALLS += 1
    time.sleep(seconds)
    return {"job": os.environ.get("SLURM_JOB_ID"), "pid": os.getpid(), "calls": CALLS}


def job_then_sleep(spec):
    with open(spec["jobfile"] + ".tmp", "w") as fh:
        fh.write(os.environ["SLURM_JOB_ID"])
    os.replace(spec["jobfile"] + ".tmp", spec["jobfile"])
    time.sleep(spec["seconds"])  # still running when the test cancels its job
    return "finished"
"""


@dataclass
class SlurmStack:
    url: str
    data_dir: Path
    token: str
    process: subprocess.Popen[bytes]
    slurm_env: dict[str, str]

    def jobs(self) -> dict[str, str]:
        """This stack's Slurm jobs (their submit scripts are in its Parsl run directory): id -> state."""
        listing = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%T|%o"],
            env=self.slurm_env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        rows = (line.split("|", 2) for line in listing.splitlines() if line.count("|") == 2)
        return {job: state for job, state, command in rows if command.startswith(str(self.data_dir))}

    def running_jobs(self) -> set[str]:
        return {job for job, state in self.jobs().items() if state == "RUNNING"}


def slurm_worker_env(slurm_env: dict[str, str]) -> dict[str, str]:
    """The worker's ``[worker.parsl]`` for the test cluster: no block until a task waits, one block of two
    Parsl workers at most, released after a few idle seconds."""
    python_path = os.environ.get("PYTHONPATH", "")
    worker_init = f"export PATH={Path(sys.executable).parent}:$PATH; export PYTHONPATH={python_path}"
    return {
        "SLURM_CONF": slurm_env["SLURM_CONF"],
        "DLHUB_WORKER__BACKEND": "parsl",
        "DLHUB_WORKER__PARSL__PROVIDER": "slurm",
        "DLHUB_WORKER__PARSL__PARTITION": os.environ.get("DLHUB_TEST_SLURM_PARTITION", "dlhub"),
        "DLHUB_WORKER__PARSL__WALLTIME_S": "600",
        "DLHUB_WORKER__PARSL__WORKERS_PER_NODE": str(WORKERS_PER_NODE),
        "DLHUB_WORKER__PARSL__INIT_BLOCKS": "0",
        "DLHUB_WORKER__PARSL__MIN_BLOCKS": "0",
        "DLHUB_WORKER__PARSL__MAX_BLOCKS": "1",
        "DLHUB_WORKER__PARSL__MAX_IDLETIME_S": str(MAX_IDLETIME_S),
        "DLHUB_WORKER__PARSL__STRATEGY_PERIOD_S": "1",
        "DLHUB_WORKER__PARSL__EXCLUSIVE": "false",
        "DLHUB_WORKER__PARSL__SCHEDULER_OPTIONS": "#SBATCH --export=NONE",
        "DLHUB_WORKER__PARSL__WORKER_INIT": worker_init,
        "DLHUB_WORKER__PARSL__ADDRESS": "127.0.0.1",
        "DLHUB_WORKER__PARSL__HEARTBEAT_PERIOD_S": "1",
        "DLHUB_WORKER__PARSL__HEARTBEAT_THRESHOLD_S": "5",
        "DLHUB_WORKER__PARSL__JOB_STATUS_PERIOD_S": "1",
    }


@contextlib.contextmanager
def running_slurm_stack(base: Path, slurm_env: dict[str, str], **settings: str) -> Iterator[SlurmStack]:
    env = slurm_worker_env(slurm_env) | settings
    process, info = start_stack(base, workers=1, extra_env=env, ready_timeout_s=120)
    try:
        yield SlurmStack(info["url"], info["data_dir"], info["alice"], process, slurm_env)
    finally:
        code = stop_stack(process)
        assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


@pytest.fixture(scope="module")
def slurm_stack(tmp_path_factory: pytest.TempPathFactory, slurm_env: dict[str, str]) -> Iterator[SlurmStack]:
    with running_slurm_stack(tmp_path_factory.mktemp("slurm_stack"), slurm_env) as stack:
        yield stack


@pytest.fixture(scope="module")
def alice(slurm_stack: SlurmStack) -> DLHubClient:
    return DLHubClient(slurm_stack.url, slurm_stack.token)


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slurmfns")
    (path / "slurmfns.py").write_text(FUNCTIONS)
    return path


def publish(alice: DLHubClient, functions_dir: Path, function: str) -> str:
    name = unique(function)
    doc = python_function_document(
        name=name, module="slurmfns", function=function, files=["slurmfns.py"],
        title=f"{function} on Slurm", authors=["Doe, Jane"],
    )  # fmt: skip
    doc["dlhub"]["deterministic"] = False  # they report where they ran: the registry must not memoize them
    assert alice.publish(doc, base_dir=functions_dir)["status"] == "ready"
    return f"alice/{name}"


def rest_run(stack: SlurmStack, servable: str, inputs: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.url}/api/v1/servables/{servable}/run",
        json={"inputs": inputs},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=BLOCK_START_TIMEOUT_S + 30,
    )
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    assert record["state"] == "completed", record
    return record


def ended(alice: DLHubClient, task_id: str) -> dict[str, Any] | None:
    record = alice.status(task_id)
    return record if record["state"] in ("completed", "failed") else None


def wait_for_no_block(stack: SlurmStack) -> None:
    wait_until(lambda: not stack.jobs(), timeout_s=60, message="the idle block's job to leave squeue")


# -- tests (in order: the last one stops the stack) ---------------------------------------------------------


def test_a_waiting_task_starts_a_block_and_runs_in_its_job(
    slurm_stack: SlurmStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "where")
    assert not slurm_stack.jobs()  # init_blocks = 0: no job before a task waits
    began = time.monotonic()
    first = rest_run(slurm_stack, servable, 0)["output"]
    print(f"first task through an empty Slurm pool: {time.monotonic() - began:.1f} s")
    assert first["job"] is not None
    assert slurm_stack.running_jobs() == {first["job"]}  # squeue shows the block's job while it serves

    # Synchronous runs reuse the block and its warm servable (no new job, a loaded copy counting up).
    later = [rest_run(slurm_stack, servable, 0)["output"] for _ in range(4)]
    assert {reply["job"] for reply in later} == {first["job"]}
    assert max(reply["calls"] for reply in later) >= 2


def test_async_tasks_run_concurrently_on_the_blocks_workers(
    slurm_stack: SlurmStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "where")
    handles = [alice.run_async(servable, 0.5) for _ in range(6)]
    records = [
        wait_until(
            functools.partial(ended, alice, handle.task_id),
            timeout_s=BLOCK_START_TIMEOUT_S,
            message="an asynchronous task to end",
        )
        for handle in handles
    ]
    assert all(r["state"] == "completed" for r in records), records
    outputs = [r["output"] for r in records]
    assert len({o["job"] for o in outputs}) == 1  # max_blocks = 1
    assert len({o["pid"] for o in outputs}) == WORKERS_PER_NODE


def test_an_idle_block_is_released_and_a_new_task_starts_another(
    slurm_stack: SlurmStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "where")
    before = rest_run(slurm_stack, servable, 0)["output"]["job"]
    began = time.monotonic()
    wait_for_no_block(slurm_stack)
    idle_s = time.monotonic() - began
    print(f"block released {idle_s:.1f} s after its last task (max_idletime_s = {MAX_IDLETIME_S})")
    assert idle_s >= MAX_IDLETIME_S - 1
    after = rest_run(slurm_stack, servable, 0)["output"]["job"]
    assert after != before


def test_a_cancelled_jobs_task_fails_typed_and_the_pool_recovers(
    slurm_stack: SlurmStack, alice: DLHubClient, functions_dir: Path, tmp_path: Path
) -> None:
    sleeper = publish(alice, functions_dir, "job_then_sleep")
    jobfile = tmp_path / "job"
    handle = alice.run_async(sleeper, {"jobfile": str(jobfile), "seconds": 300})
    job = wait_until(
        lambda: jobfile.read_text() if jobfile.is_file() else None,
        timeout_s=BLOCK_START_TIMEOUT_S,
        message="the task to start in a Slurm job",
    )
    assert job in slurm_stack.running_jobs()
    subprocess.run(["scancel", job], env=slurm_stack.slurm_env, check=True, timeout=10)

    record = wait_until(
        lambda: ended(alice, handle.task_id),
        timeout_s=CANCELLED_TASK_DEADLINE_S,
        message="the cancelled job's task to end",
    )
    assert record["state"] == "failed", record
    assert record["error"]["type"] == "worker_lost"
    # The executor is not poisoned: the next task gets a new block.
    where = publish(alice, functions_dir, "where")
    assert rest_run(slurm_stack, where, 0)["output"]["job"] not in (None, job)


def worker_service_pid(stack: SlurmStack) -> int:
    """The `dlhub up` child running the worker service, 0 while there is none (being restarted)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            child = int(stat[1]) == stack.process.pid and stat[0] != "Z"
            if child and b"dlhub.worker" in (entry / "cmdline").read_bytes().split(b"\0"):
                return int(entry.name)
    return 0


def test_a_killed_workers_block_ends_and_its_successor_serves(
    slurm_stack: SlurmStack, alice: DLHubClient, functions_dir: Path
) -> None:
    servable = publish(alice, functions_dir, "where")
    job = rest_run(slurm_stack, servable, 0)["output"]["job"]
    service = worker_service_pid(slurm_stack)
    assert service and job in slurm_stack.running_jobs()
    os.kill(service, signal.SIGKILL)  # no cleanup: nobody cancels its job
    # The job's Parsl workers, cut off from their interchange, exit after the heartbeat threshold: the job
    # ends rather than holding the node until its walltime.
    wait_until(lambda: job not in slurm_stack.jobs(), timeout_s=60, message="the orphaned block's job to end")
    wait_until(
        lambda: worker_service_pid(slurm_stack) not in (0, service),
        timeout_s=60,
        message="the restarted worker service",
    )
    successor = rest_run(slurm_stack, servable, 0)["output"]["job"]
    assert successor not in (None, job)


def test_stopping_the_stack_cancels_its_blocks(slurm_stack: SlurmStack) -> None:
    assert slurm_stack.running_jobs()  # the previous test's block is still within its idle time
    assert stop_stack(slurm_stack.process) == 0
    wait_until(lambda: not slurm_stack.jobs(), timeout_s=30, message="the stack's jobs to be cancelled")


def test_a_block_whose_job_fails_fails_its_tasks_typed(
    slurm_env: dict[str, str], functions_dir: Path, tmp_path: Path
) -> None:
    """A broken ``worker_init`` fails every block's job at once. Without Slurm accounting Parsl would take the
    job for completed and the task would wait forever; its end state read from slurmctld fails it instead."""
    broken = "echo dlhub-test-broken-init >&2; exit 3"
    with running_slurm_stack(tmp_path, slurm_env, DLHUB_WORKER__PARSL__WORKER_INIT=broken) as stack:
        alice = DLHubClient(stack.url, stack.token)
        servable = publish(alice, functions_dir, "where")
        for _ in range(2):  # the first task meets the failed block, the next one Parsl's failed executor
            handle = alice.run_async(servable, 0)
            record = wait_until(
                functools.partial(ended, alice, handle.task_id),
                timeout_s=CANCELLED_TASK_DEADLINE_S,
                message="the task of a failed block to end",
            )
            assert record["state"] == "failed", record
            assert record["error"]["type"] == "worker_lost"
            assert "dlhub-test-broken-init" in record["error"]["message"]  # the job's stderr says why
