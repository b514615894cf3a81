"""The 3-minute soak (`python -m loadtest.soak --minutes 3`): a mixed load with a worker and the broker
SIGKILLed on a schedule loses no task and answers no 5xx outside the faults' windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_three_minute_soak_with_faults_loses_no_task(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "loadtest.soak", "--minutes", "3", "--warmup-s", "20",
        "--fault-interval-s", "45", "--faults", "worker-kill,broker-kill", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("DLHUB_URL", None)
    env.pop("DLHUB_TOKEN", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    reports = sorted(tmp_path.glob("soak-*.json"))
    assert reports, f"no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(reports[-1].read_text())
    summary = report["summary"]
    # the run really ran: tasks of every kind, and each fault injected and recovered from
    assert summary["tasks_submitted"] > 50, summary
    assert {"async_run", "publish"} <= set(report["tasks"]["by_kind"]), report["tasks"]
    assert {f["name"] for f in report["faults"]} == {"worker-kill", "broker-kill"}, report["faults"]
    assert summary["faults_unrecovered"] == 0, report["faults"]
    assert summary["tasks_lost"] == 0, report["tasks"]["lost_tasks"]
    assert summary["server_errors_outside_fault_windows"] == 0, report["errors"]
    assert summary["healthy_at_end"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(tmp_path.glob("soak-*.svg")), "no RSS plot"
