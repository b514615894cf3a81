"""Faults on the whole stack (`dlhub up`): malformed bytes sent to the broker, a worker SIGKILLed during a
task
(moved from tests/stack/test_e2e.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import zmq

from dlhub.client import DLHubClient
from dlhub.common.curve import load_client_keys
from tests.stack.test_e2e import publish_function
from tests.support.polling import wait_until
from tests.support.stack import HEARTBEAT_INTERVAL_S, StackInfo


@pytest.fixture(scope="module")
def noop(alice: DLHubClient, pkg_dir: Path) -> str:
    return publish_function(alice, pkg_dir, "noop")


def test_malformed_bytes_to_the_broker_do_not_stop_it(
    stack: StackInfo, alice: DLHubClient, noop: str
) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # An admitted key: the garbage must reach the broker's decoder (without one, the connection is refused).
    load_client_keys(stack.data_dir / "keys", "admin").apply(sock)
    sock.connect(stack.broker_url)
    try:
        for frames in (
            [b""],
            [os.urandom(64)],
            [b"\x01", b"\x02", b"\x03"],
            [b"\x07garbage"],
            [b"\x01\x81\xa4type\xa3bad"],
        ):
            sock.send_multipart(frames)
    finally:
        sock.close()
    assert alice.run(noop, None) == "hello world"
    assert alice.health()["status"] == "ok"


def test_worker_killed_during_a_task_fails_it_with_a_typed_error(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path, tmp_path: Path, noop: str
) -> None:
    name = publish_function(alice, pkg_dir, "slow")
    pidfile = tmp_path / "worker.pid"
    handle = alice.run_async(name, {"pidfile": str(pidfile), "seconds": 60})
    worker_pid = int(
        wait_until(
            lambda: pidfile.read_text() if pidfile.is_file() else None, timeout_s=20, message="task start"
        )
    )
    assert handle.status()["state"] == "running"
    os.kill(worker_pid, signal.SIGKILL)

    liveness_s = HEARTBEAT_INTERVAL_S * 3
    record = wait_until(
        lambda: (r := alice.status(handle.task_id))["state"] == "failed" and r,
        timeout_s=6 * liveness_s + 2,
        message="failure",
    )
    assert record["error"]["type"] in {"handler_lost", "worker_lost"}
    assert alice.run(noop, None) == "hello world"
    wait_until(
        lambda: stack.worker_count() >= 2, timeout_s=30, message="the launcher to restart the killed worker"
    )
