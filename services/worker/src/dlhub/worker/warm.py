"""What a worker keeps warm, bounded: executor pools in least-recently-used order, stopped when there are too
many or when they idle. One implementation for the servable lanes (``lanes.py``) and the environment pools
(``environments.py``), which differ only in what an entry is and what stopping it also undoes."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from typing import Final, Generic, Protocol, TypeVar

from dlhub.common.logging import get_logger

log = get_logger(__name__)

SWEEP_MAX_INTERVAL_S: Final = 30.0


class WarmEntry(Protocol):
    """One warm thing: its key, the tasks running in it, when it last ran one, and whether it was stopped."""

    key: str
    active: int
    last_used: float
    evicted: bool

    async def close(self) -> None: ...


E = TypeVar("E", bound=WarmEntry)


class WarmSet(Generic[E]):
    """Entries by key in least-recently-used order. An entry running a task is never stopped, so ``limit``
    may be passed briefly while every entry is busy; stopping runs in the background (``drain`` awaits it)."""

    def __init__(self, what: str, on_evict: Callable[[E], None] | None = None) -> None:
        self.what = what
        self.evictions = 0
        self._entries: collections.OrderedDict[str, E] = collections.OrderedDict()
        self._on_evict = on_evict
        self._stopping: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._entries.values()))

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> E | None:
        return self._entries.get(key)

    def touch(self, entry: E) -> None:
        """``entry`` was just used: it goes last in the eviction order."""
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)

    def add(self, entry: E, limit: int) -> None:
        """Keep ``entry`` warm, then stop idle older ones beyond ``limit``."""
        self._entries[entry.key] = entry
        self.make_room(limit, keep=entry)

    def make_room(self, limit: int, keep: E | None = None) -> None:
        """Stop least recently used idle entries (never ``keep``) until at most ``limit`` are warm."""
        for entry in list(self._entries.values()):
            if len(self._entries) <= limit:
                return
            if entry is not keep and entry.active == 0:
                self.evict(entry, f"the most {self.what}s are warm")

    def evict(self, entry: E, reason: str) -> None:
        """Stop ``entry`` (in the background); a task that still holds it finds ``evicted`` set."""
        if self._entries.get(entry.key) is not entry:
            return
        del self._entries[entry.key]
        entry.evicted = True
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(entry)
        log.info(f"{self.what} stopped", key=entry.key, reason=reason)
        task = asyncio.create_task(entry.close())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def sweep(self, idle_s: float, limit: int) -> None:
        """Forever: stop entries idle for ``idle_s``, and any beyond ``limit`` once they are idle."""
        interval = min(max(idle_s / 4, 0.05), SWEEP_MAX_INTERVAL_S)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - idle_s
            for entry in list(self._entries.values()):
                if entry.active == 0 and entry.last_used <= cutoff:
                    self.evict(entry, f"idle for {idle_s:g} s")
            self.make_room(limit)

    def take_all(self) -> list[E]:
        """Every entry, no longer kept (the owner closes them itself)."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

    async def drain(self) -> None:
        """Wait for the background stops."""
        await asyncio.gather(*self._stopping, return_exceptions=True)
