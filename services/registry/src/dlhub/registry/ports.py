"""What the registry needs from the bus: the ``BusClient`` surface, as a protocol so tests can fake it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from dlhub.common.messages import Progress, Queued, Result, RouteStep, Started, StatsReply, TaskStatus


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
        require_handler: bool = False,
        durable: bool = False,
        on_queued: Callable[[Queued], None] | None = None,
    ) -> Result: ...

    async def stats(self, *, timeout_s: float = 2.0) -> StatsReply: ...

    def ack(self, task_id: str) -> None: ...

    def listen(
        self,
        *,
        on_orphan_result: Callable[[Result], None] | None = None,
        on_broker_change: Callable[[str, str], None] | None = None,
    ) -> None: ...

    def awaiting(self, task_id: str) -> bool: ...

    async def query_tasks(
        self,
        task_ids: Sequence[str],
        *,
        timeout_s: float = 5.0,
        adopt: bool = False,
        resend_all: bool = True,
    ) -> TaskStatus: ...
