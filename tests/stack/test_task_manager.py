"""A worker is a Task Manager that can run anywhere: its own data directory (nothing shared with the registry
or the builder), its own bus key, the broker's address; it fetches each version's bundle from the registry
by digest, refuses a tampered one, re-registers after a crash, and gets only the servables it serves."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import HEARTBEAT_INTERVAL_S, create_token, start_stack, stop_stack, unique

FUNCTIONS = """
import importlib.metadata
import os
import sys


def environment(name):
    # The interpreter's prefix says which environment (and whose data directory) ran the task.
    return {"version": importlib.metadata.version(name), "prefix": sys.prefix, "worker_pid": os.getppid()}


def where(x):
    # The executor's parent is the worker that ran the task; this file's path says where it was loaded from.
    return {"worker_pid": os.getppid(), "file": os.path.abspath(__file__), "x": x}
"""
UNSERVED_TIMEOUT_S = 2.0


@dataclass
class Stack:
    url: str
    broker_url: str
    data_dir: Path
    env: dict[str, str]
    tokens: dict[str, str]
    up_pid: int

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def client(self, user: str) -> DLHubClient:
        return DLHubClient(self.url, self.tokens[user])

    def task_managers(self) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.tokens['alice']}"}  # alice administers it
        response = httpx.get(self.api + "/health", headers=headers, timeout=5)
        if response.status_code == 503:  # the broker is away
            return []
        return [h for h in response.json()["broker"]["handlers"] if h["kind"] == "worker"]

    def broker_pid(self) -> int | None:
        """The broker process `dlhub up` runs now (its supervisor restarts it when it dies)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if ppid == self.up_pid and b"dlhub.broker" in argv:
                return int(entry.name)
        return None


@contextlib.contextmanager
def task_manager_stack(
    base: Path, labels: list[str], extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A stack without general workers, with key pairs ``worker-<label>`` for Task Managers of its own."""
    keys = base / "data" / "keys"
    # The remote workers' keys exist before the broker starts (it admits the keys it finds then); `dlhub up`
    # adds the stack's own.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dlhub.broker",
            "keys",
            "create",
            "--dir",
            str(keys),
            *(f"worker-{label}" for label in labels),
        ],
        check=True,
        capture_output=True,
    )
    # No general worker: only the Task Managers below serve, from their own data directories.
    process, info = start_stack(
        base,
        workers=0,
        extra_env={"DLHUB_BROKER__UNSERVED_TIMEOUT_S": str(UNSERVED_TIMEOUT_S)} | (extra_env or {}),
    )
    try:
        tokens = {"alice": info["alice"], "bob": create_token(info["env"], info["data_dir"], "bob")}
        yield Stack(info["url"], info["broker_url"], info["data_dir"], info["env"], tokens, process.pid)
    finally:
        assert stop_stack(process) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with task_manager_stack(tmp_path_factory.mktemp("tm-stack"), ["tm1", "tm2"]) as running:
        yield running


class TaskManager:
    """``dlhub worker`` in a process of its own: data directory elsewhere, holding just its key pair and the
    broker's public key, and an environment without the stack's settings."""

    def __init__(
        self,
        stack: Stack,
        base: Path,
        label: str,
        serves: list[str],
        *,
        site: str = "",
        devices: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.stack, self.label, self.serves = stack, label, serves
        self.site, self.devices, self.extra_env = site or f"site-{label}", devices, extra_env or {}
        self.data_dir = base / f"{label}-data"
        keys = self.data_dir / "keys"
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy(stack.data_dir / "keys" / "broker.key", keys)
        shutil.copy(stack.data_dir / "keys" / f"worker-{label}.key_secret", keys)
        self.log = base / f"{label}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")}
        env |= {"DLHUB_HOME": str(self.data_dir.parent / "home"), "DLHUB_BUS__HEARTBEAT_INTERVAL_S": "0.25"}
        env |= self.extra_env
        cmd = [
            sys.executable, "-m", "dlhub.client.cli", "worker",
            "--broker", self.stack.broker_url, "--data-dir", str(self.data_dir),
            "--registry-url", self.stack.url, "--site", self.site, "--instance-id", self.label,
            "--key-name", f"worker-{self.label}",
            *(arg for pattern in self.serves for arg in ("--serves", pattern)),
            *(arg for device in self.devices for arg in ("--device", device)),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.registered, timeout_s=60, message=f"task manager {self.label} to register")

    def registered(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.label} exited: {self.log.read_text()[-4000:]}")
        return any(h["instance_id"] == self.label for h in self.stack.task_managers())

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def cached_digests(self) -> set[str]:
        cache = self.data_dir / "bundle-cache"
        return {p.name for p in cache.iterdir() if not p.name.startswith(".")} if cache.is_dir() else set()


@pytest.fixture
def tm1(stack: Stack, tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(stack, tmp_path, "tm1", ["*"])
    manager.start()
    yield manager
    manager.stop()


def publish(
    stack: Stack,
    user: str,
    pkg: Path,
    function: str = "where",
    placement: dict[str, Any] | None = None,
    **document: Any,
) -> str:
    name = unique(function)
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "wherefns.py").write_text(FUNCTIONS)
    doc = python_function_document(
        name=name, module="wherefns", function=function, files=["wherefns.py"], title="Where",
        authors=["Doe, Jane"], **document,
    )  # fmt: skip
    doc["dlhub"]["deterministic"] = False  # every call reaches a worker (no memo)
    if placement is not None:
        doc["servable"]["placement"] = placement
    assert stack.client(user).publish(doc, base_dir=pkg)["status"] == "ready"
    return f"{user}/{name}"


def run(stack: Stack, user: str, servable: str, x: int = 1) -> dict[str, Any]:
    record: dict[str, Any] = stack.client(user).run_detailed(servable, x, timeout_s=60)
    return record


def bundles(stack: Stack) -> set[Path]:
    return set((stack.data_dir / "bundles").glob("*.bin"))


def test_a_task_manager_with_an_empty_data_dir_fetches_checks_and_serves(
    stack: Stack, tm1: TaskManager, tmp_path: Path
) -> None:
    [info] = [h for h in stack.task_managers() if h["instance_id"] == "tm1"]
    assert info["site"] == "site-tm1" and info["serves"] == ["*"] and info["capacity"] >= 1
    assert "local" in info["executors"]
    assert tm1.cached_digests() == set()
    before = bundles(stack)
    servable = publish(stack, "alice", tmp_path / "pkg")
    [bundle] = bundles(stack) - before  # the registry keeps the built version's bundle by its sha256
    record = run(stack, "alice", servable)
    assert record["state"] == "completed", record
    output = record["output"]
    assert output["worker_pid"] == tm1.pid
    # Loaded from the Task Manager's own cache, the bundle's digest naming the folder.
    assert output["file"].startswith(str(tm1.data_dir / "bundle-cache" / bundle.stem) + "/")
    assert tm1.cached_digests() == {bundle.stem}
    assert not (tm1.data_dir / "servables").exists()  # nothing read from (or written to) a servable store
    assert run(stack, "alice", servable, 2)["output"]["x"] == 2
    # The CLI shows it.
    cli = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "--url", stack.url, "--token", stack.tokens["alice"],
         "workers", "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert '"site": "site-tm1"' in cli.stdout


def test_a_servable_with_its_own_environment_runs_in_a_venv_rebuilt_from_its_lock_on_the_task_manager(
    stack: Stack, tm1: TaskManager, tmp_path: Path
) -> None:
    servable = publish(stack, "alice", tmp_path / "pkg", "environment", dependencies={"iniconfig": "1.1.1"})
    record = stack.client("alice").run_detailed(servable, "iniconfig", timeout_s=300)
    assert record["state"] == "completed", record
    output = record["output"]
    assert output["version"] == "1.1.1" and output["worker_pid"] == tm1.pid
    assert output["prefix"].startswith(str(tm1.data_dir / "envs" / "venv") + "/")


def test_a_tampered_bundle_is_refused_and_nothing_is_cached(
    stack: Stack, tm1: TaskManager, tmp_path: Path
) -> None:
    before = bundles(stack)
    servable = publish(stack, "alice", tmp_path / "pkg")
    [bundle] = bundles(stack) - before
    bundle.write_bytes(bundle.read_bytes() + b"tampered")  # the registry's copy altered on its disk
    record = run(stack, "alice", servable)
    assert record["state"] == "failed"
    assert record["error"]["type"] == "package_tampered", record["error"]
    assert bundle.stem in record["error"]["message"]
    assert bundle.stem not in tm1.cached_digests()
    staging = tm1.data_dir / "bundle-cache" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_a_killed_task_manager_restarts_re_registers_and_serves(
    stack: Stack, tm1: TaskManager, tmp_path: Path
) -> None:
    servable = publish(stack, "alice", tmp_path / "pkg")
    assert run(stack, "alice", servable)["output"]["worker_pid"] == tm1.pid
    old = {h["handler_id"] for h in stack.task_managers() if h["instance_id"] == "tm1"}
    tm1.stop(signal.SIGKILL)
    wait_until(
        lambda: not any(h["instance_id"] == "tm1" for h in stack.task_managers()),
        timeout_s=10 * HEARTBEAT_INTERVAL_S + 10,
        message="the broker to drop the killed task manager",
    )
    tm1.start()  # same data directory: the bundle is cached already
    new = {h["handler_id"] for h in stack.task_managers() if h["instance_id"] == "tm1"}
    assert new and not new & old
    record = run(stack, "alice", servable, 3)
    assert record["state"] == "completed", record
    assert record["output"]["worker_pid"] == tm1.pid


def test_routing_honours_the_patterns_served(stack: Stack, tm1: TaskManager, tmp_path: Path) -> None:
    bob_only = TaskManager(stack, tmp_path, "tm2", ["bob/*"])
    bob_only.start()
    try:
        [info] = [h for h in stack.task_managers() if h["instance_id"] == "tm2"]
        assert info["serves"] == ["bob/*"] and info["topics"] == ["servable/bob/*"]
        alices = publish(stack, "alice", tmp_path / "alice")
        bobs = publish(stack, "bob", tmp_path / "bob")
        # Both are up: alice's tasks only ever reach the worker serving everything.
        assert {run(stack, "alice", alices, i)["output"]["worker_pid"] for i in range(6)} == {tm1.pid}
        assert bob_only.pid in {run(stack, "bob", bobs, i)["output"]["worker_pid"] for i in range(8)}
        tm1.stop()
        wait_until(
            lambda: [h["instance_id"] for h in stack.task_managers()] == ["tm2"],
            timeout_s=30,
            message="only tm2 to be registered",
        )
        # Nobody serves alice now: her task fails typed after broker.unserved_timeout_s, not at its deadline.
        record = run(stack, "alice", alices)
        assert record["state"] == "failed" and record["error"]["type"] == "no_handler", record
        assert run(stack, "bob", bobs)["output"]["worker_pid"] == bob_only.pid
        assert bob_only.cached_digests() and "alice" not in bob_only.log.read_text()
    finally:
        bob_only.stop()


def test_a_task_manager_reconnects_to_a_restarted_broker_and_registers_again(
    stack: Stack, tm1: TaskManager, tmp_path: Path
) -> None:
    """Last in the module: the stack's broker is SIGKILLed (and restarted by `dlhub up`)."""
    servable = publish(stack, "alice", tmp_path / "pkg")
    assert run(stack, "alice", servable)["output"]["worker_pid"] == tm1.pid
    broker = stack.broker_pid()
    assert broker is not None
    os.kill(broker, signal.SIGKILL)
    wait_until(
        lambda: stack.broker_pid() not in (None, broker),
        timeout_s=30,
        message="dlhub up to restart the broker",
    )
    wait_until(
        lambda: any(h["instance_id"] == "tm1" and h["site"] == "site-tm1" for h in stack.task_managers()),
        timeout_s=30,
        message="the same task manager process to register with the new broker",
    )
    assert tm1.process is not None and tm1.process.poll() is None  # reconnected, not restarted
    record = run(stack, "alice", servable, 4)
    assert record["state"] == "completed", record
    assert record["output"]["worker_pid"] == tm1.pid
