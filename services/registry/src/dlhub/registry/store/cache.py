"""In-memory cache of each servable's versions, so the run path needs no database round trip.

The registry is the only writer of versions, so every local write invalidates its key and the cache is
coherent. A generation counter stops a load that raced with an invalidation from storing stale data.

An entry holds every version of a servable with its whole metadata document (about 10 KB each for a small
document), so the cache grows with the data, not with the traffic: it is bounded by the number of versions it
holds (``registry.version_cache_max_versions``). Past the bound, the servables cached longest ago are dropped
(insertion order, so a hit costs nothing more than a dict lookup). A servable with more versions than the
bound is still held, alone: reading all its versions on every run would cost more than the memory, which each
reload needs anyway.
"""

from __future__ import annotations

from dlhub.registry.store import MetadataStore, VersionRecord

Versions = tuple[VersionRecord, ...]


class VersionCache:
    def __init__(self, store: MetadataStore, *, max_versions: int = 10_000) -> None:
        self._store = store
        self._max_versions = max_versions
        self._entries: dict[tuple[str, str], Versions] = {}
        self._generation = 0
        self.versions_held = 0  # sum of len(entry): at most max_versions, or one servable's versions

    async def get(self, owner: str, name: str) -> Versions:
        """Return the versions of ``owner/name`` (oldest first; empty if unknown)."""
        key = (owner, name)
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        generation = self._generation
        versions = tuple(await self._store.list_versions(owner, name))
        # An unknown name is not held: requests for made-up names must not fill the cache.
        if generation == self._generation and versions:
            self._store_entry(key, versions)
        return versions

    def _store_entry(self, key: tuple[str, str], versions: Versions) -> None:
        self._drop(key)  # a concurrent load of the same key may have stored it meanwhile
        while self._entries and self.versions_held + len(versions) > self._max_versions:
            self._drop(next(iter(self._entries)))
        self._entries[key] = versions
        self.versions_held += len(versions)

    def _drop(self, key: tuple[str, str]) -> None:
        dropped = self._entries.pop(key, None)
        if dropped is not None:
            self.versions_held -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)

    def invalidate(self, owner: str, name: str) -> None:
        self._generation += 1
        self._drop((owner, name))

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self.versions_held = 0
