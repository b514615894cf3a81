"""`dlhub up`: starts every service as its own process, becomes healthy quickly, stops all cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.support.stack import start_stack, stop_stack


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_up_starts_all_services_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    started = time.monotonic()
    process, info = start_stack(tmp_path, workers=2)
    elapsed = time.monotonic() - started
    try:
        health = httpx.get(info["url"] + "/api/v1/health", timeout=5).json()
        assert health["broker"]["handler_counts"] == {"builder": 1, "search": 1, "worker": 2}
        assert "handlers" not in health["broker"]  # the table is for administrators only
        services = _children(process.pid)
        assert len(services) == 6  # broker, registry, builder, search, 2 workers
        assert elapsed < 30
    finally:
        code = stop_stack(process)
    assert code == 0
    assert not [pid for pid in services if os.path.exists(f"/proc/{pid}") and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
