"""The embedded SQLite store unavailable: another process holds the database's write lock (a backup tool, an
operator's ``sqlite3`` shell left in a transaction). Writes answer 503 ``store_unavailable`` after the busy
timeout instead of a 500, the registry stays up, and once the lock is released everything works again and
nothing was lost. (MongoDB down and back: tests/fault/test_registry_mongo_faults.py.)"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub.client import DLHubClient
from dlhub.common.errors import StoreUnavailable
from tests.stack.test_e2e import function_doc
from tests.support.separate import SeparateServices
from tests.support.stack import unique

BUSY_TIMEOUT_S = 0.5


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SeparateServices]:
    services = SeparateServices(tmp_path, env={"DLHUB_STORE__SQLITE_BUSY_TIMEOUT_S": str(BUSY_TIMEOUT_S)})
    try:
        for name in ("broker", "registry", "builder"):
            services.start(name)
        services.wait_registry()
        services.wait_handlers(builder=1)
        yield services
    finally:
        services.stop_all()


def test_sqlite_locked_by_another_process_is_503_then_recovers(
    services: SeparateServices, pkg_dir: Path
) -> None:
    """Pass criteria: while another process holds the SQLite write lock, a publish answers 503 with the
    JSON envelope ``store_unavailable`` within busy timeout + 5 s, and reads of committed data still answer
    200 (WAL); the registry process stays up; after the lock is released a publish succeeds and builds to
    ``ready``, and the version published before the outage is intact."""
    client = DLHubClient(services.url, services.token("alice"))
    before = unique("before")
    client.publish(function_doc(before, "noop"), base_dir=pkg_dir, timeout_s=60)

    holder = sqlite3.connect(services.data_dir / "registry.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            client.publish(function_doc(unique("locked"), "noop"), base_dir=pkg_dir, wait=False)
        assert time.monotonic() - started < BUSY_TIMEOUT_S + 5
        assert "SQLite" in caught.value.message
        assert client.versions(f"alice/{before}")[0]["status"] == "ready"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert services.processes["registry"].poll() is None

    after = client.publish(function_doc(unique("after"), "noop"), base_dir=pkg_dir, timeout_s=60)
    assert after["status"] == "ready"
    assert client.versions(f"alice/{before}")[0]["status"] == "ready"
