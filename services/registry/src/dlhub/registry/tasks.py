"""The task table: builds and asynchronous runs, their states, results and expiry.

States move pending -> running -> completed | failed. Every write pushes the expiry to ``ttl_s`` after the
write, so a long task never expires while it runs; a periodic sweep deletes expired records and reads treat
them as gone even before the sweep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from typing import Any

import msgspec

from dlhub.common.codec import Codec, to_json
from dlhub.common.errors import InvalidMessage
from dlhub.common.logging import get_logger
from dlhub.common.messages import ErrorInfo, Result, Timings
from dlhub.registry.store import MetadataStore, TaskKind, TaskRecord

log = get_logger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(epoch_ms: int) -> str:
    """Render epoch milliseconds as an ISO 8601 UTC timestamp."""
    return dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def error_dict(error: ErrorInfo | None) -> dict[str, Any]:
    """The JSON shape of a task failure (``error.type`` is the DLHub error code)."""
    if error is None:
        return {"type": "dlhub_error", "message": "the task failed without an error description"}
    out: dict[str, Any] = {
        "type": error.code,
        "message": error.message,
        "exception_type": error.exception_type,
        "traceback": error.traceback,
    }
    if error.step >= 0:
        out["step"] = error.step
    if error.topic:
        out["topic"] = error.topic
    return out


def timings_dict(timings: Timings, request_ms: float) -> dict[str, float]:
    return {
        "inference_ms": timings.inference_ms,
        "invocation_ms": timings.invocation_ms,
        "queue_ms": timings.queue_ms,
        "request_ms": request_ms,
    }


def output_json(codec: Codec, result: Result) -> bytes:
    """Convert a Result's msgpack output to JSON bytes (NumPy arrays become nested lists)."""
    return to_json(codec.decode_value(result.output))


def task_view(task: TaskRecord) -> dict[str, Any]:
    """The JSON shape of ``GET /tasks/{id}`` (output embedded as already-encoded JSON)."""
    view: dict[str, Any] = {
        "task_id": task.task_id,
        "kind": task.kind,
        "state": task.state,
        "servable": task.servable,
        "created_at": iso_ms(task.created_at_ms),
        "updated_at": iso_ms(task.updated_at_ms),
    }
    if task.output_json is not None:
        view["output"] = msgspec.Raw(task.output_json)
    if task.error is not None:
        view["error"] = task.error
    if task.timings is not None:
        view["timings"] = task.timings
    return view


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
