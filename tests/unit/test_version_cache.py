"""The registry's in-memory version cache: coherent with local writes, bounded by the versions it holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.registry.store.cache import VersionCache
from dlhub.registry.store.sqlite import SQLiteMetadataStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMetadataStore]:
    store = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def publish(store: SQLiteMetadataStore, name: str, count: int) -> None:
    for _ in range(count):
        await store.create_version(owner="alice", name=name, metadata={"title": name}, published_at_ms=1)


async def test_a_hit_is_served_from_memory_until_invalidated(store: SQLiteMetadataStore) -> None:
    cache = VersionCache(store, max_versions=10)
    await publish(store, "a", 2)
    first = await cache.get("alice", "a")
    await publish(store, "a", 1)  # a write that bypasses the cache: the cached entry is still served
    assert await cache.get("alice", "a") is first and len(first) == 2
    cache.invalidate("alice", "a")
    assert [v.version for v in await cache.get("alice", "a")] == [1, 2, 3]
    assert cache.versions_held == 3


async def test_the_servables_cached_longest_ago_make_room(store: SQLiteMetadataStore) -> None:
    cache = VersionCache(store, max_versions=5)
    for name in ("a", "b"):
        await publish(store, name, 3)
    a = await cache.get("alice", "a")
    b = await cache.get("alice", "b")  # 3 + 3 > 5: "a" goes
    assert len(cache) == 1 and cache.versions_held == 3
    assert await cache.get("alice", "b") is b
    assert await cache.get("alice", "a") is not a  # read again, and now "b" went
    assert len(cache) == 1 and cache.versions_held == 3 and await cache.get("alice", "b") is not b


async def test_a_servable_with_more_versions_than_the_bound_is_held_alone(store: SQLiteMetadataStore) -> None:
    cache = VersionCache(store, max_versions=4)
    await publish(store, "small", 2)
    await publish(store, "big", 5)
    small = await cache.get("alice", "small")
    big = await cache.get("alice", "big")
    assert len(big) == 5 and await cache.get("alice", "big") is big
    assert len(cache) == 1 and cache.versions_held == 5
    assert await cache.get("alice", "small") is not small  # read again; "big" made way for it
    assert len(cache) == 1 and cache.versions_held == 2


async def test_unknown_servables_are_not_held(store: SQLiteMetadataStore) -> None:
    cache = VersionCache(store, max_versions=4)
    for index in range(100):
        assert await cache.get("alice", f"nothing-{index}") == ()
    assert len(cache) == 0 and cache.versions_held == 0
    await publish(store, "a", 1)
    await cache.get("alice", "a")
    cache.clear()
    assert len(cache) == 0 and cache.versions_held == 0
