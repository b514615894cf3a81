"""Individual services as real processes (``python -m dlhub.<service>``) around a broker of their own.

``ServiceProcesses`` is the one way the tests start single services without `dlhub up` (which is
tests/support/stack.py): a broker on a free loopback port, the environment pointing every service at it, one
log file per process, and ``wait_registered`` to wait until a service has registered with the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig
from dlhub.common.errors import DLHubError
from tests.support.net import free_port
from tests.support.polling import await_until

HEARTBEAT_INTERVAL_S = 0.2


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM and wait: the exit code, or None when it had to be killed after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


class ServiceProcesses:
    """Service processes sharing a broker URL; logs in ``base/<name>.log``, data in ``base/data``."""

    def __init__(
        self,
        base: Path,
        *,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.broker_url = f"tcp://127.0.0.1:{free_port()}"
        self.bus = BusConfig(broker_url=self.broker_url, heartbeat_interval_s=heartbeat_interval_s)
        self.env = {
            **os.environ,
            "DLHUB_BROKER__BIND_URL": self.broker_url,
            "DLHUB_BUS__BROKER_URL": self.broker_url,
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(heartbeat_interval_s),
            "DLHUB_DATA_DIR": str(base / "data"),
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``python -m module`` (default ``dlhub.<name>``) logging to ``base/<name>.log``."""
        with (self.base / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module or f"dlhub.{name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        """SIGTERM one process: its exit code, or None when it ignored SIGTERM and had to be killed."""
        return stop_process(self.processes[name], timeout_s)

    def stop_all(self) -> dict[str, int | None]:
        """Stop every process, the last started first (the broker, started first, stops last)."""
        return {name: self.stop(name) for name in reversed(list(self.processes))}

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{self.log(name)[-4000:]}")

    async def wait_registered(
        self, client: BusClient, kind: str, *, timeout_s: float = 30, ready: str | None = None
    ) -> None:
        """Until a handler of ``kind`` has registered (and ``ready`` is in its log, when given)."""

        async def registered() -> bool:
            self.check_running()
            try:
                stats = await client.stats(timeout_s=0.5)
            except (DLHubError, TimeoutError):
                return False
            if not any(h.kind == kind for h in stats.handlers):
                return False
            return ready is None or ready in self.log(kind)

        await await_until(registered, timeout_s=timeout_s, message=f"the {kind} service to register")
