"""Executor pool faults: a child process crashing or dying while idle, tasks past their deadline killing the
process (moved from tests/stack/test_worker_pool.py). Real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from dlhub.common.errors import TaskTimeout, WorkerLost
from dlhub.worker.pool import ExecutorPool
from tests.stack.test_worker_pool import _live, call, output
from tests.support.polling import await_until
from tests.support.worker_servables import (
    function_method,
    write_function_servable,
)


@pytest.mark.parametrize(
    ("function", "expected"), [("exit_hard", "exited with code 3"), ("sigkill", "killed by signal SIGKILL")]
)
async def test_child_crash_fails_the_task_with_worker_lost_and_is_respawned(
    pool: ExecutorPool, tmp_path: Path, function: str, expected: str
) -> None:
    methods = {"run": function_method("add"), "crash": function_method(function)}
    directory = write_function_servable(tmp_path, "crashy", methods=methods)
    before = await call(pool, directory, 1)
    with pytest.raises(WorkerLost) as caught:
        await call(pool, directory, None, method="crash")
    assert caught.value.code == "worker_lost"
    assert expected in caught.value.message
    after = await call(pool, directory, 1)
    assert output(after) == 2
    assert after.pid != before.pid
    assert pool.respawns == 1


async def test_process_dying_while_idle_is_replaced_before_the_next_task(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    directory = write_function_servable(tmp_path, "idle")
    (old_pid,) = pool.pids
    os.kill(old_pid, signal.SIGKILL)
    await await_until(
        lambda: pool.pids not in ([], [old_pid]), timeout_s=30, message="a replacement executor process"
    )
    reply = await call(pool, directory, 1)
    assert output(reply) == 2 and reply.pid != old_pid


async def test_timeout_kills_the_process_and_the_next_task_runs(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {"run": function_method("add"), "sleep": function_method("sleep")}
    directory = write_function_servable(tmp_path, "sleepy", methods=methods)
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as caught:
        await call(pool, directory, 60, method="sleep", timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert caught.value.code == "task_timeout"
    assert output(await call(pool, directory, 1)) == 2


async def test_a_crash_fails_the_running_task_and_reruns_the_queued_ones(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """Only the task the process was running is lost; the requests behind it never started and run on the
    replacement process."""
    methods = {"run": function_method("add"), "crash": function_method("sleep_then_exit")}
    directory = write_function_servable(tmp_path, "crash_queue", methods=methods)
    (old_pid,) = pool.pids
    crash = asyncio.create_task(call(pool, directory, 0.3, method="crash"))
    await await_until(
        lambda: sum(len(p.inflight) for p in _live(pool)) == 1,
        timeout_s=10,
        message="the crashing task in flight",
    )
    queued = [asyncio.create_task(call(pool, directory, i)) for i in range(pool.depth - 1)]
    with pytest.raises(WorkerLost, match="exited with code 3"):
        await crash
    replies = await asyncio.gather(*queued)
    assert [output(r) for r in replies] == [i + 1 for i in range(pool.depth - 1)]
    assert all(r.pid != old_pid for r in replies)
    assert pool.respawns == 1


async def test_the_running_task_past_its_deadline_kills_the_process_and_queued_tasks_rerun(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    methods = {"run": function_method("add"), "sleep": function_method("sleep")}
    directory = write_function_servable(tmp_path, "kill_queue", methods=methods)
    stuck = asyncio.create_task(call(pool, directory, 60, method="sleep", timeout_s=0.5))
    await await_until(
        lambda: sum(len(p.inflight) for p in _live(pool)) == 1,
        timeout_s=10,
        message="the stuck task in flight",
    )
    queued = asyncio.create_task(call(pool, directory, 41, timeout_s=30))
    with pytest.raises(TaskTimeout, match="was killed"):
        await stuck
    assert output(await queued) == 42
    assert pool.respawns == 1
