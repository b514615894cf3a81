"""Poison tasks: a servable that crashes its executor process every time (at import, or in its method).
Each such task fails for good, typed, after exactly one crash: it is never run again, and the executors keep
serving the other servables. Real executor processes (the ``pool`` fixture), then a real broker and worker."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from dlhub.common.bus import BusClient
from dlhub.common.errors import WorkerLost
from dlhub.common.ids import servable_topic
from dlhub.common.messages import RouteStep
from dlhub.worker.pool import ExecutorPool
from tests.fault.test_worker_service_faults import client, stack  # noqa: F401 (fixtures)
from tests.stack.test_worker_pool import call, output
from tests.stack.test_worker_service import CODEC, Stack, run
from tests.support.worker_servables import (
    PYTHON_SHIM,
    function_method,
    write_function_servable,
    write_servable,
)

POISON_MODULE = textwrap.dedent(
    """
    import os
    import pathlib

    # Every import records itself, then kills the process: the tests count the crashes with it.
    with (pathlib.Path(__file__).parent / "crashes.log").open("a") as _log:
        _log.write(f"{os.getpid()}\\n")
    os._exit(7)


    def run(x):
        return x
    """
)
POISON_TASKS = 4


def write_poison_servable(root: Path) -> Path:
    return write_servable(
        root,
        "alice",
        "poison",
        1,
        shim=PYTHON_SHIM,
        methods={"run": function_method("run", module="poison")},
        files={"poison.py": POISON_MODULE},
    )


def crashes(directory: Path) -> int:
    log = directory / "files" / "crashes.log"
    return len(log.read_text().split()) if log.exists() else 0


async def test_a_servable_crashing_at_import_fails_each_task_once_and_others_are_served(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """Pass criteria: ``POISON_TASKS`` tasks of a servable whose import kills the executor, interleaved with
    tasks of a good servable, all finish within 60 s; each poison task fails ``worker_lost`` naming the exit
    code, after exactly one crash each (the import ran ``POISON_TASKS`` times: no retry loop); every good task
    succeeds; the pool respawned once per crash and still serves afterwards."""
    poison = write_poison_servable(tmp_path)
    good = write_function_servable(tmp_path, "good")
    tasks = []
    for i in range(POISON_TASKS):
        tasks.append(asyncio.create_task(call(pool, poison, i)))
        tasks.append(asyncio.create_task(call(pool, good, i)))
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    for i in range(POISON_TASKS):
        failure = outcomes[2 * i]
        assert isinstance(failure, WorkerLost), failure
        assert "exited with code 7" in failure.message
        served = outcomes[2 * i + 1]
        assert not isinstance(served, BaseException) and output(served) == i + 1, served
    assert crashes(poison) == POISON_TASKS
    assert pool.respawns == POISON_TASKS
    assert output(await call(pool, good, 41)) == 42


async def test_poison_tasks_over_the_bus_fail_typed_and_the_worker_serves_on(
    stack: Stack,  # noqa: F811
    client: BusClient,  # noqa: F811
) -> None:
    """Pass criteria: through a real broker and worker, ``POISON_TASKS`` concurrent tasks of the servable
    whose import kills the executor all fail ``worker_lost`` within 60 s, after one crash each; the worker
    service stays up and registered, and tasks of its other servable succeed before and after."""
    poison = write_poison_servable(stack.servable_dir)
    route = [RouteStep(topic=servable_topic("alice", "poison", 1))]
    assert (await run(client, 1)).ok
    calls = [client.call(route, CODEC.encode_value(i), timeout_s=30) for i in range(POISON_TASKS)]
    for result in await asyncio.wait_for(asyncio.gather(*calls), 60):
        assert not result.ok and result.error is not None and result.error.code == "worker_lost", result
    assert crashes(poison) == POISON_TASKS
    assert stack.processes["worker"].poll() is None
    after = await run(client, 1, y=2)
    assert after.ok and CODEC.decode_value(after.output) == 3, after.error
