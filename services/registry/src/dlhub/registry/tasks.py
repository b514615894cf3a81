"""The task table: builds and asynchronous runs, their states, results and expiry.

States move pending -> running -> completed | failed, and the last two are final: every later write is
conditional on the stored state still being open (``MetadataStore.update_open_task``), so a late or duplicate
outcome never replaces one. Every write pushes the expiry to ``ttl_s`` after the write, so a long task never
expires while it runs; a periodic sweep deletes expired records and reads treat them as gone even before the
sweep. Each task records its ``owner`` (the registry instance awaiting its outcome) and a ``deadline_ms``
past which any registry fails it (``recovery.py``).
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
from dlhub.registry.store import OPEN_TASK_STATES, MetadataStore, TaskKind, TaskRecord

log = get_logger(__name__)


class TaskTable:
    """Create, advance and read task records in the store."""

    def __init__(
        self,
        store: MetadataStore,
        codec: Codec,
        *,
        ttl_s: float,
        owner: str = "",
        deadline_grace_s: float = 60.0,
    ) -> None:
        self._store = store
        self._codec = codec
        self._ttl_ms = int(ttl_s * 1000)
        self.owner = owner
        self._grace_ms = int(deadline_grace_s * 1000)
        self.driving: set[str] = set()
        """Tasks whose outcome a coroutine here awaits and will write (reconciliation leaves them alone)."""

    @property
    def store(self) -> MetadataStore:
        return self._store

    def _deadline_ms(self, now: int, timeout_s: float) -> int:
        return now + int(timeout_s * 1000) + self._grace_ms

    async def create(
        self,
        *,
        task_id: str,
        kind: TaskKind,
        servable: str,
        submitter: str | None,
        timeout_s: float,
        progress: dict[str, Any] | None = None,
    ) -> TaskRecord:
        """A pending task of this registry, failed ``deadline_exceeded`` if still open ``timeout_s`` plus the
        grace from now."""
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
            owner=self.owner,
            deadline_ms=self._deadline_ms(now, timeout_s),
            progress=progress,
        )
        await self._store.save_task(task)
        return task

    async def mark_running(self, task: TaskRecord, *, timeout_s: float | None = None) -> TaskRecord:
        """Running (unless it has ended or was taken over meanwhile); ``timeout_s`` restarts the deadline and
        makes this registry the owner (a resumed build)."""
        now = now_ms()
        resumed = timeout_s is not None
        task = dataclasses.replace(
            task,
            state="running",
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
            owner=self.owner if resumed else task.owner,
            deadline_ms=self._deadline_ms(now, timeout_s) if timeout_s is not None else task.deadline_ms,
        )
        return await self._write_open(task, as_owner=not resumed)

    async def progress(self, task: TaskRecord, progress: dict[str, Any], *, timeout_s: float) -> TaskRecord:
        """Running with ``progress`` (a dataset job), its deadline ``timeout_s`` (+ grace) from now; the
        stored record instead when the task has ended meanwhile (cancelled, reaped)."""
        now = now_ms()
        task = dataclasses.replace(
            task,
            state="running",
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
            owner=self.owner,
            deadline_ms=self._deadline_ms(now, timeout_s),
            progress=progress,
        )
        return await self._write_open(task)

    async def _write_open(self, task: TaskRecord, *, as_owner: bool = False) -> TaskRecord:
        """Write ``task`` if the stored one is still open (and, ``as_owner``, still this registry's: not taken
        over by another, ``takeover.TaskTakeover``); else return the stored one."""
        owner = self.owner if as_owner else None
        if await self._store.update_open_task(task, owner=owner):
            return task
        stored = await self.get(task.task_id)
        if stored is None:  # expired meanwhile, or a record never saved
            return task
        if stored.state in OPEN_TASK_STATES:
            if as_owner and stored.owner != self.owner:
                log.info("task taken over by another registry; not written", task_id=task.task_id)
                return stored
            return task
        log.info("task already ended; outcome kept", task_id=task.task_id, state=stored.state)
        return stored

    def taken_over(self, task: TaskRecord) -> bool:
        """Whether a record ``_write_open`` returned says another registry owns the still open task."""
        return task.state in OPEN_TASK_STATES and task.owner != self.owner

    async def complete(
        self,
        task: TaskRecord,
        *,
        output: bytes,
        timings: dict[str, float] | None = None,
        as_owner: bool = False,
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
        return await self._write_open(task, as_owner=as_owner)

    async def fail(
        self,
        task: TaskRecord,
        *,
        error: dict[str, Any],
        timings: dict[str, float] | None = None,
        as_owner: bool = False,
    ) -> TaskRecord:
        """Failed; ``as_owner``: only while this registry still owns the task (see ``_write_open``)."""
        now = now_ms()
        task = dataclasses.replace(
            task,
            state="failed",
            updated_at_ms=now,
            expires_at_ms=now + self._ttl_ms,
            error=error,
            timings=timings,
        )
        return await self._write_open(task, as_owner=as_owner)

    async def finish_run(
        self, task: TaskRecord, result: Result, *, request_ms: float, as_owner: bool = False
    ) -> TaskRecord:
        """Record the outcome of an asynchronous run."""
        timings = timings_dict(result.timings, request_ms)
        if result.ok:
            try:
                output = output_json(self._codec, result)
            except InvalidMessage as exc:
                error = {"type": exc.code, "message": exc.message}
                return await self.fail(task, error=error, timings=timings, as_owner=as_owner)
            return await self.complete(task, output=output, timings=timings, as_owner=as_owner)
        return await self.fail(task, error=error_dict(result.error), timings=timings, as_owner=as_owner)

    async def open_tasks(
        self, *, owner: str | None = None, deadline_before_ms: int | None = None, limit: int = 1000
    ) -> list[TaskRecord]:
        return await self._store.list_open_tasks(
            owner=owner, deadline_before_ms=deadline_before_ms, limit=limit
        )

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
