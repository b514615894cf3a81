"""The executor protocol over a unix socket (how docker executors talk to the worker, without the ``docker run
-i`` relay), with local child processes: the pool's crash, deadline and re-run behaviour is the same as over
pipes (the fault tests of ``test_worker_pool_faults`` run again here over the socket), the listener accepts
one connection only and from the expected user, and a closed pool lets its executors exit on their own."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.common.errors import WorkerLost
from dlhub.worker.environments import executor_socket
from dlhub.worker.pool import ExecutorCommand, ExecutorPool, Launch
from tests.fault.test_worker_pool_faults import (
    test_a_crash_fails_the_running_task_and_reruns_the_queued_ones,
    test_child_crash_fails_the_task_with_worker_lost_and_is_respawned,
    test_process_dying_while_idle_is_replaced_before_the_next_task,
    test_the_running_task_past_its_deadline_kills_the_process_and_queued_tasks_rerun,
    test_timeout_kills_the_process_and_the_next_task_runs,
)
from tests.stack.test_worker_pool import (
    _live,
    call,
    output,
    test_model_output_to_stdout_does_not_corrupt_the_pipe,
    test_requests_are_pipelined_and_replies_matched_by_sequence,
)
from tests.support.polling import await_until
from tests.support.worker_servables import (
    EXECUTOR_MAX_MESSAGE_BYTES,
    function_method,
    write_function_servable,
)

__all__ = [  # the pipe-mode tests, collected again here with the socket-mode ``pool`` fixture below
    "test_a_crash_fails_the_running_task_and_reruns_the_queued_ones",
    "test_child_crash_fails_the_task_with_worker_lost_and_is_respawned",
    "test_model_output_to_stdout_does_not_corrupt_the_pipe",
    "test_process_dying_while_idle_is_replaced_before_the_next_task",
    "test_requests_are_pipelined_and_replies_matched_by_sequence",
    "test_the_running_task_past_its_deadline_kills_the_process_and_queued_tasks_rerun",
    "test_timeout_kills_the_process_and_the_next_task_runs",
]


class SocketLaunches:
    """An ``ExecutorCommand``: a local executor told to connect to a fresh listener (as a docker one is)."""

    def __init__(self, *, peer_uid: int | None = None, socket_arg: str | None = None) -> None:
        self.peer_uid = peer_uid
        self.socket_arg = socket_arg
        self.private: list[Path] = []
        self.reaped: list[Path] = []

    def __call__(self, args: list[str]) -> Launch:
        private, shared, listener = executor_socket()
        self.private.append(private)
        path = self.socket_arg or str(shared / "executor.sock")

        async def reap() -> None:
            self.reaped.append(private)
            shutil.rmtree(private, ignore_errors=True)

        argv = [sys.executable, "-m", "dlhub.worker.executor", *args, "--socket", path]
        return Launch(argv=argv, reap=reap, listener=listener, peer_uid=self.peer_uid)


def socket_pool(command: ExecutorCommand, processes: int = 1) -> ExecutorPool:
    return ExecutorPool(processes=processes, max_message_bytes=EXECUTOR_MAX_MESSAGE_BYTES, command=command)


@pytest.fixture
async def pool() -> AsyncIterator[ExecutorPool]:
    executors = socket_pool(SocketLaunches(peer_uid=os.getuid()))
    await executors.start()
    try:
        yield executors
    finally:
        await executors.close()


async def test_the_protocol_runs_over_the_socket_and_the_listener_is_gone(tmp_path: Path) -> None:
    launches = SocketLaunches(peer_uid=os.getuid())
    executors = socket_pool(launches)
    await executors.start()
    try:
        (child,) = _live(executors)
        assert child.over_socket
        assert child.process.stdin is None and child.process.stdout is None  # stdio unused (/dev/null)
        (private,) = launches.private
        assert (private.stat().st_mode & 0o777) == 0o700
        assert list((private / "s").iterdir()) == [], "the listener was not unlinked once connected"
        directory = write_function_servable(tmp_path, "adder")
        reply = await call(executors, directory, 2)
        assert output(reply) == 3 and reply.pid == child.pid
    finally:
        await executors.close()
    assert child.returncode == 0, "the executor did not exit on its own when the worker closed the socket"
    assert launches.reaped == [private] and not private.exists()


async def test_a_connection_from_another_user_is_refused() -> None:
    launches = SocketLaunches(peer_uid=os.getuid() + 1)
    executors = socket_pool(launches)
    with pytest.raises(WorkerLost, match=r"refused a connection from pid \d+, uid"):
        await executors.start()
    assert launches.reaped == launches.private and not any(p.exists() for p in launches.private)


async def test_an_executor_that_cannot_connect_fails_the_start_with_its_exit_code(tmp_path: Path) -> None:
    launches = SocketLaunches(socket_arg=str(tmp_path / "nowhere.sock"))
    executors = socket_pool(launches)
    with pytest.raises(WorkerLost, match="exited with code 2 at start-up"):
        await executors.start()
    assert launches.reaped == launches.private and not any(p.exists() for p in launches.private)


async def test_closing_lets_the_running_task_finish(tmp_path: Path) -> None:
    """The worker half-closes the socket (as it closes a pipe): the executor still sends the reply of the
    task it was running, then exits."""
    methods = {"sleep": function_method("sleep_with_pidfile")}
    directory = write_function_servable(tmp_path, "sleeper", methods=methods)
    pidfile = tmp_path / "pid"
    executors = socket_pool(SocketLaunches())
    await executors.start()
    (child,) = _live(executors)
    task = asyncio.create_task(
        call(executors, directory, {"pidfile": str(pidfile), "seconds": 0.5}, method="sleep")
    )
    await await_until(pidfile.exists, timeout_s=10, message="the task running")
    closing = asyncio.create_task(child.close())
    assert output(await task) == "finished"
    await closing
    assert child.returncode == 0
    await executors.close()
