"""What the registry needs from the bus: the ``BusClient`` surface, as a protocol so tests can fake it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from dlhub.common.messages import Progress, Queued, Result, RouteStep, Started, StatsReply


class Bus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def call(
        self,
        route: Sequence[RouteStep],
        inputs: msgspec.Raw,
        *,
        timeout_s: float,
        task_id: str | None = None,
        on_started: Callable[[Started], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_queued: Callable[[Queued], None] | None = None,
    ) -> Result: ...

    async def stats(self, *, timeout_s: float = 2.0) -> StatsReply: ...
