"""The worker's glue: a ``HandlerService`` for ``servable/*`` topics whose handler runs tasks in the pool."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import msgspec

from dlhub.common.bus import HandlerService
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import DLHubError, NotFound, TaskTimeout, ValidationFailed
from dlhub.common.ids import parse_servable_topic, serves_topics
from dlhub.common.logging import get_logger
from dlhub.common.messages import Dispatch, ErrorInfo, Register, Result, Timings
from dlhub.common.servable_store import METADATA_FILENAME, version_dir
from dlhub.worker.batching import Batcher, BatchKey, BatchPolicy, batch_policy, peek_rows
from dlhub.worker.bundles import BundleCache
from dlhub.worker.devices import offered_devices
from dlhub.worker.environments import EnvironmentPools
from dlhub.worker.files import FileLimits
from dlhub.worker.lanes import ServableLanes
from dlhub.worker.metrics import TASKS
from dlhub.worker.pool import ExecutionBackend, ExecutorPool
from dlhub.worker.protocol import ExecReply

log = get_logger(__name__)

POLICY_CACHE_SIZE = 4096


def file_limits_of(settings: DLHubSettings) -> FileLimits:
    config = settings.worker
    return FileLimits(
        config.file_fetch_max_bytes, config.file_fetch_timeout_s, config.file_fetch_max_redirects
    )


def make_backend(settings: DLHubSettings) -> ExecutionBackend:
    """The configured execution back end: local executor processes, or Parsl (imported only when used)."""
    config = settings.worker
    max_message_bytes = settings.bus.max_message_bytes
    file_limits = file_limits_of(settings)
    if config.backend == "parsl":
        from dlhub.worker.parsl_backend import ParslBackend

        return ParslBackend(
            config.parsl,
            run_dir_root=settings.data_dir / "parsl",
            max_message_bytes=max_message_bytes,
            file_limits=file_limits,
        )
    return ServableLanes(
        processes=config.processes,
        max_message_bytes=max_message_bytes,
        depth=config.pipeline_depth,
        file_limits=file_limits,
        max_lanes=config.max_servable_lanes,
        idle_s=config.servable_lane_idle_s,
    )


def served_topics(settings: DLHubSettings) -> list[str]:
    """The broker topics this worker registers: ``worker.serves`` patterns if set, else ``worker.topics``."""
    serves = settings.worker.serves
    return serves_topics(serves) if serves is not None else list(settings.worker.topics)


def profile_of(settings: DLHubSettings) -> Register:
    """What this Task Manager tells the broker of itself besides its topics (shown in /health)."""
    config = settings.worker
    executors: list[str] = [config.backend, *settings.environments.allowed_backends]
    return Register(
        handler_id="",
        kind="worker",
        topics=[],
        capacity=0,
        site=config.site,
        instance_id=config.instance_id,
        executors=executors,
        serves=list(config.serves) if config.serves is not None else list(config.topics),
        devices=offered_devices(config.devices),
    )


def servable_share(capacity: int, configured: int | None) -> int:
    """Tasks of one servable version the broker hands this worker at once: ``configured``, by default three
    quarters of the capacity, so that at least a quarter (at least one task) stays free for the others."""
    if configured is not None:
        return min(configured, capacity)
    return max(1, capacity - max(1, capacity // 4))


class WorkerService:
    """Serve the configured servable topics with ``processes * tasks_per_process`` tasks in flight, plus the
    batching allowance (with the Parsl back end, ``processes`` is the number of Parsl workers).

    Each servable version runs in its own lane of ``processes`` executor processes (``lanes.py``), each
    running one task at a time with up to ``pipeline_depth`` requests written to it ahead (``pool.py``); the
    broker hands the worker at most ``servable_max_tasks`` tasks of one servable at once. The extra capacity
    (``tasks_per_process > 1``) only lets tasks wait here for a process instead of in the broker, saving a
    round trip between tasks. With
    adaptive batching on, the broker must also hand this worker the concurrent requests it is to merge: the
    allowance (``batch_capacity``, by default ``batch_max_size``) lets up to one full batch wait here while
    the executors are busy. Requests to servables that are not batchable also use it, and then simply wait
    here for a process rather than in the broker (as with ``tasks_per_process``); set ``batch_capacity = 0``
    (or ``batch_enabled = false``) where several workers must share non-batchable load evenly.
    """

    def __init__(self, settings: DLHubSettings, *, pool: ExecutionBackend | None = None) -> None:
        self.settings = settings
        config = settings.worker
        self.codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
        self.servable_root: Path = settings.servable_dir
        self.bundles = BundleCache(settings)
        """Versions this worker lacks in ``servable_root``, fetched from the registry by digest."""
        self.batching = config.batch_enabled
        allowance = 0
        if self.batching:
            allowance = config.batch_max_size if config.batch_capacity is None else config.batch_capacity
        self.pool = pool or make_backend(settings)
        self.environments = EnvironmentPools(settings, shared=self.pool, file_limits=file_limits_of(settings))
        """Versions with their own environment run in its pool (``environments.py``); the others in
        ``self.pool``."""
        self.capacity = self.pool.processes * config.tasks_per_process + allowance
        self.servable_max_tasks = servable_share(self.capacity, config.servable_max_tasks)
        self.batcher = Batcher(run=self._run_batch, codec=self.codec, slots=self.pool.processes)
        self._policies: dict[tuple[str, str], BatchPolicy | None] = {}
        self._installed: set[Path] = set()
        """Version directories seen to exist: versions are immutable, so one ``stat`` per version is enough (a
        version removed later fails in the executor with a typed load error)."""
        self._batch_ids = itertools.count(1)
        self.handler: HandlerService | None = None
        self._stopping = asyncio.Event()

    def batch_policy(self, directory: Path, method: str) -> BatchPolicy | None:
        """The batching policy of ``method`` of the servable in ``directory`` (read once per version)."""
        if not self.batching:
            return None
        cache_key = (str(directory), method)
        try:
            return self._policies[cache_key]
        except KeyError:
            pass
        try:
            metadata: Any = json.loads((directory / METADATA_FILENAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not cached: the executor reports the problem, and a fixed file is read next time
        policy = None
        if isinstance(metadata, dict):
            policy = batch_policy(
                metadata,
                method,
                default_max_size=self.settings.worker.batch_max_size,
                default_max_wait_ms=self.settings.worker.batch_max_wait_ms,
            )
        if len(self._policies) >= POLICY_CACHE_SIZE:
            self._policies.clear()
        self._policies[cache_key] = policy
        return policy

    async def _run_batch(self, key: BatchKey, inputs: msgspec.Raw, timeout_s: float | None) -> ExecReply:
        backend = self.environments.cached(key.version_dir)
        if backend is None:  # its environment's pool was stopped (evicted) meanwhile: start it again
            backend = await self.environments.backend_for(Path(key.version_dir))
        return await backend.execute(
            task_id=f"batch-{next(self._batch_ids)}",
            servable=key.servable,
            version_dir=key.version_dir,
            method=key.method,
            inputs=inputs,
            parameters=msgspec.Raw(key.parameters),
            timeout_s=timeout_s,
        )

    def _is_installed(self, directory: Path) -> bool:
        if directory in self._installed:
            return True
        if not directory.is_dir():
            return False
        if len(self._installed) >= POLICY_CACHE_SIZE:
            self._installed.clear()
        self._installed.add(directory)
        return True

    def _local_version_dir(self, package: str, owner: str, name: str, version: int) -> Path | None:
        """The version's folder if this worker has it: a bundle fetched before, else the servable store (the
        builder's disk); None when it must be fetched."""
        if package:
            fetched = self.bundles.cached(package)
            if fetched is not None:
                return fetched
        directory = version_dir(self.servable_root, owner, name, version)
        return directory if self._is_installed(directory) else None

    async def _fetched_version_dir(self, package: str, servable: str) -> Path:
        """The version's bundle from the registry (or this worker's cache on disk), checked and unpacked."""
        if not package:
            raise NotFound(f"servable {servable} is not installed on this worker")
        return await self.bundles.ensure(package, servable)

    async def handle_counted(self, dispatch: Dispatch) -> Result:
        """``handle``, counted in ``dlhub_worker_tasks_total`` (a step cancelled at shutdown is not)."""
        result = await self.handle(dispatch)
        if result.ok:
            TASKS.labels("completed", "").inc()
        else:
            TASKS.labels("failed", result.error.code if result.error is not None else "").inc()
        return result

    async def handle(self, dispatch: Dispatch) -> Result:
        """Run one dispatched step: resolve the servable's directory, execute in the pool, time it."""
        start = time.perf_counter()
        try:
            owner, name, version = parse_servable_topic(dispatch.topic)
        except ValueError as exc:
            return self._failure(dispatch, ValidationFailed(str(exc), field="topic"), start)
        servable = f"{owner}/{name}@{version}"
        directory = self._local_version_dir(dispatch.package, owner, name, version)
        if directory is None:  # first use on this Task Manager (no await on the path of every other task)
            try:
                directory = await self._fetched_version_dir(dispatch.package, servable)
            except DLHubError as exc:
                return self._failure(dispatch, exc, start)
        timeout_s: float | None = None
        if dispatch.deadline_unix_s > 0:
            timeout_s = dispatch.deadline_unix_s - time.time()
            if timeout_s <= 0:
                return self._failure(
                    dispatch, TaskTimeout("the task reached the worker after its deadline"), start
                )
        queue_ms = 0.0  # every wait before the model starts: environment start, batching window, executor
        backend = self.environments.cached(str(directory))
        if backend is None:
            try:
                backend = await self.environments.backend_for(directory)
            except DLHubError as exc:
                log.warning("environment unavailable", servable=servable, code=exc.code, error=exc.message)
                return self._failure(dispatch, exc, start)
            queue_ms = (time.perf_counter() - start) * 1000.0
        policy = self.batch_policy(directory, dispatch.method)
        rows = peek_rows(dispatch.inputs) if policy is not None else None
        try:
            if policy is not None and rows is not None and rows < policy.max_size:
                key = BatchKey(servable, str(directory), dispatch.method, bytes(dispatch.parameters))
                outcome = await self.batcher.submit(key, policy, dispatch.inputs, rows, timeout_s)
                reply = outcome.reply
                queue_ms += outcome.queue_ms
            else:  # not batchable, or already a full batch on its own: straight to the pool, undecoded
                reply = await backend.execute(
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
        queue_ms += reply.queue_ms + reply.load_ms
        invocation_ms = max(0.0, (time.perf_counter() - start) * 1000.0 - queue_ms)
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
            timings=Timings(inference_ms=reply.inference_ms, invocation_ms=invocation_ms, queue_ms=queue_ms),
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
        """Start the execution back end, register with the broker and serve until ``stop``."""
        await self.pool.start()
        try:
            self.environments.start()
            if self._stopping.is_set():
                return
            topics = served_topics(self.settings)
            # Both off the loop and concurrently: nvidia-smi may take a while, and so does an HTTP client.
            profile, _ = await asyncio.gather(
                asyncio.to_thread(profile_of, self.settings), self.bundles.prepare()
            )
            self.handler = HandlerService(
                bus=self.settings.bus,
                codec=self.codec,
                kind="worker",
                topics=topics,
                capacity=self.capacity,
                handle=self.handle_counted,
                max_tasks_per_topic=self.servable_max_tasks,
                profile=profile,
            )
            self.handler.stop_drain_timeout_s = self.settings.worker.shutdown_grace_s
            self.handler.on_drain = self._hand_back_unstarted
            log.info(
                "worker serving",
                topics=topics,
                site=self.settings.worker.site or None,
                devices=profile.devices or None,
                registry_url=self.settings.worker.registry_url,
                capacity=self.capacity,
                servable_max_tasks=self.servable_max_tasks,
                servable_dir=str(self.servable_root),
            )
            await self.handler.run()
        finally:
            await self.batcher.close()
            await self.bundles.close()
            await self.environments.close()
            await self.pool.close()

    def _hand_back_unstarted(self) -> None:
        """Draining: tasks queued here that have not started end ``not_started``, which the broker routes to
        another worker (Parsl: not supported, they run here within the grace period)."""
        if isinstance(self.pool, ExecutorPool | ServableLanes):
            self.pool.recall()
        self.environments.recall()

    async def stop(self) -> None:
        """Unregister and drain (bounded, by the HandlerService); ``run`` then stops the executors."""
        self._stopping.set()
        if self.handler is not None:
            await self.handler.stop()
