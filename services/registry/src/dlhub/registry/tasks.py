"""The task table: builds and asynchronous runs, their states, results and expiry.

States move pending -> running -> completed | failed. Every write pushes the expiry to ``ttl_s`` after the
write, so a long task never expires while it runs; a periodic sweep deletes expired records and reads treat
them as gone even before the sweep.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from dlhub.common.codec import Codec
from dlhub.common.errors import InvalidMessage
from dlhub.common.logging import get_logger
from dlhub.common.messages import Result
from dlhub.registry.clock import now_ms
from dlhub.registry.outcomes import error_dict, output_json, timings_dict
from dlhub.registry.store import MetadataStore, TaskKind, TaskRecord

log = get_logger(__name__)


class TaskTable:
    """Create, advance and read task records in the store."""

    def __init__(self, store: MetadataStore, codec: Codec, *, ttl_s: float) -> None:
        self._store = store
        self._codec = codec
        self._ttl_ms = int(ttl_s * 1000)

    async def create(
        self, *, task_id: str, kind: TaskKind, servable: str, submitter: str | None
    ) -> TaskRecord:
        now = now_ms()
        task = TaskRecord(
            task_id=task_id,
            kind=kind,
            state="pending",
            servable=servable,
            submitter=submitter,
            created_at_ms=now,
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
        )
        await self._store.save_task(task)
        return task

    async def mark_running(self, task: TaskRecord) -> TaskRecord:
        now = now_ms()
        task = dataclasses.replace(task, state="running", updated_at_ms=now, expires_at_ms=now + self._ttl_ms)
        await self._store.save_task(task)
        return task

    async def complete(
        self, task: TaskRecord, *, output: bytes, timings: dict[str, float] | None = None
    ) -> TaskRecord:
        now = now_ms()
        task = dataclasses.replace(
            task,
            state="completed",
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
            output_json=output,
            timings=timings,
        )
        await self._store.save_task(task)
        return task

    async def fail(
        self, task: TaskRecord, *, error: dict[str, Any], timings: dict[str, float] | None = None
    ) -> TaskRecord:
        now = now_ms()
        task = dataclasses.replace(
            task,
            state="failed",
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
            error=error,
            timings=timings,
        )
        await self._store.save_task(task)
        return task

    async def finish_run(self, task: TaskRecord, result: Result, *, request_ms: float) -> TaskRecord:
        """Record the outcome of an asynchronous run."""
        timings = timings_dict(result.timings, request_ms)
        if result.ok:
            try:
                output = output_json(self._codec, result)
            except InvalidMessage as exc:
                return await self.fail(
                    task, error={"type": exc.code, "message": exc.message}, timings=timings
                )
            return await self.complete(task, output=output, timings=timings)
        return await self.fail(task, error=error_dict(result.error), timings=timings)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._store.get_task(task_id, now_ms=now_ms())

    async def sweep(self) -> int:
        return await self._store.delete_expired_tasks(now_ms=now_ms())

    async def sweep_forever(self, interval_s: float) -> None:
        """Delete expired tasks every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                removed = await self.sweep()
            except Exception:
                log.exception("task sweep failed")
            else:
                if removed:
                    log.info("expired tasks removed", count=removed)
