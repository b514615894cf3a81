"""MongoDB-specific behaviour of the registry against a real server: indexes, TTL, REST end to end.

The backend-neutral behaviour lives in tests/contract/test_store_contract.py; the configuration tests without
a server in tests/unit/test_registry_mongo_config.py; the start-up error and the outage (its own FerretDB
process, killed and restarted) in tests/fault/test_registry_mongo_faults.py. Tests that need a server use the
shared ``mongodb_url`` fixture (``DLHUB_TEST_MONGODB_URL``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo.errors import DuplicateKeyError

from dlhub.common.config import RegistryConfig, StoreConfig, load_settings
from dlhub.registry.auth import create_token
from dlhub.registry.clock import now_ms
from dlhub.registry.http.app import create_app
from dlhub.registry.http.keys import STORE
from dlhub.registry.store import TaskRecord
from dlhub.registry.store.mongo import MongoMetadataStore
from tests.support.mongo import (
    drop_database,
    mongo_config,
    resolve_mongodb_url,
    unique_database,
)
from tests.support.polling import await_until
from tests.support.servers import is_ferretdb
from tests.unit.test_registry_http import API, Env, FakeBus, make_package, sdk_example

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

    async def deleted() -> bool:  # then deleted by the server
        return await mongo_store.tasks.find_one({"_id": "old"}) is None

    await await_until(
        deleted, timeout_s=90, interval_s=0.5, message="the TTL monitor to delete the expired task"
    )


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
