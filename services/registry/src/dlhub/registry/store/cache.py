"""In-memory cache of each servable's versions, so the run path needs no database round trip.

The registry is the only writer of versions, so every local write invalidates its key and the cache is
coherent. A generation counter stops a load that raced with an invalidation from storing stale data.
"""

from __future__ import annotations

from dlhub.registry.store import MetadataStore, VersionRecord

Versions = tuple[VersionRecord, ...]


class VersionCache:
    def __init__(self, store: MetadataStore, *, max_entries: int = 100_000) -> None:
        self._store = store
        self._max_entries = max_entries
        self._entries: dict[tuple[str, str], Versions] = {}
        self._generation = 0

    async def get(self, owner: str, name: str) -> Versions:
        """Return the versions of ``owner/name`` (oldest first; empty if unknown)."""
        key = (owner, name)
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        generation = self._generation
        versions = tuple(await self._store.list_versions(owner, name))
        if generation == self._generation:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = versions
        return versions

    def invalidate(self, owner: str, name: str) -> None:
        self._generation += 1
        self._entries.pop((owner, name), None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
