"""The embedded stack's services as separate processes on one data directory, without `dlhub up` (which would
restart a killed service at once): a fault test kills, stops and restarts any one of them when it chooses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.polling import wait_until

HEARTBEAT_INTERVAL_S = 0.25


class SeparateServices:
    """``python -m dlhub.<name>`` processes sharing a broker URL; logs in ``base/<name>.log``."""

    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        broker = f"tcp://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.base = base
        self.data_dir = base / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")} | {
            "DLHUB_HOME": str(base / "home"),
            "DLHUB_DATA_DIR": str(self.data_dir),
            "DLHUB_BROKER__BIND_URL": broker,
            "DLHUB_BUS__BROKER_URL": broker,
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
            "DLHUB_REGISTRY__PORT": str(self.port),
            "DLHUB_ENVIRONMENTS__MODE": "shared",
            "DLHUB_LOGGING__FORMAT": "json",
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start ``python -m dlhub.<name>`` (``name`` may carry a suffix: ``worker-2`` runs dlhub.worker);
        ``env`` overrides the shared environment for this process (a second registry's port, say)."""
        module = "dlhub." + name.split("-")[0]
        with (self.base / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self.env | (env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.processes[name].send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and reap it."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self, name: str) -> int:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes)[::-1]:
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.api + "/health", timeout=5).json()
        return body

    def handler_count(self, kind: str) -> int:
        try:
            counts: dict[str, int] = self.health().get("broker", {}).get("handler_counts", {})
        except (httpx.HTTPError, ValueError):
            return 0
        return counts.get(kind, 0)

    def wait_handlers(self, **counts: int) -> None:
        """Until the broker has exactly ``counts[kind]`` handlers of each kind (seen through the registry)."""
        try:
            wait_until(
                lambda: all(self.handler_count(kind) == n for kind, n in counts.items()),
                timeout_s=60,
                message=f"handlers {counts}",
            )
        except AssertionError as exc:  # say why: the tails of the logs of every service started here
            tails = {name: self.log(name)[-2000:] for name in self.processes}
            raise AssertionError(f"{exc}; service logs: {tails}") from None

    def wait_registry(self) -> None:
        def up() -> bool:
            process = self.processes["registry"]
            assert process.poll() is None, self.log("registry")
            try:
                return httpx.get(self.api + "/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=30, message="the registry")

    def token(self, user: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "dlhub.registry", "token", "create", user],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1]
