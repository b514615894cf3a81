"""A pool of executor OS processes, so that a crashing model cannot take the worker down.

Each executor is ``python -m services.worker.executor`` talking length-prefixed msgpack frames over its
stdin/stdout pipes (asyncio streams: no thread hop, no pickling). A task goes to an idle process; a process
runs one task at a time. When a process dies while running a task, that task fails with ``WorkerLost`` (the
message names the exit code or signal) and a replacement is spawned in the background; when a task passes
its deadline, its process is killed and the task fails with ``TaskTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import time
from typing import Final, Protocol

import msgspec

from libs.common.errors import DLHubError, InvalidMessage, TaskTimeout, WorkerLost
from libs.common.logging import get_logger
from libs.common.messages import EMPTY_MAP, NIL
from services.worker.files import FileLimits
from services.worker.protocol import (
    HEADER_BYTES,
    ExecReply,
    ExecRequest,
    FromExecutor,
    Ready,
    body_length,
    decode_reply,
    encode_frame,
)

log = get_logger(__name__)

STREAM_LIMIT_BYTES: Final = 1 << 20
EXIT_GRACE_S: Final = 5.0
RESPAWN_BACKOFF_INITIAL_S: Final = 0.1
RESPAWN_BACKOFF_MAX_S: Final = 30.0


class ExecutionBackend(Protocol):
    """What the worker service needs from whatever runs its tasks: this pool, or Parsl
    (``services.worker.parsl_backend``). Both run ``Executor.handle`` on msgpack ``ExecRequest`` frames."""

    @property
    def processes(self) -> int:
        """How many tasks run at once (the batcher's slots and the basis of the advertised capacity)."""
        ...

    async def start(self) -> None: ...

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
        """Run one task; raises ``TaskTimeout``, ``WorkerLost``, ``MessageTooLarge`` or ``PoolClosed``."""
        ...

    async def close(self) -> None: ...


class PoolClosed(DLHubError):
    """The worker is shutting down and accepts no more tasks."""

    code = "handler_lost"
    http_status = 503


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended: ``exited with code 3`` or ``was killed by signal SIGKILL``."""
    if returncode is None:
        return "stopped responding"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with code {returncode}"


class ExecutorProcess:
    """One executor child and its two pipes."""

    def __init__(self, *, slot: int, process: asyncio.subprocess.Process, max_message_bytes: int) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.slot = slot
        self.process = process
        self.pid = process.pid
        self.max_message_bytes = max_message_bytes
        self.busy = False
        self.retired = False
        self._stdin = process.stdin
        self._stdout = process.stdout

    @classmethod
    async def spawn(
        cls,
        *,
        slot: int,
        python: str,
        max_message_bytes: int,
        cache_size: int,
        startup_timeout_s: float,
        file_limits: FileLimits | None = None,
    ) -> ExecutorProcess:
        process = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "services.worker.executor",
            "--max-message-bytes",
            str(max_message_bytes),
            "--cache-size",
            str(cache_size),
            *(file_limits or FileLimits()).as_args(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=STREAM_LIMIT_BYTES,
        )
        child = cls(slot=slot, process=process, max_message_bytes=max_message_bytes)
        try:
            async with asyncio.timeout(startup_timeout_s):
                frame = await child._read()
            if not isinstance(frame, Ready):
                raise InvalidMessage(f"expected a ready frame, got {type(frame).__name__}")
        except TimeoutError:
            await child.kill()
            raise WorkerLost(
                f"executor process {child.pid} did not start within {startup_timeout_s} s"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, InvalidMessage) as exc:
            returncode = await child.wait_exit(EXIT_GRACE_S)
            raise WorkerLost(f"executor process {child.pid} {describe_exit(returncode)} at start-up") from exc
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        return child

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def _read(self) -> FromExecutor:
        header = await self._stdout.readexactly(HEADER_BYTES)
        body = await self._stdout.readexactly(body_length(header, max_bytes=self.max_message_bytes))
        return decode_reply(body)

    async def request(self, payload: bytes | bytearray, seq: int, deadline: float | None) -> ExecReply:
        """Send one encoded request and await its reply until ``deadline`` (loop time)."""
        self.busy = True
        try:
            async with asyncio.timeout_at(deadline):
                self._stdin.write(payload)
                await self._stdin.drain()
                while True:
                    frame = await self._read()
                    if isinstance(frame, ExecReply) and frame.seq == seq:
                        return frame
        except TimeoutError:
            await self.kill()
            raise TaskTimeout(
                f"the task passed its deadline; executor process {self.pid} was killed"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            returncode = await self.wait_exit(EXIT_GRACE_S)
            raise WorkerLost(
                f"executor process {self.pid} {describe_exit(returncode)} while running the task"
            ) from exc
        except InvalidMessage as exc:
            await self.kill()
            raise WorkerLost(f"executor process {self.pid} sent a corrupt reply: {exc.message}") from exc
        finally:
            self.busy = False

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit status once the process has ended (killing it if it lingers past ``timeout_s``)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.process.wait()
        except TimeoutError:
            await self.kill()
            return self.process.returncode

    async def close(self, grace_s: float = EXIT_GRACE_S) -> None:
        """Close stdin (the executor finishes its current task and exits), then kill it after ``grace_s``."""
        if self.process.returncode is None:
            self._stdin.close()
        await self.wait_exit(grace_s)


class ExecutorPool:
    """``processes`` executor children, each running one task at a time."""

    def __init__(
        self,
        *,
        processes: int,
        max_message_bytes: int,
        cache_size: int = 32,
        startup_timeout_s: float = 60.0,
        python: str = sys.executable,
        file_limits: FileLimits | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("an executor pool needs at least one process")
        self.processes = processes
        self.max_message_bytes = max_message_bytes
        self.cache_size = cache_size
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        self.file_limits = file_limits or FileLimits()
        self.respawns = 0
        self._slots: list[ExecutorProcess | None] = [None] * processes
        self._idle: asyncio.Queue[ExecutorProcess | None] = asyncio.Queue()
        self._seq = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def pids(self) -> list[int]:
        """PIDs of the live executor processes (a slot being respawned is left out)."""
        return [p.pid for p in self._slots if p is not None and not p.retired]

    async def start(self) -> None:
        children = await asyncio.gather(
            *(self._spawn(slot) for slot in range(self.processes)), return_exceptions=True
        )
        failures = [c for c in children if isinstance(c, BaseException)]
        for child in children:
            if isinstance(child, ExecutorProcess):
                self._adopt(child)
        if failures:
            await self.close()
            raise failures[0]
        log.info("executor pool started", processes=self.processes, pids=self.pids)

    async def _spawn(self, slot: int) -> ExecutorProcess:
        return await ExecutorProcess.spawn(
            slot=slot,
            python=self.python,
            max_message_bytes=self.max_message_bytes,
            cache_size=self.cache_size,
            startup_timeout_s=self.startup_timeout_s,
            file_limits=self.file_limits,
        )

    def _adopt(self, child: ExecutorProcess) -> None:
        self._slots[child.slot] = child
        self._idle.put_nowait(child)
        watcher = asyncio.create_task(self._watch(child))
        self._background.add(watcher)
        watcher.add_done_callback(self._background.discard)

    async def _watch(self, child: ExecutorProcess) -> None:
        """Replace a process that dies while idle, before a task is sent to it."""
        returncode = await child.process.wait()
        if not child.busy and not child.retired and not self._closing:
            log.warning("executor process died while idle", pid=child.pid, exit=describe_exit(returncode))
            self._retire(child)

    def _retire(self, child: ExecutorProcess) -> None:
        """Take ``child`` out of service (once) and spawn its replacement in the background."""
        if child.retired:
            return
        child.retired = True
        if self._slots[child.slot] is child:
            self._slots[child.slot] = None
        if self._closing:
            return
        task = asyncio.create_task(self._respawn(child))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _respawn(self, old: ExecutorProcess) -> None:
        await old.kill()
        delay = RESPAWN_BACKOFF_INITIAL_S
        while not self._closing:
            try:
                child = await self._spawn(old.slot)
            except Exception as exc:
                log.error("executor process failed to start", slot=old.slot, error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESPAWN_BACKOFF_MAX_S)
                continue
            if self._closing:
                await child.close()
                return
            self.respawns += 1
            log.info("executor process respawned", slot=old.slot, old_pid=old.pid, pid=child.pid)
            self._adopt(child)
            return

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
        """Run one task on an idle executor process and return its reply.

        Raises ``TaskTimeout`` past ``timeout_s``, ``WorkerLost`` when the process dies during the task,
        ``MessageTooLarge`` for an oversize request and ``PoolClosed`` during shutdown.
        """
        seq = next(self._seq)
        request = ExecRequest(
            seq=seq,
            task_id=task_id,
            servable=servable,
            version_dir=version_dir,
            method=method,
            inputs=inputs,
            parameters=parameters,
        )
        payload = encode_frame(request, max_bytes=self.max_message_bytes)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        child = await self._acquire(deadline)
        try:
            reply = await child.request(payload, seq, deadline)
        except (WorkerLost, TaskTimeout):
            self._retire(child)
            raise
        except BaseException:
            # Cancelled (or failed) with the request possibly in flight: its reply would be mistaken for the
            # next task's, so this process cannot be reused.
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            self._retire(child)
            raise
        self._idle.put_nowait(child)
        return reply

    async def _acquire(self, deadline: float | None) -> ExecutorProcess:
        start = time.monotonic()
        while True:
            if self._closing:
                raise PoolClosed("the worker is shutting down")
            try:
                async with asyncio.timeout_at(deadline):
                    child = await self._idle.get()
            except TimeoutError:
                waited = time.monotonic() - start
                raise TaskTimeout(
                    f"the task passed its deadline after waiting {waited:.3f} s for a free executor process"
                ) from None
            if child is None:  # shutdown: wake the next waiter too
                self._idle.put_nowait(None)
                raise PoolClosed("the worker is shutting down")
            if not child.retired and child.returncode is None:
                return child

    async def close(self) -> None:
        """Stop every executor process (busy ones get ``EXIT_GRACE_S`` to finish) and wake waiting tasks."""
        self._closing = True
        self._idle.put_nowait(None)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        children = [c for c in self._slots if c is not None]
        await asyncio.gather(*(c.close() for c in children), return_exceptions=True)
        self._slots = [None] * self.processes
