"""Run the worker's tasks through Parsl's HighThroughputExecutor instead of local executor processes.

The worker service keeps its role (broker registration, batching, timing); only the execution moves: each
``ExecRequest`` is encoded into the same msgpack frame the local pool writes to its children and sent as
bytes to ``run_frame``, a Parsl ``python_app``. In every Parsl worker process one module-level ``Executor``
(created by the first task) keeps servables loaded between tasks, exactly as an executor child does. Only
bytes cross Parsl in either direction; model objects never leave the Parsl worker that loaded them.

Blocks (batch jobs, pods or, with the local provider, a process tree on this machine) come from the provider
in ``[worker.parsl]``; ``parsl_config`` turns that section into a Parsl ``Config``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from dlhub.common.config import ParslConfig
from dlhub.common.errors import DLHubError, InvalidMessage, TaskTimeout, WorkerLost
from dlhub.common.logging import get_logger
from dlhub.common.messages import EMPTY_MAP, NIL
from dlhub.worker.executor import DEFAULT_CACHE_SIZE, Executor
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import PoolClosed
from dlhub.worker.protocol import (
    HEADER_BYTES,
    ExecReply,
    ExecRequest,
    body_length,
    decode_reply,
    decode_request,
    encode_frame,
)

log = get_logger(__name__)

LABEL: Final = "dlhub"
READY_POLL_S: Final = 0.2
OWNER_FILE: Final = "owner"

# -- inside the Parsl worker process ------------------------------------------------------------------------

_EXECUTOR: Executor | None = None


def run_frame(
    frame: bytes, max_message_bytes: int, cache_size: int, file_limits: tuple[int, float, int]
) -> bytes:
    """Parsl app body: answer one ``ExecRequest`` frame with an ``ExecReply`` frame.

    Runs in a Parsl worker process; the module-level executor outlives the task, so the next task for the
    same servable finds it loaded (``load_ms`` 0, same ``pid``). The settings travel as plain values.
    """
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = Executor(
            max_message_bytes=max_message_bytes, cache_size=cache_size, file_limits=FileLimits(*file_limits)
        )
    length = body_length(frame[:HEADER_BYTES], max_bytes=max_message_bytes)
    request = decode_request(frame[HEADER_BYTES : HEADER_BYTES + length])
    return bytes(encode_frame(_EXECUTOR.handle(request), max_bytes=max_message_bytes))


# -- configuration ------------------------------------------------------------------------------------------


def _walltime(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _launcher(name: str) -> Any:
    from parsl import launchers

    choices: dict[str, Callable[[], Any]] = {
        "single_node": launchers.SingleNodeLauncher,
        "simple": launchers.SimpleLauncher,
        "srun": launchers.SrunLauncher,
        "mpiexec": launchers.MpiExecLauncher,
        "aprun": launchers.AprunLauncher,
    }
    return choices[name]()


def _blocks(config: ParslConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "nodes_per_block": config.nodes_per_block,
        "init_blocks": config.init_blocks,
        "min_blocks": config.min_blocks,
        "max_blocks": config.max_blocks,
        "parallelism": config.parallelism,
        "worker_init": config.worker_init,
    }
    if config.launcher != "default":
        options["launcher"] = _launcher(config.launcher)
    return options


def _provider(config: ParslConfig) -> Any:
    from parsl import providers

    blocks = _blocks(config)
    if config.provider == "local":
        return providers.LocalProvider(**blocks)
    if config.provider == "slurm":
        from dlhub.worker.parsl_slurm import AccountingFreeSlurmProvider

        return AccountingFreeSlurmProvider(
            partition=config.partition,
            account=config.account,
            qos=config.qos,
            walltime=_walltime(config.walltime_s),
            scheduler_options=config.scheduler_options,
            exclusive=config.exclusive,
            status_period_s=config.job_status_period_s,
            **blocks,
        )
    if config.provider == "pbs":
        return providers.PBSProProvider(
            queue=config.queue,
            account=config.account,
            walltime=_walltime(config.walltime_s),
            scheduler_options=config.scheduler_options,
            select_options=config.select_options,
            cpus_per_node=config.cpus_per_node,
            **blocks,
        )
    if config.image is None:
        raise ValueError("worker.parsl.image is required for the kubernetes provider")
    blocks.pop("launcher", None)  # pods start their worker pool directly
    return providers.KubernetesProvider(
        image=config.image,
        namespace=config.namespace,
        max_cpu=config.pod_max_cpu,
        max_mem=config.pod_max_mem,
        **blocks,
    )


def parsl_config(config: ParslConfig, *, run_dir: str) -> Any:
    """The Parsl ``Config`` for ``[worker.parsl]``: one HighThroughputExecutor labelled ``dlhub``.

    Scaling stays with Parsl's ``simple`` strategy between ``min_blocks`` and ``max_blocks``: every
    ``strategy_period_s`` it asks for blocks while tasks wait and releases a block idle for
    ``max_idletime_s``. Parsl's own logging setup is off: its modules log through this service's logging at
    warning level and above.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    local = config.provider == "local"
    executor_options: dict[str, Any] = {}
    if local:
        # Run Parsl's worker pool with this interpreter rather than whatever is first on PATH.
        executor_options["launch_cmd"] = DEFAULT_LAUNCH_CMD.replace(
            "process_worker_pool.py",
            f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool",
            1,
        )
    address = config.address or ("127.0.0.1" if local else None)
    executor = HighThroughputExecutor(
        label=LABEL,
        provider=_provider(config),
        address=address,
        interchange_launch_cmd=[sys.executable, "-m", "parsl.executors.high_throughput.interchange"],
        max_workers_per_node=config.workers_per_node,
        cores_per_worker=config.cores_per_worker,
        heartbeat_period=config.heartbeat_period_s,
        heartbeat_threshold=config.heartbeat_threshold_s,
        encrypted=config.encrypted,
        **executor_options,
    )
    return Config(
        executors=[executor],
        run_dir=run_dir,
        initialize_logging=False,
        usage_tracking=0,
        strategy="simple",
        strategy_period=config.strategy_period_s,
        max_idletime=config.max_idletime_s,
        exit_mode="cleanup",
    )


# -- inside the worker service ------------------------------------------------------------------------------


def _owner_gone(run_dir: Path) -> bool:
    """True when ``run_dir`` was made by a worker service on this host that no longer runs."""
    try:
        host, pid = (run_dir / OWNER_FILE).read_text(encoding="utf-8").split()
        if host != socket.gethostname():
            return False  # a run directory on a shared file system may belong to another host's service
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def remove_stale_run_dirs(root: Path) -> None:
    """Remove the run directories of worker services that were killed before they could clean up."""
    for run_dir in root.glob("parsl-*"):
        if run_dir.is_dir() and _owner_gone(run_dir):
            log.info("removing stale parsl run directory", run_dir=str(run_dir))
            shutil.rmtree(run_dir, ignore_errors=True)


def _failure_kind(exc: BaseException) -> str:
    from parsl.executors.errors import BadStateException
    from parsl.executors.high_throughput.errors import ManagerLost
    from parsl.executors.high_throughput.errors import WorkerLost as ParslWorkerLost

    if isinstance(exc, ParslWorkerLost | ManagerLost):
        return "lost"
    if isinstance(exc, BadStateException):
        return "unavailable"  # its blocks failed (e.g. a broken worker_init): Parsl fails every task now
    return "failed"


class ParslBackend:
    """The ``ExecutionBackend`` that submits each task to a Parsl HighThroughputExecutor."""

    def __init__(
        self,
        config: ParslConfig,
        *,
        run_dir_root: Path,
        max_message_bytes: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        file_limits: FileLimits | None = None,
    ) -> None:
        self.config = config
        limits = file_limits or FileLimits()
        self.file_limits = (limits.max_bytes, limits.timeout_s, limits.max_redirects)
        self.run_dir_root = config.run_dir or run_dir_root
        self.max_message_bytes = max_message_bytes
        self.cache_size = cache_size
        self.run_dir: Path | None = None
        self._dfk: Any = None
        self._app: Any = None
        self._closing = False
        self._keep_run_dir = config.keep_run_dir

    @property
    def processes(self) -> int:
        """Parsl workers when every block is up: the tasks that can run at once."""
        cfg = self.config
        return cfg.workers_per_node * cfg.nodes_per_block * cfg.max_blocks

    async def start(self) -> None:
        """Start the DataFlowKernel (interchange, blocks); with the local provider, wait for the workers."""
        logging.getLogger("parsl").setLevel(logging.WARNING)
        # The DataFlowKernel logs every failed task with its traceback; execute() reports them with task ids.
        logging.getLogger("parsl.dataflow.dflow").setLevel(logging.CRITICAL)
        self.run_dir_root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(remove_stale_run_dirs, self.run_dir_root)
        self.run_dir = Path(tempfile.mkdtemp(prefix="parsl-", dir=self.run_dir_root))
        (self.run_dir / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
        try:
            await asyncio.to_thread(self._start_dfk, str(self.run_dir))
            if self.config.provider == "local":
                await self._wait_for_workers(self.config.workers_per_node * self.config.init_blocks)
        except BaseException:
            self._keep_run_dir = True  # Parsl's logs there say why; the next start removes it
            await self.close()
            raise
        log.info(
            "parsl executor started",
            provider=self.config.provider,
            workers=self.processes,
            run_dir=str(self.run_dir),
        )

    def _start_dfk(self, run_dir: str) -> None:
        from parsl.app.app import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        self._dfk = DataFlowKernel(parsl_config(self.config, run_dir=run_dir))
        self._app = python_app(run_frame, data_flow_kernel=self._dfk, executors=[LABEL])

    async def _wait_for_workers(self, expected: int) -> None:
        executor = self._dfk.executors[LABEL]
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            managers: list[dict[str, Any]] = await asyncio.to_thread(executor.connected_managers)
            connected = sum(int(m.get("worker_count", 0)) for m in managers if m.get("active"))
            if connected >= expected:
                return
            if time.monotonic() >= deadline:
                raise WorkerLost(
                    f"{connected} of {expected} Parsl workers connected within "
                    f"{self.config.startup_timeout_s} s; see {self.run_dir}"
                )
            await asyncio.sleep(READY_POLL_S)

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
        """Run one task in a Parsl worker.

        A task past its deadline fails with ``TaskTimeout`` but keeps its Parsl worker busy until it ends
        (Parsl cannot cancel a running task); a lost Parsl worker or node fails it with ``WorkerLost``.
        """
        if self._closing or self._app is None:
            raise PoolClosed("the worker is shutting down")
        request = ExecRequest(
            seq=0,
            task_id=task_id,
            servable=servable,
            version_dir=version_dir,
            method=method,
            inputs=inputs,
            parameters=parameters,
        )
        frame = bytes(encode_frame(request, max_bytes=self.max_message_bytes))
        future: concurrent.futures.Future[bytes] = self._app(
            frame, self.max_message_bytes, self.cache_size, self.file_limits
        )
        try:
            async with asyncio.timeout(timeout_s):
                reply_frame = await asyncio.wrap_future(future)
        except TimeoutError:
            raise TaskTimeout("the task passed its deadline while running in a Parsl worker") from None
        except DLHubError:
            raise
        except Exception as exc:
            raise self._failure(task_id, exc) from exc
        return self._decode(reply_frame)

    def _failure(self, task_id: str, exc: Exception) -> DLHubError:
        if self._closing:
            return PoolClosed("the worker is shutting down")
        kind = _failure_kind(exc)
        log.warning("parsl task failed", task_id=task_id, kind=kind, error_type=type(exc).__name__)
        if kind == "unavailable":
            return WorkerLost(f"Parsl's blocks failed, no Parsl worker can run tasks: {exc}")
        return WorkerLost(f"Parsl worker {kind} while running the task: {type(exc).__name__}: {exc}")

    def _decode(self, reply_frame: bytes) -> ExecReply:
        try:
            length = body_length(reply_frame[:HEADER_BYTES], max_bytes=self.max_message_bytes)
            reply = decode_reply(reply_frame[HEADER_BYTES : HEADER_BYTES + length])
        except InvalidMessage as exc:
            raise WorkerLost(f"a Parsl worker sent a corrupt reply: {exc.message}") from exc
        if not isinstance(reply, ExecReply):
            raise WorkerLost(f"a Parsl worker sent a {type(reply).__name__} frame instead of a reply")
        return reply

    async def close(self) -> None:
        """Stop Parsl (its interchange and blocks) and remove the run directory."""
        self._closing = True
        dfk, self._dfk, self._app = self._dfk, None, None
        if dfk is not None:
            try:
                await asyncio.to_thread(dfk.cleanup)
            except Exception as exc:  # shutdown goes on: the run directory and the service still close
                log.warning("parsl cleanup failed", error_type=type(exc).__name__, error=str(exc))
        if self.run_dir is not None and not self._keep_run_dir:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(shutil.rmtree, self.run_dir)
