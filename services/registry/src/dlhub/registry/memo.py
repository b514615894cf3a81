"""Memoization of run results: a cache checked at the registry before a task enters the bus.

Key: sha256 over the servable version's identity (owner, name, version number and package digest), the
method, and the canonical msgpack of the inputs and of the parameters merged with the method's defaults.
Canonical means dict keys sorted recursively (msgspec's ``order="sorted"``); floats are encoded as they are,
so ``1`` and ``1.0`` are different keys. Version numbers are never reused, so a new version (or a servable
re-published under the same name) never meets an old version's entries.

Values are the output already encoded as JSON, so a hit costs one dict lookup and no re-encode. Layers:
an in-process LRU bounded in bytes with a TTL (``MemoLRU``), then optionally the metadata store
(``registry.memo_shared``), which shares entries between registry instances; the store keeps them until
their expiry. Only successful results are stored.

A servable opts out with ``servable.options.deterministic: false``,
``servable.methods.<m>.method_details.deterministic: false`` or ``dlhub.deterministic: false``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from dlhub.common.codec import value_enc_hook
from dlhub.common.config import RegistryConfig
from dlhub.common.logging import get_logger
from dlhub.registry.store import MetadataStore, VersionRecord

log = get_logger(__name__)

# Rough per-entry bookkeeping cost (dict slot, OrderedDict node, tuple, key object) counted in the bound.
ENTRY_OVERHEAD_BYTES = 160
# Version 2: values are the worker's msgpack output (version 1 stored JSON); old shared entries never match.
KEY_VERSION = b"dlhub-memo-2"

# NumPy arrays (msgpack request bodies) key by dtype, shape and bytes, as the codec encodes them.
_canonical = msgspec.msgpack.Encoder(order="sorted", enc_hook=value_enc_hook)


def canonical(value: Any) -> bytes:
    """Msgpack of ``value`` with every dict's keys sorted (recursively); raises TypeError if not encodable."""
    return _canonical.encode(value)


def _method_spec(record: VersionRecord, method: str) -> dict[str, Any]:
    methods = (record.metadata.get("servable") or {}).get("methods") or {}
    spec = methods.get(method) if isinstance(methods, dict) else None
    return spec if isinstance(spec, dict) else {}


def default_parameters(record: VersionRecord, method: str) -> dict[str, Any]:
    defaults = _method_spec(record, method).get("parameters")
    return defaults if isinstance(defaults, dict) else {}


def is_deterministic(record: VersionRecord, method: str) -> bool:
    """False when the servable, the method or the dlhub section declares ``deterministic: false``."""
    metadata = record.metadata
    dlhub = metadata.get("dlhub")
    if isinstance(dlhub, dict) and dlhub.get("deterministic") is False:
        return False
    servable = metadata.get("servable")
    if isinstance(servable, dict):
        options = servable.get("options")
        if isinstance(options, dict) and options.get("deterministic") is False:
            return False
    details = _method_spec(record, method).get("method_details")
    return not (isinstance(details, dict) and details.get("deterministic") is False)


@dataclass(frozen=True, slots=True)
class MemoStep:
    """One step of what is being run: the version, the method and the request's parameters."""

    record: VersionRecord
    method: str
    parameters: dict[str, Any]


def memo_key(steps: Sequence[MemoStep], inputs: Any) -> bytes | None:
    """The cache key of running ``inputs`` through ``steps``; None when a step is non-deterministic.

    Also None when the inputs or parameters cannot be encoded canonically (the run itself reports that).
    """
    digest = hashlib.sha256(KEY_VERSION)
    try:
        for step in steps:
            record = step.record
            if not is_deterministic(record, step.method):
                return None
            merged = {**default_parameters(record, step.method), **step.parameters}
            digest.update(
                canonical((record.owner, record.name, record.version, record.digest, step.method, merged))
            )
        digest.update(canonical(inputs))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return None
    return digest.digest()


class MemoLRU:
    """An LRU map of bytes to bytes, bounded by total size, whose entries expire after ``ttl_s``.

    An entry larger than ``max_entry_bytes`` (or than ``max_bytes``) is not stored. Not thread-safe; the
    registry uses it from its one event loop.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        max_entry_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    @staticmethod
    def cost(key: bytes, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD_BYTES

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        value, expires = entry
        if expires <= self._clock():
            self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store ``value``; return False (storing nothing) if it is too large."""
        cost = self.cost(key, value)
        if len(value) > self.max_entry_bytes or cost > self.max_bytes:
            self._remove(key)
            return False
        self._remove(key)
        while self._entries and self.size_bytes + cost > self.max_bytes:
            oldest, (old_value, _) = self._entries.popitem(last=False)
            self.size_bytes -= self.cost(oldest, old_value)
        self._entries[key] = (value, self._clock() + (self.ttl_s if ttl_s is None else ttl_s))
        self.size_bytes += cost
        return True

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= self.cost(key, entry[0])

    def clear(self) -> None:
        self._entries.clear()
        self.size_bytes = 0


class Memo:
    """The memo layers: memory first, then (if ``memo_shared``) the metadata store."""

    def __init__(self, config: RegistryConfig, store: MetadataStore) -> None:
        self.enabled = config.memo_enabled
        self.shared = config.memo_enabled and config.memo_shared
        self.ttl_s = config.memo_ttl_s
        self.max_entry_bytes = config.memo_max_entry_bytes
        self.lru = MemoLRU(
            max_bytes=config.memo_max_bytes,
            max_entry_bytes=config.memo_max_entry_bytes,
            ttl_s=config.memo_ttl_s,
        )
        self._store = store

    def key(self, steps: Sequence[MemoStep], inputs: Any) -> bytes | None:
        return memo_key(steps, inputs) if self.enabled else None

    def get_local(self, key: bytes) -> bytes | None:
        return self.lru.get(key)

    async def get_shared(self, key: bytes) -> bytes | None:
        """Look ``key`` up in the metadata store (and keep a hit in memory); None if not shared or absent."""
        if not self.shared:
            return None
        try:
            value = await self._store.get_memo(key.hex(), now_ms=int(time.time() * 1000))
        except Exception as exc:  # the memo is an optimisation: a store failure is a miss
            log.warning("shared memo lookup failed", error=str(exc))
            return None
        if value is not None:
            self.lru.put(key, value)
        return value

    async def get(self, key: bytes) -> bytes | None:
        value = self.lru.get(key)
        return value if value is not None else await self.get_shared(key)

    def put_local(self, key: bytes, value: bytes) -> bool:
        return self.lru.put(key, value)

    async def put_shared(self, key: bytes, value: bytes) -> None:
        if not self.shared or len(value) > self.max_entry_bytes:
            return
        expires_at_ms = int(time.time() * 1000) + int(self.ttl_s * 1000)
        try:
            await self._store.put_memo(key.hex(), value, expires_at_ms=expires_at_ms)
        except Exception as exc:
            log.warning("shared memo write failed", error=str(exc))
