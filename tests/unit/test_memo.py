"""Memoization of run results (``dlhub.registry.memo``): the LRU and the key; end to end in tests/stack/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dlhub.common.config import RegistryConfig
from dlhub.registry.memo import ENTRY_OVERHEAD_BYTES, Memo, MemoLRU, MemoStep, is_deterministic, memo_key
from dlhub.registry.store import VersionRecord
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from tests.support.polling import await_until

# -- the LRU -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry_cost(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def test_lru_is_bounded_in_bytes_and_evicts_least_recently_used_first() -> None:
    value = b"v" * 100
    cost = entry_cost(b"k1", value)
    lru = MemoLRU(max_bytes=3 * cost, max_entry_bytes=1000, ttl_s=60)
    for key in (b"k1", b"k2", b"k3"):
        assert lru.put(key, value)
    assert lru.size_bytes == 3 * cost and len(lru) == 3
    assert lru.get(b"k1") == value  # k1 is now the most recently used; k2 the least
    assert lru.put(b"k4", value)
    assert b"k2" not in lru and {b"k1", b"k3", b"k4"} == {k for k in (b"k1", b"k3", b"k4") if k in lru}
    assert lru.size_bytes <= lru.max_bytes
    # A bigger entry evicts as many old ones as it needs, oldest first.
    big = b"b" * (2 * cost - ENTRY_OVERHEAD_BYTES - 2)
    assert lru.put(b"kb", big)
    assert b"k3" not in lru and b"k1" not in lru and b"k4" in lru and b"kb" in lru
    assert lru.size_bytes == entry_cost(b"k4", value) + entry_cost(b"kb", big) <= lru.max_bytes


def test_lru_replacing_a_key_keeps_the_size_exact() -> None:
    lru = MemoLRU(max_bytes=10_000, max_entry_bytes=1000, ttl_s=60)
    lru.put(b"k", b"x" * 10)
    lru.put(b"k", b"y" * 20)
    assert len(lru) == 1 and lru.size_bytes == entry_cost(b"k", b"y" * 20) and lru.get(b"k") == b"y" * 20


def test_lru_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    lru = MemoLRU(max_bytes=10_000, max_entry_bytes=1000, ttl_s=5, clock=clock)
    lru.put(b"k", b"value")
    clock.now += 4.9
    assert lru.get(b"k") == b"value"
    clock.now += 0.2
    assert lru.get(b"k") is None
    assert len(lru) == 0 and lru.size_bytes == 0


def test_lru_does_not_store_an_oversize_entry() -> None:
    lru = MemoLRU(max_bytes=10_000, max_entry_bytes=100, ttl_s=60)
    lru.put(b"k", b"small")
    assert not lru.put(b"big", b"x" * 101)
    assert b"big" not in lru and lru.get(b"k") == b"small"
    # Replacing a key by an oversize value drops the stale value rather than keep serving it.
    assert not lru.put(b"k", b"x" * 101)
    assert b"k" not in lru and lru.size_bytes == 0
    tiny = MemoLRU(max_bytes=ENTRY_OVERHEAD_BYTES + 10, max_entry_bytes=1000, ttl_s=60)
    assert not tiny.put(b"k", b"x" * 50)  # larger than the whole cache


# -- the key -------------------------------------------------------------------------------------------------


def record(
    *, version: int = 1, digest: str = "d1", deterministic: bool | None = None, where: str = "options"
) -> VersionRecord:
    servable: dict[str, Any] = {
        "methods": {
            "run": {"parameters": {"factor": 2}, "method_details": {}},
            "other": {"parameters": {}},
        },
        "options": {},
    }
    metadata: dict[str, Any] = {"dlhub": {"name": "f"}, "servable": servable}
    if deterministic is not None:
        if where == "options":
            servable["options"]["deterministic"] = deterministic
        elif where == "method":
            servable["methods"]["run"]["method_details"]["deterministic"] = deterministic
        else:
            metadata["dlhub"]["deterministic"] = deterministic
    return VersionRecord(
        owner="alice",
        name="f",
        version=version,
        status="ready",
        metadata=metadata,
        published_at_ms=0,
        digest=digest,
    )


def key_of(inputs: Any, parameters: dict[str, Any] | None = None, method: str = "run", **kw: Any) -> bytes:
    key = memo_key([MemoStep(record(**kw), method, parameters or {})], inputs)
    assert key is not None
    return key


def test_key_ignores_dict_key_order_at_every_depth() -> None:
    a = {"x": 1, "y": {"b": [1, {"q": 1, "p": 2}], "a": None}}
    b = {"y": {"a": None, "b": [1, {"p": 2, "q": 1}]}, "x": 1}
    assert key_of(a) == key_of(b)
    assert key_of(1, {"s": 1, "t": 2}) == key_of(1, {"t": 2, "s": 1})


def test_key_distinguishes_inputs_parameters_method_version_and_digest() -> None:
    base = key_of([1, 2])
    assert key_of([2, 1]) != base
    assert key_of([1, 2.0]) != base  # floats as they are: 2 and 2.0 are different inputs
    assert key_of([1, 2], {"factor": 3}) != base
    assert key_of([1, 2], method="other") != base
    assert key_of([1, 2], version=2) != base
    assert key_of([1, 2], digest="d2") != base
    assert key_of([1, 2], digest="") != key_of([1, 2], digest="", version=2)


def test_key_merges_the_method_defaults() -> None:
    # The method's default ``factor`` is 2: asking for it explicitly is the same request.
    assert key_of([1], {"factor": 2}) == key_of([1])
    assert key_of([1], {"factor": 2, "extra": None}) != key_of([1])


def test_pipeline_key_covers_every_step() -> None:
    one = [MemoStep(record(), "run", {})]
    two = [MemoStep(record(), "run", {}), MemoStep(record(version=2), "run", {})]
    assert memo_key(one, 1) != memo_key(two, 1)
    nondet = [MemoStep(record(), "run", {}), MemoStep(record(deterministic=False), "run", {})]
    assert memo_key(nondet, 1) is None


@pytest.mark.parametrize("where", ["options", "method", "dlhub"])
def test_non_deterministic_servables_have_no_key(where: str) -> None:
    assert not is_deterministic(record(deterministic=False, where=where), "run")
    assert memo_key([MemoStep(record(deterministic=False, where=where), "run", {})], 1) is None
    assert is_deterministic(record(deterministic=True, where=where), "run")
    assert is_deterministic(record(), "run")


async def test_shared_layer_serves_a_second_registry_and_expires(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await store.open()
    try:
        config = RegistryConfig(memo_shared=True, memo_ttl_s=0.5)
        first, second = Memo(config, store), Memo(config, store)
        key = key_of({"a": 1})
        await first.put_shared(key, b'"out"')
        assert second.get_local(key) is None
        assert await second.get(key) == b'"out"'
        assert second.get_local(key) == b'"out"'  # a store hit is kept in memory

        async def expired() -> bool:  # the entry's TTL is 0.5 s, in the store and in memory
            return await first.get(key) is None

        await await_until(expired, timeout_s=5, interval_s=0.05, message="the memo entry to expire")
        not_shared = Memo(RegistryConfig(), store)
        assert await not_shared.get_shared(key) is None
    finally:
        await store.close()
