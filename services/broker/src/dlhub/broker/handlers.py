"""Records of the handlers (workers, builder, search) registered with the broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class HandlerRecord:
    """One registered handler: where to reach it, what it serves and which tasks it holds."""

    handler_id: str
    identity: bytes
    kind: str
    topics: list[str]
    capacity: int
    last_seen: float
    max_per_topic: int = 0
    """Tasks of one exact topic this handler takes at once (0: up to its capacity), so that one busy topic
    cannot hold all of its capacity while other topics wait."""
    inflight: dict[str, str] = field(default_factory=dict)
    """The tasks it holds: task id -> the topic it was dispatched for."""
    per_topic: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    site: str = ""
    instance_id: str = ""
    executors: list[str] = field(default_factory=list)
    serves: list[str] = field(default_factory=list)
    """What a Task Manager said of itself at registration (shown in the stats; ``site`` also routes the
    steps whose placement names one)."""
    devices: list[str] = field(default_factory=list)
    device_counts: dict[str, int] = field(default_factory=dict)
    """``devices`` by kind (``{"gpu": 2}``), what a placement's device needs are checked against."""

    @property
    def free(self) -> int:
        return self.capacity - len(self.inflight)

    def admits(self, topic: str) -> bool:
        """Free capacity for one more task of ``topic``."""
        if len(self.inflight) >= self.capacity:
            return False
        return not self.max_per_topic or self.per_topic.get(topic, 0) < self.max_per_topic

    def hold(self, task_id: str, topic: str) -> None:
        self.inflight[task_id] = topic
        if self.max_per_topic:
            self.per_topic[topic] = self.per_topic.get(topic, 0) + 1

    def release(self, task_id: str) -> bool:
        """Forget a task it held; False if it held none with that id."""
        topic = self.inflight.pop(task_id, None)
        if topic is None:
            return False
        if self.max_per_topic:
            count = self.per_topic[topic] - 1
            if count:
                self.per_topic[topic] = count
            else:
                del self.per_topic[topic]
        return True

    def release_all(self) -> list[str]:
        held = list(self.inflight)
        self.inflight.clear()
        self.per_topic.clear()
        return held


class HandlerTable:
    """Registered handlers by ROUTER identity (which is the handler_id the handler connected with)."""

    def __init__(self) -> None:
        self.by_identity: dict[bytes, HandlerRecord] = {}

    def __len__(self) -> int:
        return len(self.by_identity)

    def __iter__(self) -> Iterator[HandlerRecord]:
        return iter(list(self.by_identity.values()))

    def get(self, identity: bytes) -> HandlerRecord | None:
        return self.by_identity.get(identity)

    def add(self, handler: HandlerRecord) -> None:
        self.by_identity[handler.identity] = handler

    def remove(self, handler: HandlerRecord) -> None:
        if self.by_identity.get(handler.identity) is handler:
            del self.by_identity[handler.identity]

    def silent_since(self, cutoff: float) -> list[HandlerRecord]:
        """Handlers not heard from since ``cutoff`` (monotonic seconds)."""
        return [h for h in self.by_identity.values() if h.last_seen < cutoff]

    def total_inflight(self) -> int:
        return sum(len(h.inflight) for h in self.by_identity.values())
