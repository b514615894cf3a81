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
    inflight: set[str] = field(default_factory=set)
    draining: bool = False

    @property
    def free(self) -> int:
        return self.capacity - len(self.inflight)


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
