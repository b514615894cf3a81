"""The real embedded stack, started with `dlhub up` as separate processes on loopback, and its helpers.

``start_stack`` is the one way the tests start the stack and wait until it is ready: the session's shared
``stack`` fixture (tests/conftest.py) and the tests that need a stack of their own all use it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.polling import wait_until

# Liveness is three intervals: 0.75 s lost a busy worker under a load average of 10 on two cores (a
# 10,000-row batch, handler_lost); 1.5 s still finds a killed process quickly.
HEARTBEAT_INTERVAL_S = 0.5
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


@dataclass
class StackInfo:
    url: str
    api: str
    data_dir: Path
    broker_url: str
    tokens: dict[str, str]
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.api + "/health", timeout=5).json()
        return body

    def worker_count(self) -> int:
        count: int = self.health().get("broker", {}).get("handler_counts", {}).get("worker", 0)
        return count


def stack_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DLHUB_HOME": str(home),
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
            "DLHUB_REGISTRY__MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            # alice (the stack's own user) administers it: GET /health shows her the handler table.
            "DLHUB_REGISTRY__ADMIN_USERS": '["alice"]',
        }
    )
    env.pop("DLHUB_URL", None)
    env.pop("DLHUB_TOKEN", None)
    return env


def start_stack(
    base: Path,
    *,
    workers: int = 2,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 60,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    data_dir = base / "data"
    port, broker_port = free_port(), free_port()
    # The bus authenticated with CurveZMQ, as in production: a process given this environment (a second
    # registry, say) joins the bus with the stack's keys, which `dlhub up` writes on its first start.
    curve = {"DLHUB_BUS__CURVE_ENABLED": "true", "DLHUB_BUS__CURVE_KEYS_DIR": str(data_dir / "keys")}
    env = stack_env(base / "home") | curve | (extra_env or {})
    cmd = [
        sys.executable, "-m", "dlhub.client.cli", "up",
        "--data-dir", str(data_dir), "--port", str(port), "--broker-port", str(broker_port),
        "--workers", str(workers), "--user", "alice", *extra_args,
    ]  # fmt: skip
    log = (base / "up.log").open("wb")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_json = data_dir / "client.json"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"dlhub up exited early: {(base / 'up.log').read_text()}")
        return client_json.is_file()

    wait_until(ready, timeout_s=ready_timeout_s, interval_s=0.05, message="dlhub up to become ready")
    info = {
        "url": f"http://127.0.0.1:{port}",
        "broker_url": f"tcp://127.0.0.1:{broker_port}",
        "data_dir": data_dir,
        "env": env,
        "alice": json.loads(client_json.read_text())["token"],
    }
    return process, info


def stop_stack(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


@contextmanager
def running_stack(
    base: Path,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    users: Sequence[str] = ("alice",),
    check_exit: bool = True,
) -> Iterator[StackInfo]:
    """A stack of the test's own in ``base`` (``start_stack``), with a token for each of ``users`` (alice is
    the stack's own user), stopped on exit; ``check_exit``: its ``dlhub up`` must then exit 0 (a test that
    kills services on purpose passes False)."""
    process, info = start_stack(base, workers=workers, extra_env=extra_env)
    try:
        env, data_dir = info["env"], info["data_dir"]
        tokens = {
            user: info["alice"] if user == "alice" else create_token(env, data_dir, user) for user in users
        }
        yield StackInfo(
            url=info["url"],
            api=info["url"] + "/api/v1",
            data_dir=info["data_dir"],
            broker_url=info["broker_url"],
            tokens=tokens,
            process=process,
            env=info["env"],
        )
    finally:
        code = stop_stack(process)
        if check_exit:
            assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


def create_token(env: dict[str, str], data_dir: Path, user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "token", "create", user, "--data-dir", str(data_dir)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def unique(prefix: str) -> str:
    """A servable name no other test uses (the session's stack is shared)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
