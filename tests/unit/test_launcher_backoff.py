"""`dlhub up` restarts a dead service with a backoff that grows in a crash loop and starts over once the
service had been up for ``RESTART_STABLE_S`` (a real exited child process; nothing is respawned here, the
restart is only scheduled)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlhub.client.launcher import RESTART_STABLE_S, ServiceProcess, Stack, StackOptions


def dead_service(restarts: int, up_for_s: float) -> ServiceProcess:
    popen = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    popen.wait(timeout=30)
    service = ServiceProcess("worker-1", "dlhub.worker", popen=popen, restarts=restarts)
    service.started_at = time.monotonic() - up_for_s
    return service


@pytest.mark.parametrize(
    ("restarts", "up_for_s", "delay_s"),
    [
        (0, 1.0, 0.5),  # first death: the shortest delay
        (3, 1.0, 4.0),  # a crash loop: 0.5 * 2**3
        (10, 1.0, 30.0),  # capped
        (10, RESTART_STABLE_S + 1.0, 0.5),  # it had been up long enough: the loop is over
    ],
)
def test_restart_delay(tmp_path: Path, restarts: int, up_for_s: float, delay_s: float) -> None:
    stack = Stack(StackOptions(data_dir=tmp_path))
    service = dead_service(restarts, up_for_s)
    before = time.monotonic()
    stack._restart_if_dead(service, {})
    assert service.next_restart_at - before == pytest.approx(delay_s, abs=0.25)
    assert service.popen is not None and service.popen.returncode == 3  # not respawned yet
