"""The worker's glue: a ``HandlerService`` for ``servable/*`` topics whose handler runs tasks in the pool."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from libs.common.bus import HandlerService
from libs.common.codec import Codec
from libs.common.config import DLHubSettings
from libs.common.errors import DLHubError, NotFound, TaskTimeout, ValidationFailed
from libs.common.ids import parse_servable_topic
from libs.common.logging import get_logger
from libs.common.messages import Dispatch, ErrorInfo, Result, Timings
from libs.common.servable_store import version_dir
from services.worker.pool import ExecutorPool

log = get_logger(__name__)


class WorkerService:
    """Serve the configured servable topics with ``processes * tasks_per_process`` tasks in flight.

    Each executor process runs one task at a time; the extra capacity (``tasks_per_process > 1``) only lets
    tasks wait here for a free process instead of in the broker, saving a round trip between tasks.
    """

    def __init__(self, settings: DLHubSettings, *, pool: ExecutorPool | None = None) -> None:
        self.settings = settings
        self.codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
        self.servable_root: Path = settings.servable_dir
        self.capacity = settings.worker.processes * settings.worker.tasks_per_process
        self.pool = pool or ExecutorPool(
            processes=settings.worker.processes, max_message_bytes=settings.bus.max_message_bytes
        )
        self.handler: HandlerService | None = None
        self._stopping = asyncio.Event()

    async def handle(self, dispatch: Dispatch) -> Result:
        """Run one dispatched step: resolve the servable's directory, execute in the pool, time it."""
        start = time.perf_counter()
        try:
            owner, name, version = parse_servable_topic(dispatch.topic)
        except ValueError as exc:
            return self._failure(dispatch, ValidationFailed(str(exc), field="topic"), start)
        servable = f"{owner}/{name}@{version}"
        directory = version_dir(self.servable_root, owner, name, version)
        if not directory.is_dir():
            missing = NotFound(f"servable {servable} is not installed on this worker")
            return self._failure(dispatch, missing, start)
        timeout_s: float | None = None
        if dispatch.deadline_unix_s > 0:
            timeout_s = dispatch.deadline_unix_s - time.time()
            if timeout_s <= 0:
                return self._failure(
                    dispatch, TaskTimeout("the task reached the worker after its deadline"), start
                )
        try:
            reply = await self.pool.execute(
                task_id=dispatch.task_id,
                servable=servable,
                version_dir=str(directory),
                method=dispatch.method,
                inputs=dispatch.inputs,
                parameters=dispatch.parameters,
                timeout_s=timeout_s,
            )
        except DLHubError as exc:
            log.warning(
                "task failed in the executor pool",
                task_id=dispatch.task_id,
                servable=servable,
                code=exc.code,
                error=exc.message,
            )
            return self._failure(dispatch, exc, start)
        invocation_ms = (time.perf_counter() - start) * 1000.0
        error = reply.error
        if error is not None:
            error = msgspec.structs.replace(error, step=dispatch.step, topic=dispatch.topic)
            log.info(
                "servable failed",
                task_id=dispatch.task_id,
                servable=servable,
                code=error.code,
                exception_type=error.exception_type,
            )
        elif reply.load_ms:
            log.info("servable loaded", servable=servable, pid=reply.pid, load_ms=round(reply.load_ms, 3))
        return Result(
            task_id=dispatch.task_id,
            ok=reply.ok,
            output=reply.output,
            error=error,
            timings=Timings(inference_ms=reply.inference_ms, invocation_ms=invocation_ms),
            step=dispatch.step,
        )

    @staticmethod
    def _failure(dispatch: Dispatch, exc: DLHubError, start: float) -> Result:
        return Result(
            task_id=dispatch.task_id,
            ok=False,
            error=ErrorInfo(code=exc.code, message=exc.message, step=dispatch.step, topic=dispatch.topic),
            timings=Timings(invocation_ms=(time.perf_counter() - start) * 1000.0),
            step=dispatch.step,
        )

    async def run(self) -> None:
        """Start the executor processes, register with the broker and serve until ``stop``."""
        await self.pool.start()
        try:
            if self._stopping.is_set():
                return
            self.handler = HandlerService(
                bus=self.settings.bus,
                codec=self.codec,
                kind="worker",
                topics=self.settings.worker.topics,
                capacity=self.capacity,
                handle=self.handle,
            )
            log.info(
                "worker serving",
                topics=self.settings.worker.topics,
                capacity=self.capacity,
                servable_dir=str(self.servable_root),
            )
            await self.handler.run()
        finally:
            await self.pool.close()

    async def stop(self) -> None:
        """Unregister and drain (bounded, by the HandlerService); ``run`` then stops the executors."""
        self._stopping.set()
        if self.handler is not None:
            await self.handler.stop()
