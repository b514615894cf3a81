"""MongoDB-specific behaviour of the registry: start-up errors, indexes, TTL, outages, REST end to end.

The backend-neutral behaviour lives in tests/test_store_contract.py. Tests that need a server use the shared
``mongodb_url`` fixture (``DLHUB_TEST_MONGODB_URL``); the outage test runs its own FerretDB process so it
can kill and restart it without disturbing other tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo.errors import DuplicateKeyError

from dlhub.common.config import RegistryConfig, StoreConfig, load_settings
from dlhub.common.errors import ERRORS_BY_CODE, StoreUnavailable
from dlhub.registry.app import create_app
from dlhub.registry.auth import create_token, hash_token
from dlhub.registry.backends import make_store
from dlhub.registry.keys import STORE
from dlhub.registry.mongo_store import MongoMetadataStore, redact_url
from dlhub.registry.store import TaskRecord
from dlhub.registry.tasks import now_ms
from tests.support.mongo import (
    FerretDBProcess,
    drop_database,
    ferretdb_binary,
    mongo_config,
    resolve_mongodb_url,
    unique_database,
)
from tests.support.net import free_port
from tests.support.servers import is_ferretdb
from tests.unit.test_registry_http import API, Env, FakeBus, error_of, make_package, sdk_example

META = {"dlhub": {"name": "m", "visible_to": ["public"]}}
FERRETDB_NO_TTL = (
    "FerretDB 1.x does not implement TTL indexes (createIndexes: expireAfterSeconds NotImplemented)"
)


@pytest.fixture
def mongodb(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(URL, is FerretDB) of the shared test server."""
    url = resolve_mongodb_url(request)
    return url, is_ferretdb(url)


@pytest.fixture
async def mongo_store(mongodb: tuple[str, bool]) -> AsyncIterator[MongoMetadataStore]:
    url, _ = mongodb
    database = unique_database()
    store = MongoMetadataStore(mongo_config(url, database))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await asyncio.to_thread(drop_database, url, database)


# -- configuration and start-up -------------------------------------------------------------------------


def test_store_unavailable_is_a_registered_503() -> None:
    assert ERRORS_BY_CODE["store_unavailable"] is StoreUnavailable
    assert StoreUnavailable.http_status == 503


def test_redact_url() -> None:
    assert redact_url("mongodb://bob:s3cr%40t@db1:27017,db2/x?authSource=admin") == (
        "mongodb://bob:***@db1:27017,db2/x?authSource=admin"
    )
    assert (
        redact_url("mongodb+srv://bob:pw@cluster.example.org/")
        == "mongodb+srv://bob:***@cluster.example.org/"
    )
    assert redact_url("mongodb://bob@host/") == "mongodb://bob@host/"
    assert redact_url("mongodb://127.0.0.1:27017/") == "mongodb://127.0.0.1:27017/"


def test_backend_is_chosen_by_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(data_dir=tmp_path, store=StoreConfig(backend="mongodb", mongodb_database="x"))
    store = make_store(settings)
    assert isinstance(store, MongoMetadataStore) and store.database_name == "x"
    monkeypatch.setenv("DLHUB_STORE__BACKEND", "mongodb")
    monkeypatch.setenv("DLHUB_STORE__MONGODB_SERVER_SELECTION_TIMEOUT_S", "1.5")
    from_env = load_settings(data_dir=tmp_path).store
    assert from_env.backend == "mongodb" and from_env.mongodb_server_selection_timeout_s == 1.5


async def test_unreachable_server_is_a_typed_error_naming_the_url() -> None:
    port = free_port()  # nothing listens here
    config = StoreConfig(
        backend="mongodb",
        mongodb_url=f"mongodb://alice:hunter2@127.0.0.1:{port}/",
        mongodb_server_selection_timeout_s=0.5,
    )
    store = MongoMetadataStore(config)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert time.monotonic() - started < 5
    message = info.value.message
    assert f"mongodb://alice:***@127.0.0.1:{port}/" in message and "hunter2" not in message
    assert "cannot reach MongoDB" in message and ("refused" in message or "failed" in message)
    with pytest.raises(RuntimeError):  # not open
        await store.get_version("a", "b", 1)


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


# -- schema -----------------------------------------------------------------------------------------------


async def test_indexes_created_at_open(mongo_store: MongoMetadataStore, mongodb: tuple[str, bool]) -> None:
    _, ferret = mongodb
    versions = await mongo_store.versions.index_information()
    assert versions["servable_version"]["key"] == [("owner", 1), ("name", 1), ("version", 1)]
    assert versions["servable_version"]["unique"] is True
    assert versions["status"]["key"][0] == ("status", 1)
    assert versions["package_sha256"]["key"] == [("package_sha256", 1)]
    tasks = await mongo_store.tasks.index_information()
    expiry = [spec for spec in tasks.values() if spec["key"] == [("expires_at", 1)]]
    assert len(expiry) == 1
    # opening again (a second registry process, a restart) is idempotent
    again = MongoMetadataStore(mongo_store.config)
    await again.open()
    await again.close()
    if ferret:
        assert not mongo_store.ttl_index
        pytest.skip(FERRETDB_NO_TTL)
    assert mongo_store.ttl_index
    assert expiry[0]["expireAfterSeconds"] == 0


async def test_documents_are_plain_bson(mongo_store: MongoMetadataStore) -> None:
    odd = {"$set": 1, "a.b": {"$x": 2}}
    await mongo_store.create_version(owner="alice", name="m", metadata=odd, published_at_ms=1)
    doc = await mongo_store.versions.find_one({"owner": "alice"})
    assert doc is not None and isinstance(doc["metadata_json"], str) and doc["version"] == 1
    task = TaskRecord(
        task_id="t", kind="run", state="pending", servable="s", created_at_ms=1, updated_at_ms=1,
        expires_at_ms=1_700_000_000_123,
    )  # fmt: skip
    await mongo_store.save_task(task)
    task_doc = await mongo_store.tasks.find_one({"_id": "t"})
    assert task_doc is not None
    assert task_doc["expires_at"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)


async def test_ttl_monitor_deletes_expired_tasks(
    mongo_store: MongoMetadataStore, mongodb: tuple[str, bool]
) -> None:
    if mongodb[1]:
        pytest.skip(FERRETDB_NO_TTL)
    admin = mongo_store.db.client.admin
    try:  # make the TTL monitor run every second instead of every minute
        await admin.command({"setParameter": 1, "ttlMonitorSleepSecs": 1})
    except Exception as exc:  # a managed server may forbid it; then wait for the default monitor
        print(f"cannot speed up the TTL monitor: {exc}")
    expired = TaskRecord(
        task_id="old", kind="run", state="completed", servable="s", created_at_ms=1, updated_at_ms=1,
        expires_at_ms=now_ms() - 1000,
    )  # fmt: skip
    await mongo_store.save_task(expired)
    assert await mongo_store.get_task("old", now_ms=now_ms()) is None  # expired on read at once
    deadline = time.monotonic() + 90
    while await mongo_store.tasks.find_one({"_id": "old"}) is not None:  # then deleted by the server
        assert time.monotonic() < deadline, "the TTL monitor did not delete the expired task"
        await asyncio.sleep(0.5)


async def test_unique_index_is_the_last_line_of_defence(mongo_store: MongoMetadataStore) -> None:
    for _ in range(3):
        await mongo_store.create_version(owner="alice", name="m", metadata=META, published_at_ms=1)
    with pytest.raises(DuplicateKeyError):
        await mongo_store.versions.insert_one(
            {"owner": "alice", "name": "m", "version": 2, "metadata_json": "{}"}
        )
    await mongo_store.counters.delete_many({})  # the counter is lost: allocation restarts at 1 and collides
    numbers = await asyncio.gather(
        *[
            mongo_store.create_version(owner="alice", name="m", metadata=META, published_at_ms=1)
            for _ in range(5)
        ]
    )
    assert sorted(r.version for r in numbers) == [4, 5, 6, 7, 8]
    stored = [v.version for v in await mongo_store.list_versions("alice", "m")]
    assert stored == list(range(1, 9))


# -- the registry over HTTP on MongoDB --------------------------------------------------------------------


async def start_env(tmp_path: Path, store: StoreConfig) -> Env:
    settings = load_settings(data_dir=tmp_path, registry=RegistryConfig(port=0), store=store)
    bus = FakeBus()
    app = create_app(settings, bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    env = Env(client, bus, settings)
    for user in ("alice", "bob"):
        env.tokens[user] = await create_token(app[STORE], user)
    return env


async def test_registry_http_end_to_end_on_mongodb(tmp_path: Path, mongodb: tuple[str, bool]) -> None:
    url, _ = mongodb
    database = unique_database()
    env = await start_env(tmp_path, mongo_config(url, database))
    try:
        assert isinstance(env.client.app[STORE], MongoMetadataStore)
        response = await env.publish("alice", package=make_package())
        assert response.status == 202, await response.text()
        accepted = await response.json()
        assert accepted["version"] == 1 and accepted["status"] == "building"
        await env.settle()
        doc = sdk_example()
        doc["datacite"]["titles"] = [{"title": "Iris RF v2"}]
        response = await env.client.put(f"{API}/servables/alice/iris_rf", json=doc, headers=env.auth("alice"))
        assert response.status == 202 and (await response.json())["version"] == 2
        await env.settle()

        described = await (await env.client.get(f"{API}/servables/alice/iris_rf")).json()
        assert described["status"] == "ready" and described["digest"] == "sha256:abc"
        assert described["metadata"]["dlhub"]["owner"] == "alice"
        task = await env.client.get(f"{API}/tasks/{accepted['task_id']}", headers=env.auth("alice"))
        assert (await task.json())["state"] == "completed"

        versions = await (await env.client.get(f"{API}/servables/alice/iris_rf/versions")).json()
        assert [v["version"] for v in versions["versions"]] == [1, 2]
        listed = await (await env.client.get(f"{API}/servables")).json()
        assert "alice/iris_rf" in str(listed)
        run = await env.client.post(
            f"{API}/servables/alice/iris_rf/run", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}
        )
        assert (await run.json())["servable"] == "alice/iris_rf@2"

        response = await env.client.delete(
            f"{API}/servables/alice/iris_rf/versions/2", headers=env.auth("bob")
        )
        assert response.status == 403
        response = await env.client.delete(
            f"{API}/servables/alice/iris_rf/versions/2", headers=env.auth("alice")
        )
        assert await response.json() == {"deleted": [2]}
        response = await env.client.delete(f"{API}/servables/alice/iris_rf", headers=env.auth("alice"))
        assert await response.json() == {"deleted": [1]}
        await env.settle()
        # deleted versions are kept as tombstones: 410 Gone (was 404 before tombstones)
        assert (await env.client.get(f"{API}/servables/alice/iris_rf")).status == 410
        response = await env.publish("alice")  # numbers are never reused
        assert (await response.json())["version"] == 3
        await env.settle()
    finally:
        await env.client.close()
        await asyncio.to_thread(drop_database, url, database)


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
        deadline = time.monotonic() + 30
        while True:  # PyMongo reconnects by itself; the first operations may still see the old state
            try:
                record = await store.create_version(
                    owner="alice", name="iris_rf", metadata=META, published_at_ms=now_ms()
                )
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "no reconnect after the restart"
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
