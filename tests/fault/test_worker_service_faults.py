"""The worker service's executor SIGKILLed mid-task: the task fails with worker_lost and a new executor serves
(moved from tests/stack/test_worker_service.py); the worker service SIGSTOPped mid-task: purged, its task
fails typed, and thawed it serves again. Real broker and worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from tests.stack.test_worker_service import (
    CODEC,
    HEARTBEAT_INTERVAL_S,
    Stack,
    pid_alive,
    run,
    running_worker,
    worker_client,
)
from tests.support.polling import await_until


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_worker(tmp_path) as processes:
        yield processes


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BusClient]:
    async with worker_client(stack) as bus:
        yield bus


async def test_killing_the_executor_mid_task_fails_it_with_worker_lost(
    stack: Stack, client: BusClient, tmp_path: Path
) -> None:
    pidfile = tmp_path / "executor.pid"
    slow = asyncio.create_task(run(client, {"pidfile": str(pidfile), "seconds": 60}, method="slow"))
    child = int(
        await await_until(
            lambda: pidfile.is_file() and pidfile.read_text(), timeout_s=30, message="the task to start"
        )
    )
    os.kill(child, signal.SIGKILL)
    result = await asyncio.wait_for(slow, 30)
    assert not result.ok and result.error is not None
    assert result.error.code == "worker_lost"
    assert "SIGKILL" in result.error.message
    assert stack.processes["worker"].poll() is None

    after = await run(client, None, method="whoami")
    assert after.ok, after.error
    new_child = CODEC.decode_value(after.output)["pid"]
    assert new_child != child

    assert stack.stop("worker") == 0
    await await_until(
        lambda: not pid_alive(new_child), timeout_s=10, message="the executor process to stop with the worker"
    )
    assert "worker stopped" in stack.log("worker")


async def test_a_stopped_worker_is_purged_its_task_fails_typed_and_once_thawed_it_serves_again(
    stack: Stack, client: BusClient, tmp_path: Path
) -> None:
    """Pass criteria: the worker service SIGSTOPped with a task running: the broker purges it after its
    liveness (3 heartbeats), the task fails with ``handler_lost`` within liveness + 2 s, and the stopped
    worker is no longer listed; after SIGCONT it registers again by itself and serves new tasks (the first
    within the lost task's remaining run time + 10 s), and the worker process never exits."""
    pidfile = tmp_path / "executor.pid"
    lost = asyncio.create_task(run(client, {"pidfile": str(pidfile), "seconds": 3}, method="slow"))
    await await_until(lambda: pidfile.is_file(), timeout_s=30, message="the task to start")
    worker = stack.processes["worker"]

    async def workers() -> int:
        return sum(h.kind == "worker" for h in (await client.stats()).handlers)

    worker.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        result = await asyncio.wait_for(lost, 3 * HEARTBEAT_INTERVAL_S + 10)
        assert not result.ok and result.error is not None, result
        assert result.error.code == "handler_lost", result.error
        assert time.monotonic() - stopped_at < 3 * HEARTBEAT_INTERVAL_S + 2
        assert await workers() == 0
    finally:
        worker.send_signal(signal.SIGCONT)
    await await_until(lambda: _true(workers), timeout_s=10, message="the thawed worker to register again")
    after = await run(client, 5, timeout_s=15)
    assert after.ok and CODEC.decode_value(after.output) == 6, after.error
    assert worker.poll() is None


async def test_a_thawed_worker_drops_the_work_the_broker_failed_and_serves_at_once(
    stack: Stack, client: BusClient, tmp_path: Path
) -> None:
    """Pass criteria: the worker (one executor process) SIGSTOPped at the start of a 30 s task; the broker
    purges it and fails the task ``handler_lost``. Thawed, the worker starts a new broker session and cancels
    the old session's task (its result would be dropped): its executor is killed and replaced, so a new run
    is answered within 10 s of the re-registration, not after the 30 s task."""
    pidfile = tmp_path / "executor.pid"
    lost = asyncio.create_task(
        run(client, {"pidfile": str(pidfile), "seconds": 30}, method="slow", timeout_s=60)
    )
    child = int(
        await await_until(
            lambda: pidfile.is_file() and pidfile.read_text(), timeout_s=30, message="the task to start"
        )
    )
    worker = stack.processes["worker"]
    worker.send_signal(signal.SIGSTOP)
    try:
        result = await asyncio.wait_for(lost, 3 * HEARTBEAT_INTERVAL_S + 10)
        assert result.error is not None and result.error.code == "handler_lost", result
    finally:
        worker.send_signal(signal.SIGCONT)

    async def workers() -> int:
        return sum(h.kind == "worker" for h in (await client.stats()).handlers)

    await await_until(lambda: _true(workers), timeout_s=10, message="the thawed worker to register again")
    registered_at = time.monotonic()
    after = await run(client, 5, timeout_s=25)
    assert after.ok and CODEC.decode_value(after.output) == 6, after.error
    assert time.monotonic() - registered_at < 10
    await await_until(
        lambda: not pid_alive(child), timeout_s=5, message="the abandoned task's executor to end"
    )
    assert "cancelling the tasks of the ended broker session" in stack.log("worker")


async def _true(count: Callable[[], Awaitable[int]]) -> bool:
    return await count() == 1
