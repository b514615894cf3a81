"""The broker's record of one task while it is queued or running."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from dlhub.broker.handlers import HandlerRecord
from dlhub.common.messages import Placement, RouteStep


@dataclass(slots=True, eq=False)
class TaskRecord:
    task_id: str
    client: bytes
    route: list[RouteStep]
    deadline: float  # monotonic seconds
    deadline_unix_s: float
    notify_start: bool
    inputs: msgspec.Raw  # inputs of the current step; dropped (set to NIL) once dispatched
    step: int = 0
    ready_at: float = 0.0  # when the current step became ready to dispatch (monotonic)
    handler: HandlerRecord | None = None
    queued: bool = False
    started_sent: bool = False
    durable: bool = False  # keep the final Result until the client acknowledges it (mailbox.py)
    notify_queued: bool = False
    inference_ms: float = 0.0
    invocation_ms: float = 0.0
    queue_ms: float = 0.0

    @property
    def topic(self) -> str:
        return self.route[self.step].topic

    @property
    def placement(self) -> Placement | None:
        return self.route[self.step].placement
