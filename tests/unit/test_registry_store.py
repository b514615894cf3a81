"""Behaviour specific to the SQLite store; the shared contract is in tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlhub.common.config import StoreConfig, load_settings
from dlhub.registry.store.factory import make_store
from dlhub.registry.store.sqlite import SQLiteMetadataStore


async def test_default_backend_is_a_wal_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "nested" / "data")
    assert settings.store.backend == "sqlite"
    store = make_store(settings)
    assert isinstance(store, SQLiteMetadataStore)
    await store.open()
    try:
        assert store.path == tmp_path / "nested" / "data" / "registry.sqlite3" and store.path.is_file()
        rows = await store.db.execute_fetchall("PRAGMA journal_mode")
        assert next(iter(rows))[0] == "wal"
    finally:
        await store.close()


async def test_explicit_path(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, store=StoreConfig(sqlite_path=tmp_path / "elsewhere.db"))
    store = make_store(settings)
    assert isinstance(store, SQLiteMetadataStore) and store.path == tmp_path / "elsewhere.db"


async def test_concurrent_allocations_across_connections_to_one_file(tmp_path: Path) -> None:
    stores = [SQLiteMetadataStore(tmp_path / "registry.sqlite3") for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        records = await asyncio.gather(
            *[
                s.create_version(owner="alice", name="m", metadata={}, published_at_ms=1)
                for _ in range(20)
                for s in stores
            ]
        )
    finally:
        for store in stores:
            await store.close()
    assert sorted(r.version for r in records) == list(range(1, 61))


async def test_files_from_before_tombstones_gain_the_lifecycle_columns(tmp_path: Path) -> None:
    import aiosqlite

    path = tmp_path / "old.sqlite3"
    async with aiosqlite.connect(str(path)) as db:  # the versions table as first released
        await db.executescript(
            "CREATE TABLE versions (owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, "
            "status TEXT NOT NULL, status_reason TEXT NOT NULL DEFAULT '', digest TEXT NOT NULL DEFAULT '', "
            "files TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL, published_at_ms INTEGER NOT NULL, "
            "package_sha256 TEXT NOT NULL DEFAULT '', package_format TEXT NOT NULL DEFAULT 'none', "
            "build_task_id TEXT NOT NULL DEFAULT '', UNIQUE (owner, name, version));"
            "INSERT INTO versions (owner, name, version, status, metadata, published_at_ms) "
            "VALUES ('alice', 'm', 1, 'ready', '{}', 5);"
        )
        await db.commit()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        old = await store.get_version("alice", "m", 1)
        assert old is not None and not old.deprecated and not old.deleted and old.deleted_by == ""
        assert await store.set_deprecated("alice", "m", 1, deprecated=True, reason="r") is not None
        assert await store.mark_deleted("alice", "m", deleted_by="alice", deleted_at_ms=9) == [1]
    finally:
        await store.close()
