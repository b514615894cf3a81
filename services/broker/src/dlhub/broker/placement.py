"""Placement: which of the handlers serving a topic may take a step that declares where it runs.

A servable version's ``servable.placement`` travels in its route step (``messages.Placement``): a ``site``
(only Task Managers registered with that site), ``devices`` (only those offering enough devices of each kind)
and ``replicas`` (at most that many of the eligible ones, always the same while they stay registered, so
that only they keep the version's executors warm). The topic table caches the result per (topic,
placement) until a handler comes or goes; these functions are what it computes on a miss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from dlhub.broker.handlers import HandlerRecord
from dlhub.common.messages import Placement


def device_counts(devices: Iterable[str]) -> dict[str, int]:
    """Devices by kind: ``["gpu:0", "gpu:1", "npu"]`` -> ``{"gpu": 2, "npu": 1}``."""
    return dict(Counter(device.partition(":")[0] for device in devices))


def meets(handler: HandlerRecord, placement: Placement) -> bool:
    """Whether ``handler`` is at the placement's site (if it names one) with the devices it needs."""
    if placement.site and handler.site != placement.site:
        return False
    counts = handler.device_counts
    return all(counts.get(need.kind, 0) >= need.count for need in placement.devices)


def _device_text(placement: Placement) -> str:
    needs = [f"{n.count} {n.kind} device{'s' if n.count > 1 else ''}" for n in placement.devices]
    return " and ".join(needs)


def unmet_requirement(handlers: list[HandlerRecord], placement: Placement) -> str:
    """Why none of ``handlers`` (those serving the topic) meets ``placement``: the first requirement that
    none of them meets, named, e.g. ``no Task Manager at site 'cluster-b'``."""
    at_site = [h for h in handlers if not placement.site or h.site == placement.site]
    where = f" at site {placement.site!r}" if placement.site else ""
    if not at_site:
        return f"no Task Manager{where}"
    for need in placement.devices:
        if not any(h.device_counts.get(need.kind, 0) >= need.count for h in at_site):
            plural = "s" if need.count > 1 else ""
            return f"no Task Manager{where} with {need.count} {need.kind} device{plural}"
    return f"no Task Manager{where} with {_device_text(placement)}"  # each need met, never all on one


class ReplicaSets:
    """The handlers chosen to hold each topic's replicas: kept while they stay eligible, refilled from the
    eligible handlers holding the fewest replicas of any topic (so topics spread over handlers)."""

    def __init__(self) -> None:
        self._sets: dict[str, list[HandlerRecord]] = {}

    def choose(self, topic: str, eligible: list[HandlerRecord], count: int) -> list[HandlerRecord]:
        """At most ``count`` of ``eligible`` for ``topic``: the ones chosen before first."""
        chosen = [h for h in self._sets.get(topic, ()) if h in eligible][:count]
        if len(chosen) < count:
            held = Counter(h for members in self._sets.values() for h in members)
            spare = sorted((h for h in eligible if h not in chosen), key=lambda h: held[h])
            chosen.extend(spare[: count - len(chosen)])
        self._sets[topic] = chosen
        return list(chosen)

    def forget(self, handler: HandlerRecord) -> None:
        """Drop a handler that left (or drains) from every set; the next lookup refills them."""
        for topic in [t for t, members in self._sets.items() if handler in members]:
            members = [h for h in self._sets[topic] if h is not handler]
            if members:
                self._sets[topic] = members
            else:
                del self._sets[topic]

    def members(self, topic: str) -> list[HandlerRecord]:
        return list(self._sets.get(topic, ()))
