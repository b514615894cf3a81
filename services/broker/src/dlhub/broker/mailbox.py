"""Final results of durable tasks, kept until their client acknowledges them.

A durable task's client (a registry) stores the outcome before it sends ``Ack``; until then the broker keeps
the encoded ``Result`` so that a registry that died before storing it gets it again when it comes back under
the same identity and asks (``TaskQuery``). Bounded by count, bytes and age: past a bound the oldest result is
dropped, and the registry's reconciliation or deadline ends that task instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Held:
    client: bytes
    frame: bytes | bytearray
    stored_at: float  # monotonic seconds


class Mailbox:
    def __init__(self, *, max_results: int, max_bytes: int, ttl_s: float) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._held: dict[str, _Held] = {}  # insertion order is age order: the oldest first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._held

    def put(self, client: bytes, task_id: str, frame: bytes | bytearray, now: float) -> list[str]:
        """Hold ``frame`` (an encoded Result) for ``client``; return the ids of older results dropped to
        stay within the bounds."""
        self._discard(task_id)
        self._held[task_id] = _Held(client, frame, now)
        self.bytes += len(frame)
        dropped: list[str] = []
        while len(self._held) > 1 and (len(self._held) > self.max_results or self.bytes > self.max_bytes):
            oldest = next(iter(self._held))
            self._discard(oldest)
            dropped.append(oldest)
        return dropped

    def ack(self, task_ids: Iterable[str]) -> int:
        """Forget acknowledged results; return how many were held."""
        return sum(self._discard(task_id) for task_id in task_ids)

    def held_for(self, client: bytes) -> list[bytes | bytearray]:
        """The frames held for ``client``, oldest first."""
        return [held.frame for held in self._held.values() if held.client == client]

    def held_among(self, client: bytes, task_ids: Iterable[str]) -> list[bytes | bytearray]:
        """The frames held for ``client`` of the tasks ``task_ids``."""
        held = (self._held.get(task_id) for task_id in task_ids)
        return [h.frame for h in held if h is not None and h.client == client]

    def readdress(self, task_ids: Iterable[str], client: bytes) -> int:
        """Hold the results of ``task_ids`` for ``client`` from now on (a registry took them over); return how
        many were held."""
        count = 0
        for task_id in task_ids:
            held = self._held.get(task_id)
            if held is not None:
                held.client = client
                count += 1
        return count

    def expire(self, now: float) -> list[str]:
        """Drop results held longer than the TTL; return their task ids."""
        cutoff = now - self.ttl_s
        expired: list[str] = []
        for task_id, held in self._held.items():
            if held.stored_at > cutoff:
                break
            expired.append(task_id)
        for task_id in expired:
            self._discard(task_id)
        return expired

    def _discard(self, task_id: str) -> bool:
        held = self._held.pop(task_id, None)
        if held is None:
            return False
        self.bytes -= len(held.frame)
        return True
