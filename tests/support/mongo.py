"""Helpers for tests that need a MongoDB-compatible server (real MongoDB or FerretDB).

The server comes from the shared ``mongodb_url`` fixture of tests/conftest.py (``DLHUB_TEST_MONGODB_URL``; it
skips locally and fails in CI when no server answers).
``FerretDBProcess`` runs a dedicated FerretDB on its own port and data directory, for tests that kill and
restart the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from dlhub.common.config import StoreConfig
from tests.support.net import free_port
from tests.support.polling import wait_until
from tests.support.servers import missing_test_server


def resolve_mongodb_url(request: pytest.FixtureRequest) -> str:
    """The shared ``mongodb_url`` fixture, requested lazily (only parameters that need a server ask)."""
    return str(request.getfixturevalue("mongodb_url"))


def unique_database() -> str:
    return "dlhub_test_" + uuid.uuid4().hex[:16]


def mongo_config(url: str, database: str, *, timeout_s: float = 5.0) -> StoreConfig:
    return StoreConfig(
        backend="mongodb",
        mongodb_url=url,
        mongodb_database=database,
        mongodb_server_selection_timeout_s=timeout_s,
        mongodb_connect_timeout_s=timeout_s,
    )


def drop_database(url: str, database: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


def ferretdb_binary() -> Path:
    """The FerretDB binary that scripts/test-servers builds into its cache."""
    cache = Path(os.environ.get("DLHUB_TEST_CACHE") or Path.home() / ".cache" / "dlhub-test-servers")
    path = cache / "bin" / "ferretdb"
    if not path.is_file():
        missing_test_server(f"no FerretDB binary at {path}")
    probe = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing_test_server(
            f"the FerretDB binary at {path} does not run: {(probe.stderr or probe.stdout)[:300]}"
        )
    return path


class FerretDBProcess:
    """A dedicated FerretDB (SQLite handler) on its own port and data directory, to kill and restart."""

    def __init__(self, binary: Path, base: Path) -> None:
        self.binary = binary
        self.base = base
        self.data_dir = base / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.debug_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 30.0) -> None:
        assert self.process is None, "already running"
        self.starts += 1
        log = (self.base / f"ferretdb-{self.starts}.log").open("wb")
        cmd = [
            str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr=127.0.0.1:{self.port}", f"--debug-addr=127.0.0.1:{self.debug_port}",
            f"--state-dir={self.base}", "--telemetry=disable", "--log-level=warn",
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"FerretDB exited early: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            wait_until(listening, timeout_s=timeout_s, interval_s=0.05, message="FerretDB to listen")
        except AssertionError:
            if process.poll() is not None:
                raise
            raise AssertionError(f"FerretDB did not listen within {timeout_s} s: {self.log_tail()}") from None
        client: MongoClient[dict[str, Any]] = MongoClient(self.url, serverSelectionTimeoutMS=10_000)
        try:
            client.admin.command("ping")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the harshest way a server can go away."""
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def log_tail(self) -> str:
        path = self.base / f"ferretdb-{self.starts}.log"
        return path.read_text(errors="replace")[-2000:] if path.is_file() else ""
