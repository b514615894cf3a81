"""The worker service's executor SIGKILLed mid-task: the task fails with worker_lost and a new executor serves
(moved from tests/stack/test_worker_service.py). Real broker and worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from tests.stack.test_worker_service import CODEC, Stack, pid_alive, run, running_worker, worker_client
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
