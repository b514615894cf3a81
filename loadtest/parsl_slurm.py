"""Parsl on Slurm: how long the first block takes, and what a task's trip through a Slurm block costs.

    eval "$(scripts/test-servers env)"   # DLHUB_TEST_SLURM_CONF: the test tooling's one-node cluster
    python -m loadtest.parsl_slurm [--requests 50] [--cold 3]

Three stacks in turn (``dlhub up``, one worker each), the same noop servable on each: the local back end
(executor processes), the Parsl back end with the local provider (a block on this machine, started before the
worker registers), and the Parsl back end with SlurmProvider (no block until a task waits, one block of two
Parsl workers at most, released after ``MAX_IDLETIME_S`` idle). Measured: for Slurm, ``--cold`` times the
first task through an empty pool (sbatch, scheduling, the job's Parsl workers starting and connecting, the
servable loading), each after the previous block was released; for all three, ``--requests`` sequential
warm synchronous REST runs (p50/p99). Results go to ``loadtest/results/parsl_slurm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import KeepAliveClient, RunningStack, embedded_stack, summary_ms, write_results
from loadtest.paper.machine import describe_machine

MODULE = "slurm_bench"
SOURCE = 'import os\n\n\ndef noop(x):\n    return os.environ.get("SLURM_JOB_ID")\n'
MAX_IDLETIME_S = 4
RELEASE_TIMEOUT_S = 120.0
WARMUP = 5


def slurm_env(conf: str) -> dict[str, str]:
    """``[worker.parsl]`` of tests/contract/test_parsl_slurm.py, default heartbeats and job polling."""
    python_path = os.environ.get("PYTHONPATH", "")
    worker_init = f"export PATH={Path(sys.executable).parent}:$PATH; export PYTHONPATH={python_path}"
    return {
        "SLURM_CONF": conf,
        "DLHUB_WORKER__BACKEND": "parsl",
        "DLHUB_WORKER__PARSL__PROVIDER": "slurm",
        "DLHUB_WORKER__PARSL__PARTITION": os.environ.get("DLHUB_TEST_SLURM_PARTITION", "dlhub"),
        "DLHUB_WORKER__PARSL__WALLTIME_S": "600",
        "DLHUB_WORKER__PARSL__WORKERS_PER_NODE": "2",
        "DLHUB_WORKER__PARSL__INIT_BLOCKS": "0",
        "DLHUB_WORKER__PARSL__MIN_BLOCKS": "0",
        "DLHUB_WORKER__PARSL__MAX_BLOCKS": "1",
        "DLHUB_WORKER__PARSL__MAX_IDLETIME_S": str(MAX_IDLETIME_S),
        "DLHUB_WORKER__PARSL__STRATEGY_PERIOD_S": "1",
        "DLHUB_WORKER__PARSL__EXCLUSIVE": "false",
        "DLHUB_WORKER__PARSL__SCHEDULER_OPTIONS": "#SBATCH --export=NONE",
        "DLHUB_WORKER__PARSL__WORKER_INIT": worker_init,
        "DLHUB_WORKER__PARSL__ADDRESS": "127.0.0.1",
    }


CONFIGS: dict[str, dict[str, str]] = {
    "local": {},
    "parsl-local": {"DLHUB_WORKER__BACKEND": "parsl", "DLHUB_WORKER__PARSL__WORKERS_PER_NODE": "2"},
}


def stack_jobs(stack: RunningStack, conf: str) -> dict[str, str]:
    """Slurm jobs whose submit script is in this stack's data directory (its Parsl run directory): states."""
    listing = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%T|%o"],
        env=dict(os.environ, SLURM_CONF=conf),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    rows = (line.split("|", 2) for line in listing.splitlines() if line.count("|") == 2)
    return {job: state for job, state, command in rows if command.startswith(str(stack.data_dir))}


def wait_released(stack: RunningStack, conf: str) -> None:
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while stack_jobs(stack, conf):
        if time.monotonic() > deadline:
            raise TimeoutError("the idle block was not released")
        time.sleep(0.2)  # polling squeue with a deadline


def cold_run(stack: RunningStack, conf: str, client: KeepAliveClient, servable: str) -> dict[str, float]:
    """One task through an empty pool, with squeue polled meanwhile: when the block's job was submitted
    (Parsl's strategy and sbatch), when it ran (Slurm's scheduling) and when the task's answer came."""
    marks: dict[str, float] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(run_once, client, servable)
        while not answer.done():
            states = set(stack_jobs(stack, conf).values())
            now_ms = round((time.perf_counter() - started) * 1000, 1)
            if states:
                marks.setdefault("job_submitted_ms", now_ms)
            if "RUNNING" in states:
                marks.setdefault("job_running_ms", now_ms)
            time.sleep(0.05)  # sampling squeue while the request is in flight
        elapsed_ms, _ = answer.result()
    marks["task_answered_ms"] = round(elapsed_ms, 1)
    return marks


def publish(stack: RunningStack) -> str:
    name = f"noop_{os.getpid()}_{time.time_ns()}"
    doc = python_function_document(
        name=name,
        module=MODULE,
        function="noop",
        files=[f"{MODULE}.py"],
        title="noop",
        authors=["Bench, Mark"],
    )
    doc["dlhub"]["deterministic"] = False  # every run must reach the worker (no memo)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{MODULE}.py").write_text(SOURCE)
        DLHubClient(stack.url, stack.token).publish(doc, base_dir=Path(tmp))
    return f"bench/{name}"


def run_once(client: KeepAliveClient, servable: str) -> tuple[float, Any]:
    started = time.perf_counter()
    status, body = client.post(f"/api/v1/servables/{servable}/run", json.dumps({"inputs": 1}).encode())
    elapsed_ms = (time.perf_counter() - started) * 1000
    record = json.loads(body)
    if status != 200 or record.get("state") != "completed":
        raise RuntimeError(f"run failed: HTTP {status} {body[:500]!r}")
    return elapsed_ms, record["output"]


def measure(
    config: str, env: dict[str, str], conf: str | None, *, requests: int, cold: int
) -> dict[str, Any]:
    with embedded_stack(workers=1, extra_env=env) as stack:
        servable = publish(stack)
        client = KeepAliveClient(stack.url, stack.token)
        try:
            cold_runs: list[dict[str, float]] = []
            for _ in range(cold):
                assert conf is not None
                wait_released(stack, conf)
                cold_runs.append(cold_run(stack, conf, client, servable))
            for _ in range(WARMUP):
                run_once(client, servable)
            warm = [run_once(client, servable) for _ in range(requests)]
        finally:
            client.close()
    result: dict[str, Any] = {"warm": summary_ms([ms for ms, _ in warm])}
    if conf:
        result["first_task_empty_pool"] = cold_runs
        result["warm_slurm_jobs"] = len({job for _, job in warm})
    print(f"{config:<12} warm p50 {result['warm']['p50_ms']:8.2f} ms  p99 {result['warm']['p99_ms']:8.2f} ms")
    for marks in cold_runs:
        print(f"{'':<12} first task through an empty pool: {marks}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--cold", type=int, default=3)
    args = parser.parse_args()
    conf = os.environ.get("DLHUB_TEST_SLURM_CONF") or os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit(
            'no Slurm: run `scripts/test-servers start --only slurm` and eval "$(scripts/test-servers env)"'
        )
    results: dict[str, Any] = {}
    for config, env in CONFIGS.items():
        results[config] = measure(config, env, None, requests=args.requests, cold=0)
    results["parsl-slurm"] = measure(
        "parsl-slurm", slurm_env(conf), conf, requests=args.requests, cold=args.cold
    )
    results["slurm_extra_p50_ms"] = round(
        results["parsl-slurm"]["warm"]["p50_ms"] - results["parsl-local"]["warm"]["p50_ms"], 3
    )
    path = write_results(
        "parsl_slurm",
        {
            "benchmark": "Parsl back end through a one-node Slurm vs the local provider and local executors",
            "command": "python -m loadtest.parsl_slurm " + " ".join(sys.argv[1:]),
            "machine": describe_machine(),
            "max_idletime_s": MAX_IDLETIME_S,
            **results,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
