"""MongoDB faults: the registry exits when MongoDB is unreachable; a FerretDB restart keeps accepted publishes
(moved from tests/contract/test_registry_mongo.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.errors import StoreUnavailable
from dlhub.registry.auth import hash_token
from dlhub.registry.clock import now_ms
from dlhub.registry.http.keys import STORE
from tests.contract.test_registry_mongo import META, start_env
from tests.support.mongo import (
    FerretDBProcess,
    ferretdb_binary,
    mongo_config,
)
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.unit.test_registry_http import API, Env, error_of


def test_registry_process_exits_when_mongodb_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "DLHUB_HOME": str(tmp_path / "home"),
            "DLHUB_DATA_DIR": str(tmp_path / "data"),
            "DLHUB_REGISTRY__PORT": "0",
            "DLHUB_STORE__BACKEND": "mongodb",
            "DLHUB_STORE__MONGODB_URL": f"mongodb://dlhub:topsecret@127.0.0.1:{port}/",
            "DLHUB_STORE__MONGODB_SERVER_SELECTION_TIMEOUT_S": "1",
        }
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dlhub.registry"], env=env, capture_output=True, text=True, timeout=30
    )
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "registry cannot start" in log and "cannot reach MongoDB" in log, log
    assert f"mongodb://dlhub:***@127.0.0.1:{port}/" in log and "topsecret" not in log, log
    assert "Traceback" not in log, log


async def test_server_restart_keeps_accepted_publishes(tmp_path: Path) -> None:
    server = FerretDBProcess(ferretdb_binary(), tmp_path / "ferretdb")
    server.start()
    env: Env | None = None
    try:
        config = mongo_config(server.url, "dlhub_restart", timeout_s=1.0)
        env = await start_env(tmp_path / "registry", config)
        store = env.client.app[STORE]
        for expected in (1, 2):
            response = await env.publish("alice")
            assert response.status == 202 and (await response.json())["version"] == expected
        await env.settle()
        before = [v.version for v in await store.list_versions("alice", "iris_rf")]
        assert before == [1, 2]

        server.kill()
        with pytest.raises(StoreUnavailable) as info:
            await store.create_version(owner="alice", name="iris_rf", metadata=META, published_at_ms=1)
        assert server.url in info.value.message
        with pytest.raises(StoreUnavailable):
            await store.list_versions("alice", "iris_rf")
        # the registry stays up and answers with a typed 503, for writes, reads and token look-ups
        response = await env.publish("alice")
        assert (await error_of(response, 503))["type"] == "store_unavailable"
        response = await env.client.get(f"{API}/servables/bob/uncached/versions")
        assert (await error_of(response, 503))["type"] == "store_unavailable"
        response = await env.client.get(f"{API}/servables", headers={"Authorization": "Bearer dlh_uncached"})
        assert (await error_of(response, 503))["type"] == "store_unavailable"

        server.start()  # same port, same data directory

        async def reconnected() -> Any:
            # PyMongo reconnects by itself; the first operations may still see the old state
            try:
                return await store.create_version(
                    owner="alice", name="iris_rf", metadata=META, published_at_ms=now_ms()
                )
            except StoreUnavailable:
                return None

        record = await await_until(
            reconnected, timeout_s=30, interval_s=0, message="a reconnect after the restart"
        )
        assert record.version == 3
        response = await env.publish("alice")
        assert response.status == 202, await response.text()
        assert (await response.json())["version"] == 4
        await env.settle()
        after = await store.list_versions("alice", "iris_rf")
        assert [v.version for v in after] == [1, 2, 3, 4]
        assert after[0].metadata["dlhub"]["owner"] == "alice" and after[0].status == "ready"
        assert await store.get_token(hash_token(env.tokens["bob"])) is not None
    finally:
        if env is not None:
            await env.client.close()
        server.kill()
