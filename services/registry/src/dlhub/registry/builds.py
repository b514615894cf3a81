"""Build records in the registry: one per version, following its build as the builder reports it.

Publishing stores a record in state ``queued``. While the builder builds, it relays its ``BuildEvent``s as
``Progress`` reports (``dlhub.builder.service.ProgressRelay``); a ``BuildTracker`` applies them to the record
(states with timestamps, log lines) and saves it through the store: at once on every state change, at most
every ``registry.build_log_save_interval_s`` for log lines, and at the end. The stored log is capped at
``registry.max_build_log_bytes`` (``CappedLog``: the head and the tail around a marker line).

The registry, not the builder, decides ``ready``: the builder's ``ready`` is only "the environment is built";
the version may still run its test vectors. A failed build's record error is the message the version's
``status_reason`` carries (the resolver's or installer's own words, or the failed vectors).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from dlhub.common.errors import DLHubError
from dlhub.common.logging import get_logger
from dlhub.common.messages import Progress
from dlhub.common.payloads import BuildEvent, BuildOutcome, BuildState, StateChange
from dlhub.registry.store import MetadataStore, StoredBuild, VersionRecord

log = get_logger(__name__)

TERMINAL_STATES: Final = frozenset({"ready", "failed"})
MARKER_RE: Final = re.compile(r"^\[\.\.\. (\d+) log lines dropped \.\.\.\]$")
_events_decoder = msgspec.msgpack.Decoder(list[BuildEvent])


def marker(dropped: int) -> str:
    """The line standing for ``dropped`` lines left out of a capped log."""
    return f"[... {dropped} log lines dropped ...]"


class CappedLog:
    """Log lines within ``max_bytes`` (UTF-8, one newline per line): the first half of the budget keeps the
    head, the second half the newest lines; what falls between is counted, not kept."""

    def __init__(self, max_bytes: int, lines: Iterable[str] = (), dropped: int = 0) -> None:
        self.half = max(64, max_bytes // 2)
        self.head: list[str] = []
        self.head_bytes = 0
        self.tail: deque[str] = deque()
        self.tail_bytes = 0
        self.dropped = 0
        stored = list(lines)
        if dropped:  # a stored capped log: head, marker, tail
            at = next((i for i, line in enumerate(stored) if MARKER_RE.match(line)), len(stored))
            self.head = stored[:at]
            self.head_bytes = sum(_size(line) for line in self.head)
            self.tail.extend(stored[at + 1 :])
            self.tail_bytes = sum(_size(line) for line in self.tail)
            self.dropped = dropped
        else:
            for line in stored:
                self.add(line)

    def add(self, line: str) -> None:
        if _size(line) > self.half:
            line = line[: self.half // 4] + " [line truncated]"
        size = _size(line)
        if not self.tail and not self.dropped and self.head_bytes + size <= self.half:
            self.head.append(line)
            self.head_bytes += size
            return
        self.tail.append(line)
        self.tail_bytes += size
        while self.tail_bytes > self.half and self.tail:
            self.tail_bytes -= _size(self.tail.popleft())
            self.dropped += 1

    def lines(self) -> list[str]:
        return [*self.head, *([marker(self.dropped)] if self.dropped else []), *self.tail]


def _size(line: str) -> int:
    return len(line.encode("utf-8", "replace")) + 1


def new_build(record: VersionRecord, state: BuildState = "queued") -> StoredBuild:
    now = time.time()
    return StoredBuild(
        servable=record.label,
        state=state,
        states=[StateChange(state=state, at_unix_s=now)],
        updated_at_unix_s=now,
    )


def implied_build(record: VersionRecord) -> StoredBuild:
    """The record of a version published before the registry kept build records, from its status."""
    state: BuildState = (
        "ready" if record.status == "ready" else "failed" if record.status == "failed" else "queued"
    )
    at = record.published_at_ms / 1000.0
    return StoredBuild(
        servable=record.label,
        state=state,
        states=[StateChange(state=state, at_unix_s=at)],
        environment=record.environment,
        error=record.status_reason if state == "failed" else "",
        updated_at_unix_s=at,
    )


class BuildTracker:
    """Applies one build's events to its record and saves it (see the module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        version: VersionRecord,
        build: StoredBuild,
        *,
        max_log_bytes: int,
        save_interval_s: float,
        on_state_saved: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._version = version
        self.build = build
        self._log = CappedLog(max_log_bytes, build.log, build.dropped_lines)
        self._save_interval_s = save_interval_s
        self._on_state_saved = on_state_saved
        self._saved_state: str = ""
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._closing = False
        self._closed = False
        self._last_save = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- changes (synchronous: ``on_progress`` runs in the bus's receive loop) ----------------------------

    def set_state(self, state: BuildState, *, error: str = "", at_unix_s: float | None = None) -> None:
        if state == self.build.state and not (error and error != self.build.error):
            return
        if state != self.build.state:
            self.build.state = state
            self.build.states.append(StateChange(state=state, at_unix_s=at_unix_s or time.time()))
        if error:
            self.build.error = error
        self._urgent.set()
        self._wake.set()

    def line(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            self._log.add(line)
        self._wake.set()

    def apply(self, events: Iterable[BuildEvent]) -> None:
        for event in events:
            if event.state is not None and event.state != "ready":  # the registry decides "ready"
                self.set_state(event.state, error=event.error, at_unix_s=event.at_unix_s or None)
            for line in event.lines:
                self._log.add(line)
            if event.lines:
                self._wake.set()

    def on_progress(self, progress: Progress) -> None:
        try:
            events = _events_decoder.decode(progress.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable build progress", servable=self._version.label, error=str(exc))
            return
        self.apply(events)

    # -- saving ---------------------------------------------------------------------------------------------

    def snapshot(self) -> StoredBuild:
        self.build.log = self._log.lines()
        self.build.dropped_lines = self._log.dropped
        self.build.updated_at_unix_s = time.time()
        return self.build

    async def save(self) -> None:
        build = self.snapshot()
        state = build.state
        try:
            await self._store.save_build(
                self._version.owner, self._version.name, self._version.version, build
            )
        except DLHubError as exc:  # e.g. the store is briefly unavailable: the next save catches up
            log.warning("cannot save the build record", servable=self._version.label, error=exc.message)
            return
        self._last_save = time.monotonic()
        if state != self._saved_state:
            self._saved_state = state
            self._on_state_saved()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._saver(), name=f"build record {self._version.label}"
        )

    async def _saver(self) -> None:
        while True:
            await self._wake.wait()
            if self._closing:
                return
            if not self._urgent.is_set():
                delay = self._last_save + self._save_interval_s - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), delay)
                if self._closing:
                    return
            self._wake.clear()
            self._urgent.clear()
            await self.save()

    async def close(self) -> None:
        """Stop the periodic saver (after its current save) and save the record one last time (once)."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.save()

    def environment(self, outcome: BuildOutcome) -> None:
        self.build.environment = outcome.environment
        self.build.backend = outcome.backend
        self.build.python = outcome.python
        self.build.lock = outcome.lock
        self.build.base_image = outcome.base_image
