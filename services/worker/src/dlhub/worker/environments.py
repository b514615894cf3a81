"""Route each version to the executor processes of its environment.

A version without ``environment.json`` runs in the worker's shared pool, exactly as before (one dict lookup
per task once its directory has been seen). A version with its own environment runs in a pool of
``environments.processes_per_environment`` warm executor processes started inside that environment (its venv's
interpreter with only the DLHub runtime copy on ``PYTHONPATH``, or ``docker run`` of its image, speaking over
a unix socket), made the first time one of its versions is called, so new environments are picked up without a
restart. A venv pool serves every version of its environment; a docker pool serves one version, since its
containers mount only that version's directory. An environment missing on this worker (another machine built
it, or it was removed) is rebuilt from the lock stored with the version; without a Docker engine a docker
version fails with ``EnvironmentUnavailable`` while everything else keeps running.

Warm pools are bounded: at most ``max_warm_environments`` (the least recently used idle pool is stopped to
make room for a new one) and none idle for longer than ``environment_idle_s``. A stopped pool starts again
on the next request for it. Docker executors are labelled with this worker process's instance id and its
data directory; ``start`` removes the containers of a previous worker process of the same data directory
that is no longer running (each running worker holds a lock file, ``<envs>/workers/<instance>.lock``).

With ``worker.backend = "parsl"`` tasks run on Parsl's blocks, which may be other machines: a version with
its own environment fails there with ``EnvironmentUnavailable`` rather than silently running on the worker's
own host outside the Parsl resources.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import msgspec

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
from dlhub.common.messages import EMPTY_MAP, NIL
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutionBackend, ExecutorPool, Launch, listen_unix
from dlhub.worker.protocol import ExecReply
from dlhub.worker.warm import WarmSet

log = get_logger(__name__)

MAX_RECORDS = 4096
SOCKET_PREFIX = "dlhub-exec-"
"""Name prefix of the private directories of executor sockets (in the temporary directory)."""


def executor_socket() -> tuple[Path, Path, socket.socket]:
    """A listening unix socket for one docker executor: ``(private, shared, listener)``.

    ``private`` is a fresh ``mkdtemp`` directory (mode 0700, the worker's user: nobody else on the host can
    reach anything under it); ``shared`` (mode 0755, inside it) is what the container mounts and holds only
    the socket (mode 0666, so the container's user can connect whatever its uid). The path is kept short: a
    unix socket path has at most 107 bytes."""
    from dlhub.common.docker_environments import SOCKET_NAME

    private = Path(tempfile.mkdtemp(prefix=SOCKET_PREFIX))
    try:
        shared = private / "s"
        shared.mkdir()
        shared.chmod(0o755)
        listener = listen_unix(str(shared / SOCKET_NAME))
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return private, shared, listener


class WarmPool:
    """One environment's executor pool, with what the LRU and the idle sweep need (tasks running, last use).

    A task routed here after the pool was evicted (it was looked up just before) is sent to the environment's
    new pool, which it starts if needed."""

    def __init__(self, owner: EnvironmentPools, key: str, pool: ExecutorPool) -> None:
        self.owner = owner
        self.key = key
        self.pool = pool
        self.active = 0
        self.last_used = time.monotonic()
        self.evicted = False

    @property
    def processes(self) -> int:
        return self.pool.processes

    async def start(self) -> None:
        await self.pool.start()

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
        if self.evicted:
            backend = await self.owner.backend_for(Path(version_dir))
            return await backend.execute(
                task_id=task_id,
                servable=servable,
                version_dir=version_dir,
                method=method,
                inputs=inputs,
                parameters=parameters,
                timeout_s=timeout_s,
            )
        self.active += 1
        self.owner.touch(self)
        try:
            return await self.pool.execute(
                task_id=task_id,
                servable=servable,
                version_dir=version_dir,
                method=method,
                inputs=inputs,
                parameters=parameters,
                timeout_s=timeout_s,
            )
        finally:
            self.active -= 1
            self.last_used = time.monotonic()

    async def close(self) -> None:
        await self.pool.close()


class EnvironmentPools:
    def __init__(self, settings: DLHubSettings, *, shared: ExecutionBackend, file_limits: FileLimits) -> None:
        self.settings = settings
        self.config = settings.environments
        self.root = settings.environments_dir
        self.shared = shared
        self.file_limits = file_limits
        self.venv = VenvBackend(self.config, self.root)
        self.instance = uuid.uuid4().hex[:16]
        """This worker process (label of its containers)."""
        self._docker: Any = None
        self._by_dir: dict[str, ExecutionBackend] = {}
        self._pools: WarmSet[WarmPool] = WarmSet("environment pool", on_evict=self._forget)
        """Warm pools, least recently used first."""
        self._starting: dict[str, asyncio.Task[WarmPool]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._instance_lock: IO[str] | None = None
        self._cleanup: asyncio.Task[None] | None = None

    @property
    def warm(self) -> list[str]:
        """Keys of the warm environment pools, least recently used first."""
        return self._pools.keys()

    @property
    def evictions(self) -> int:
        return self._pools.evictions

    def recall(self) -> None:
        """Hand back the tasks not started yet in every environment's pool (``ExecutorPool.recall``)."""
        for warm in self._pools:
            warm.pool.recall()

    def _forget(self, warm: WarmPool) -> None:
        """A stopped pool no longer serves the version directories resolved to it."""
        for directory in [d for d, backend in self._by_dir.items() if backend is warm]:
            del self._by_dir[directory]

    def cached(self, version_dir: str) -> ExecutionBackend | None:
        """The backend already resolved for ``version_dir`` (the per-task fast path)."""
        return self._by_dir.get(version_dir)

    def start(self) -> asyncio.Task[None] | None:
        """Remove, in the background, the executor containers a previous worker process of this data
        directory left behind (this worker's own containers are never stale, so nothing waits for it)."""
        if "docker" not in self.config.allowed_backends or self._cleanup is not None:
            return self._cleanup
        self._cleanup = asyncio.create_task(self._remove_stale())
        return self._cleanup

    async def _remove_stale(self) -> None:
        try:
            removed = await asyncio.to_thread(self.remove_stale_containers)
        except Exception as exc:  # no engine here: nothing of ours can be running in it either
            log.debug("no stale containers checked", error=str(exc))
            return
        if removed:
            log.info("removed containers of a previous worker process", containers=removed)

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
            if self.settings.worker.backend == "parsl":
                raise EnvironmentUnavailable(
                    f"this worker runs tasks through Parsl, which does not run per-servable environments "
                    f"(this version needs {record.backend} environment {record.id}); serve it from a "
                    'worker with worker.backend = "local"'
                )
            backend = await self._pool(record, version_dir)
        if len(self._by_dir) >= MAX_RECORDS:
            self._by_dir.clear()
        self._by_dir[key] = backend
        return backend

    def touch(self, warm: WarmPool) -> None:
        self._pools.touch(warm)

    async def _pool(self, record: EnvironmentRecord, version_dir: Path) -> WarmPool:
        # Network access is a property of the running container, not of the environment's contents; a
        # container mounts only the version directory it serves.
        key = f"{record.backend}:{record.id}"
        if record.network:
            key += "+net"
        if record.backend == "docker":
            key += f":{version_dir}"
        warm = self._pools.get(key)
        if warm is not None:
            self._pools.touch(warm)
            return warm
        task = self._starting.get(key)
        if task is None:  # concurrent first calls of one environment share one start
            task = asyncio.create_task(self._start_pool(record, key, version_dir))
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
                self._hold_instance_lock()
                return None, None, runtime
            if not self.venv.is_built(record.id):
                log.info("rebuilding a missing environment from its lock", environment=record.id)
            python = self.venv.ensure(record, build_log, deadline)
        except BuildFailed as exc:
            raise EnvironmentUnavailable(f"environment {record.id} cannot be rebuilt: {exc.message}") from exc
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PYTHONPATH"] = str(runtime)
        return [str(python), "-m", "dlhub.worker.executor"], env, runtime

    async def _start_pool(self, record: EnvironmentRecord, key: str, version_dir: Path) -> WarmPool:
        if record.backend not in ("venv", "docker"):
            raise EnvironmentUnavailable(f"unknown environment backend {record.backend!r}")
        prefix, env, runtime = await asyncio.to_thread(self._prepare, record)
        if record.backend == "docker":
            from dlhub.common.docker_environments import LABEL_HOME, LABEL_WORKER, home_label

            docker = self._docker_backend()
            labels = {LABEL_WORKER: self.instance, LABEL_HOME: home_label(self.settings.data_dir)}
            peer_uid = await asyncio.to_thread(docker.peer_uid)

            def command(args: list[str]) -> list[str] | Launch:
                name = f"dlhub-exec-{record.id[:12]}-{uuid.uuid4().hex[:12]}"
                if docker.config.docker_transfer == "copy":
                    spec = docker.attached_spec(
                        record,
                        runtime=runtime,
                        version_dir=version_dir,
                        executor_args=args,
                        name=name,
                        labels=labels,
                    )

                    async def remove() -> None:
                        await asyncio.to_thread(docker.remove_container, name)

                    relay = [sys.executable, "-m", "dlhub.worker.docker_relay", json.dumps(spec)]
                    return Launch(argv=relay, reap=remove)
                private, shared, listener = executor_socket()
                try:
                    argv: list[str] = docker.run_argv(
                        record,
                        runtime=runtime,
                        version_dir=version_dir,
                        executor_args=args,
                        name=name,
                        labels=labels,
                        socket_dir=shared,
                    )
                except BaseException:
                    listener.close()
                    shutil.rmtree(private, ignore_errors=True)
                    raise

                async def reap() -> None:
                    try:
                        await asyncio.to_thread(docker.remove_container, name)
                    finally:
                        shutil.rmtree(private, ignore_errors=True)

                return Launch(argv=argv, reap=reap, listener=listener, peer_uid=peer_uid)
        else:
            assert prefix is not None

            def command(args: list[str]) -> list[str] | Launch:
                return [*prefix, *args]

        self._pools.make_room(self.config.max_warm_environments - 1)
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
        warm = WarmPool(self, key, pool)
        self._pools.add(warm, self.config.max_warm_environments)
        if self._sweeper is None:
            idle_s, limit = self.config.environment_idle_s, self.config.max_warm_environments
            self._sweeper = asyncio.create_task(self._pools.sweep(idle_s, limit))
        return warm

    # -- containers of dead worker processes ------------------------------------------------------------

    def _lock_path(self, instance: str) -> Path:
        return self.root / "workers" / f"{instance}.lock"

    def _hold_instance_lock(self) -> None:
        """Hold ``<envs>/workers/<instance>.lock`` while this process lives: proof it still runs."""
        if self._instance_lock is not None:
            return
        path = self._lock_path(self.instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._instance_lock = handle

    def remove_stale_containers(self) -> list[str]:
        """Blocking: remove the executor containers of this data directory whose worker process is gone (its
        lock file is free); return their names."""
        from dlhub.common.docker_environments import LABEL_HOME, LABEL_WORKER, SOCKET_MOUNT, home_label

        docker = self._docker_backend()
        found = docker.containers({LABEL_HOME: home_label(self.settings.data_dir)})
        by_instance: dict[str, list[tuple[str, list[Path]]]] = collections.defaultdict(list)
        for container in found:
            instance = str((container.get("Labels") or {}).get(LABEL_WORKER, ""))
            names = container.get("Names") or [container["Id"]]
            sockets = [
                Path(str(mount.get("Source")))
                for mount in container.get("Mounts") or []
                if mount.get("Destination") == SOCKET_MOUNT
            ]
            by_instance[instance].append((str(names[0]).lstrip("/"), sockets))
        removed: list[str] = []
        for instance, containers in by_instance.items():
            if instance == self.instance or (instance and self._alive(instance)):
                continue
            for name, sockets in containers:
                docker.remove_container(name)
                removed.append(name)
                for shared in sockets:  # the private directory executor_socket made around the socket's
                    if shared.name == "s" and shared.parent.name.startswith(SOCKET_PREFIX):
                        shutil.rmtree(shared.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                self._lock_path(instance).unlink()
        return removed

    def _alive(self, instance: str) -> bool:
        path = self._lock_path(instance)
        if not path.exists():
            return False
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    async def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        pools = self._pools.take_all()
        self._by_dir.clear()
        await asyncio.gather(*(warm.close() for warm in pools), return_exceptions=True)
        await self._pools.drain()
        if self._instance_lock is not None:
            with contextlib.suppress(OSError):
                self._lock_path(self.instance).unlink()
            self._instance_lock.close()
            self._instance_lock = None
