"""Servable lanes: every servable version of the shared environment runs in executor processes of its own.

A lane is an ``ExecutorPool`` of ``worker.processes`` processes serving one version directory, started the
first time that version is called on this worker. A slow servable keeps only its own lane's processes busy, a
stuck one is killed at its task's deadline in its own lane, and one that crashes its process on every call
only ever has its own lane respawned: requests to any other servable go to other processes and never queue
behind them. Requests to one servable beyond what its lane runs at once (``processes``, each with up to
``pipeline_depth`` requests written ahead) wait for it here, and that wait is reported as ``queue_ms``.

Warm lanes are bounded like the environment pools (``environments.py``): at most ``max_servable_lanes``
(opening another one first stops the least recently used idle lane; a lane running a task is never stopped, so
the bound may be passed while every lane is busy) and none idle for longer than ``servable_lane_idle_s``. The
time a request waits for its lane to start (a process spawn, on the version's first call) is part of its
``queue_ms``; one spare process is kept started, so that a new lane adopts it instead of waiting for a spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Final

import msgspec

from dlhub.common.errors import DLHubError, TaskNotStarted, TaskTimeout, WorkerLost
from dlhub.common.logging import get_logger
from dlhub.common.messages import EMPTY_MAP, NIL
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutorPool, ExecutorProcess, PoolClosed
from dlhub.worker.protocol import ExecReply
from dlhub.worker.warm import WarmSet

log = get_logger(__name__)

CACHE_SIZE: Final = 32
STARTUP_TIMEOUT_S: Final = 60.0


class Lane:
    """One version's executor pool, with what the LRU bound and the idle sweep need."""

    def __init__(self, key: str, pool: ExecutorPool) -> None:
        self.key = key
        self.pool = pool
        self.active = 0
        self.last_used = time.monotonic()
        self.evicted = False

    async def close(self) -> None:
        await self.pool.close()


class ServableLanes:
    """The worker's execution back end for versions without an environment of their own: one lane each."""

    def __init__(
        self,
        *,
        processes: int,
        max_message_bytes: int,
        depth: int,
        file_limits: FileLimits,
        max_lanes: int,
        idle_s: float,
    ) -> None:
        if processes < 1 or max_lanes < 1:
            raise ValueError("servable lanes need at least one process and one lane")
        self._processes = processes
        self.max_message_bytes = max_message_bytes
        self.depth = depth
        self.file_limits = file_limits
        self.max_lanes = max_lanes
        self.idle_s = idle_s
        self._lanes: WarmSet[Lane] = WarmSet("servable lane")
        """Warm lanes by version directory, least recently used first."""
        self._opening: dict[str, asyncio.Task[Lane]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._spare: ExecutorProcess | None = None
        self._refill: asyncio.Task[None] | None = None
        self._closing = False
        self._recalled = False

    @property
    def processes(self) -> int:
        """Tasks one servable runs at once (its lane's processes)."""
        return self._processes

    @property
    def evictions(self) -> int:
        return self._lanes.evictions

    @property
    def lanes(self) -> list[str]:
        """Version directories with a warm lane, least recently used first."""
        return self._lanes.keys()

    @property
    def pids(self) -> list[int]:
        return [pid for lane in self._lanes for pid in lane.pool.pids]

    def lane_pids(self, version_dir: str) -> list[int]:
        lane = self._lanes.get(version_dir)
        return lane.pool.pids if lane is not None else []

    async def start(self) -> None:
        """Lanes start on first use; the spare process and the idle sweep from the start."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._lanes.sweep(self.idle_s, self.max_lanes))
        await self._fill_spare()

    async def _fill_spare(self) -> None:
        try:
            spare = await ExecutorProcess.spawn(
                slot=0,
                python=sys.executable,
                max_message_bytes=self.max_message_bytes,
                cache_size=CACHE_SIZE,
                startup_timeout_s=STARTUP_TIMEOUT_S,
                file_limits=self.file_limits,
            )
        except Exception as exc:  # lanes then spawn their own processes (and report that failure)
            log.error("spare executor process failed to start", error=str(exc))
            return
        if self._closing or self._spare is not None:
            await spare.close()
            return
        self._spare = spare

    def _take_spare(self) -> ExecutorProcess | None:
        """The spare process if it is still alive (``_refill_spare`` replaces it)."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.returncode is None:
            return spare
        return None

    def _refill_spare(self) -> None:
        """Start a new spare in the background, once the lane that took the last one has answered its first
        request: forking the worker and importing in the child would otherwise delay that request."""
        if self._spare is None and not self._closing and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill_spare())

    async def execute(
        self,
        *,
        task_id: str,
        servable: str,
        version_dir: str,
        method: str,
        inputs: msgspec.Raw = NIL,
        parameters: msgspec.Raw = EMPTY_MAP,
        timeout_s: float | None = None,
    ) -> ExecReply:
        """Run one task in the lane of ``version_dir`` (started if needed; its start is queue time)."""
        lane = self._lanes.get(version_dir)
        opened_ms = 0.0
        if lane is None or lane.evicted:
            if self._recalled:  # draining: a lane is not worth starting for a task another worker can run
                raise TaskNotStarted("the worker is shutting down; the task had not started")
            started = time.perf_counter()
            lane = await self._lane(version_dir, servable, timeout_s)
            opened_ms = (time.perf_counter() - started) * 1000.0
        else:
            self._lanes.touch(lane)
        lane.active += 1
        try:
            reply = await lane.pool.execute(
                task_id=task_id,
                servable=servable,
                version_dir=version_dir,
                method=method,
                inputs=inputs,
                parameters=parameters,
                timeout_s=timeout_s,
            )
        finally:
            lane.active -= 1
            lane.last_used = time.monotonic()
            if opened_ms:
                self._refill_spare()
        reply.queue_ms += opened_ms
        return reply

    async def _lane(self, version_dir: str, servable: str, timeout_s: float | None) -> Lane:
        """The warm lane of ``version_dir``; concurrent first calls share one start."""
        while True:
            if self._closing:
                raise PoolClosed("the worker is shutting down")
            lane = self._lanes.get(version_dir)
            if lane is not None and not lane.evicted:
                return lane
            task = self._opening.get(version_dir)
            if task is None:
                task = asyncio.create_task(self._open(version_dir, servable))
                self._opening[version_dir] = task
                task.add_done_callback(lambda _: self._opening.pop(version_dir, None))
            try:
                async with asyncio.timeout(timeout_s):
                    lane = await asyncio.shield(task)
            except TimeoutError:
                raise TaskTimeout(
                    f"the task passed its deadline while executor processes for {servable} were starting"
                ) from None
            if not lane.evicted:  # else stopped by another lane's start meanwhile: open it again
                return lane

    async def _open(self, version_dir: str, servable: str) -> Lane:
        self._lanes.make_room(self.max_lanes - 1)
        pool = ExecutorPool(
            processes=self._processes,
            max_message_bytes=self.max_message_bytes,
            depth=self.depth,
            file_limits=self.file_limits,
            name=f"lane:{servable}",
            cache_size=CACHE_SIZE,
            startup_timeout_s=STARTUP_TIMEOUT_S,
        )
        try:
            await pool.start(self._take_spare())
        except DLHubError as exc:
            raise WorkerLost(f"executor processes for {servable} did not start: {exc.message}") from exc
        except (OSError, TimeoutError) as exc:
            raise WorkerLost(f"executor processes for {servable} did not start: {exc}") from exc
        lane = Lane(version_dir, pool)
        if self._closing:
            await pool.close()
            raise PoolClosed("the worker is shutting down")
        self._lanes.add(lane, self.max_lanes)
        if self._recalled:
            pool.recall()
        return lane

    def recall(self) -> None:
        """The worker drains: every lane hands back the tasks it has not started (``ExecutorPool.recall``),
        and no lane starts any more."""
        self._recalled = True
        for lane in self._lanes:
            lane.pool.recall()

    async def close(self) -> None:
        """Stop every lane (each finishes what it was sent within the pool's grace, then is killed)."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._opening.values()):
            task.cancel()
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.close()
        lanes = self._lanes.take_all()
        await asyncio.gather(*(lane.pool.close() for lane in lanes), return_exceptions=True)
        await self._lanes.drain()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
