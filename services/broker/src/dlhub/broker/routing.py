"""Topic table: which handlers serve a topic, and which one gets the next task.

Handlers register exact topics (``builder/build``), prefix patterns ending in ``*`` (``servable/*``,
``servable/alice/*``) or other shell-style globs (``servable/*/resnet@*``: ``fnmatch``, case-sensitive). The
matching handler with the most free capacity wins; ties rotate round-robin so equal handlers share the load.
A handler that registered a per-topic limit (a worker: one servable may not hold all of its capacity) is
skipped for a topic of which it already holds that many tasks. A step with a placement (``placement.py``)
chooses among the matching handlers that meet it, cached per (topic, placement) as the matches are.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from dlhub.broker.handlers import HandlerRecord
from dlhub.broker.placement import ReplicaSets, meets, unmet_requirement
from dlhub.common.messages import Placement

_GLOB_CHARS = frozenset("*?[")


def pattern_kind(pattern: str) -> str:
    """``exact``, ``prefix`` (one ``*`` at the end and no other glob character) or ``glob``."""
    if not _GLOB_CHARS.intersection(pattern):
        return "exact"
    if pattern.endswith("*") and not _GLOB_CHARS.intersection(pattern[:-1]):
        return "prefix"
    return "glob"


def pattern_matches(pattern: str, topic: str) -> bool:
    kind = pattern_kind(pattern)
    if kind == "exact":
        return pattern == topic
    if kind == "prefix":
        return topic.startswith(pattern[:-1])
    return fnmatchcase(topic, pattern)


class TopicTable:
    def __init__(self) -> None:
        self._exact: dict[str, list[HandlerRecord]] = {}
        self._prefixes: dict[str, list[HandlerRecord]] = {}
        self._globs: dict[str, list[HandlerRecord]] = {}
        self._matches: dict[str, list[HandlerRecord]] = {}  # topic -> matching handlers, rebuilt on change
        self._eligible: dict[tuple[str, Placement], list[HandlerRecord]] = {}  # the same, placement met
        self.replicas = ReplicaSets()
        self._ever: set[str] = set()  # every pattern ever registered, to tell no_handler from task_timeout
        self._rr = 0

    def _slot(self, pattern: str) -> tuple[dict[str, list[HandlerRecord]], str]:
        kind = pattern_kind(pattern)
        if kind == "prefix":
            return self._prefixes, pattern[:-1]
        return (self._globs if kind == "glob" else self._exact), pattern

    def add(self, handler: HandlerRecord) -> None:
        for pattern in handler.topics:
            table, key = self._slot(pattern)
            table.setdefault(key, []).append(handler)
            self._ever.add(pattern)
        self._matches.clear()
        self._eligible.clear()

    def remove(self, handler: HandlerRecord) -> None:
        for pattern in handler.topics:
            table, key = self._slot(pattern)
            handlers = table.get(key)
            if handlers is None:
                continue
            handlers[:] = [h for h in handlers if h is not handler]
            if not handlers:
                del table[key]
        self._matches.clear()
        self._eligible.clear()
        self.replicas.forget(handler)

    def matching(self, topic: str) -> list[HandlerRecord]:
        """Handlers serving ``topic`` (cached until the table changes)."""
        handlers = self._matches.get(topic)
        if handlers is None:
            found = list(self._exact.get(topic, ()))
            for prefix, serving in self._prefixes.items():
                if topic.startswith(prefix):
                    found.extend(h for h in serving if h not in found)
            for glob, serving in self._globs.items():
                if fnmatchcase(topic, glob):
                    found.extend(h for h in serving if h not in found)
            self._matches[topic] = handlers = found
        return handlers

    def eligible(self, topic: str, placement: Placement) -> list[HandlerRecord]:
        """Handlers serving ``topic`` that meet ``placement`` (its replica set when it asks for replicas;
        cached until the table changes)."""
        key = (topic, placement)
        handlers = self._eligible.get(key)
        if handlers is None:
            handlers = [h for h in self.matching(topic) if meets(h, placement)]
            if placement.replicas and handlers:
                handlers = self.replicas.choose(topic, handlers, placement.replicas)
            self._eligible[key] = handlers
        return handlers

    def candidates(self, topic: str, placement: Placement | None) -> list[HandlerRecord]:
        return self.matching(topic) if placement is None else self.eligible(topic, placement)

    def unserved_reason(self, topic: str, placement: Placement | None) -> str:
        """Why no handler may take a step of ``topic`` (there is none, or none meets the placement)."""
        if placement is None or not self.matching(topic):
            return f"no registered handler serves topic {topic!r}"
        return f"{unmet_requirement(self.matching(topic), placement)} serves topic {topic!r}"

    def choose(self, topic: str, placement: Placement | None = None) -> HandlerRecord | None:
        """The matching handler (meeting ``placement``) with the most free capacity, or None if all are full
        (or none exist)."""
        handlers = self.matching(topic) if placement is None else self.eligible(topic, placement)
        count = len(handlers)
        if count == 0:
            return None
        if count == 1:
            only = handlers[0]
            return only if only.admits(topic) else None
        self._rr += 1
        start = self._rr % count
        best: HandlerRecord | None = None
        best_free = 0
        for i in range(count):
            handler = handlers[(start + i) % count]
            free = handler.capacity - len(handler.inflight)
            if free > best_free and (not handler.max_per_topic or handler.admits(topic)):
                best, best_free = handler, free
        return best

    def ever_served(self, topic: str) -> bool:
        """True if any handler registered for ``topic`` since the broker started."""
        return any(pattern_matches(p, topic) for p in self._ever)
