"""Route each version to the executor processes of its environment.

A version without ``environment.json`` runs in the worker's shared pool, exactly as before (one dict lookup
per task once its directory has been seen). A version with its own environment runs in a pool of
``environments.processes_per_environment`` warm executor processes started inside that environment (its
venv's interpreter with only the DLHub runtime copy on ``PYTHONPATH``, or ``docker run -i`` of its image),
made the first time one of its versions is called, so new environments are picked up without a restart.
An environment missing on this worker (another machine built it, or it was removed) is rebuilt from the
lock stored with the version; without a Docker engine a docker version fails with
``EnvironmentUnavailable`` while everything else keeps running.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from pathlib import Path
from typing import Any

from dlhub.common.config import DLHubSettings
from dlhub.common.environments import (
    BuildLog,
    Deadline,
    EnvironmentRecord,
    VenvBackend,
    read_environment,
    runtime_dir,
)
from dlhub.common.errors import BuildFailed, DLHubError, EnvironmentUnavailable
from dlhub.common.logging import get_logger
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutionBackend, ExecutorPool

log = get_logger(__name__)

MAX_RECORDS = 4096


class EnvironmentPools:
    def __init__(self, settings: DLHubSettings, *, shared: ExecutionBackend, file_limits: FileLimits) -> None:
        self.settings = settings
        self.config = settings.environments
        self.root = settings.environments_dir
        self.shared = shared
        self.file_limits = file_limits
        self.venv = VenvBackend(self.config, self.root)
        self._docker: Any = None
        self._by_dir: dict[str, ExecutionBackend] = {}
        self._pools: dict[str, ExecutorPool] = {}
        self._starting: dict[str, asyncio.Task[ExecutorPool]] = {}
        self._names = itertools.count(1)

    def cached(self, version_dir: str) -> ExecutionBackend | None:
        """The backend already resolved for ``version_dir`` (the per-task fast path)."""
        return self._by_dir.get(version_dir)

    async def backend_for(self, version_dir: Path) -> ExecutionBackend:
        key = str(version_dir)
        found = self._by_dir.get(key)
        if found is not None:
            return found
        record = read_environment(version_dir)
        backend: ExecutionBackend
        if record is None or record.kind == "shared":
            backend = self.shared
        else:
            backend = await self._pool(record)
        if len(self._by_dir) >= MAX_RECORDS:
            self._by_dir.clear()
        self._by_dir[key] = backend
        return backend

    async def _pool(self, record: EnvironmentRecord) -> ExecutorPool:
        # Network access is a property of the running container, not of the environment's contents.
        key = f"{record.id}+net" if record.network else record.id
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        task = self._starting.get(key)
        if task is None:  # concurrent first calls of one environment share one start
            task = asyncio.create_task(self._start_pool(record, key))
            self._starting[key] = task
            task.add_done_callback(lambda _: self._starting.pop(key, None))
        return await asyncio.shield(task)

    def _docker_backend(self) -> Any:
        if self._docker is None:
            from dlhub.common.docker_environments import DockerBackend

            self._docker = DockerBackend(self.config)
        return self._docker

    def _prepare(self, record: EnvironmentRecord) -> tuple[list[str] | None, dict[str, str] | None, Path]:
        """Blocking: make sure the environment exists here (rebuilding it from its lock) and the runtime."""
        build_log = BuildLog(f"environment {record.id}")
        deadline = Deadline(self.config.build_timeout_s)
        runtime = runtime_dir(self.root)
        try:
            if record.backend == "docker":
                self._docker_backend().ensure(record, build_log, deadline)
                return None, None, runtime
            if not self.venv.is_built(record.id):
                log.info("rebuilding a missing environment from its lock", environment=record.id)
            python = self.venv.ensure(record, build_log, deadline)
        except BuildFailed as exc:
            raise EnvironmentUnavailable(f"environment {record.id} cannot be rebuilt: {exc.message}") from exc
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PYTHONPATH"] = str(runtime)
        return [str(python), "-m", "dlhub.worker.executor"], env, runtime

    async def _start_pool(self, record: EnvironmentRecord, key: str) -> ExecutorPool:
        if record.backend not in ("venv", "docker"):
            raise EnvironmentUnavailable(f"unknown environment backend {record.backend!r}")
        prefix, env, runtime = await asyncio.to_thread(self._prepare, record)
        if record.backend == "docker":
            docker = self._docker_backend()
            servable_root = self.settings.servable_dir

            def command(args: list[str]) -> list[str]:
                name = f"dlhub-exec-{record.id[:12]}-{uuid.uuid4().hex[:8]}"
                argv: list[str] = docker.run_argv(
                    record, runtime=runtime, servable_root=servable_root, executor_args=args, name=name
                )
                return argv
        else:
            assert prefix is not None

            def command(args: list[str]) -> list[str]:
                return [*prefix, *args]

        pool = ExecutorPool(
            processes=self.config.processes_per_environment,
            max_message_bytes=self.settings.bus.max_message_bytes,
            depth=self.settings.worker.pipeline_depth,
            file_limits=self.file_limits,
            command=command,
            env=env,
            name=f"{record.backend}:{record.id}",
        )
        try:
            await pool.start()
        except DLHubError as exc:
            raise EnvironmentUnavailable(
                f"executor processes of environment {record.id} did not start: {exc.message}"
            ) from exc
        self._pools[key] = pool
        return pool

    async def close(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        pools = list(self._pools.values())
        self._pools.clear()
        self._by_dir.clear()
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
