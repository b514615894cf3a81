"""A pool of executor OS processes, so that a crashing model cannot take the worker down.

Each executor is ``python -m dlhub.worker.executor`` talking length-prefixed msgpack frames over its
stdin/stdout pipes (asyncio streams: no thread hop, no pickling), or, for a process whose ``Launch`` carries a
listening unix socket (a docker executor), over the one connection the executor makes to that socket: the
frames then go straight to the container instead of through the ``docker run -i`` relay (CLI, dockerd, shim),
and the launching process only tells when the executor has ended. A process runs one task at a time, in the
order it reads them; up to ``depth`` requests are written to it ahead (pipelined), so that it goes from one
task to the next without waiting for the worker, and under load the worker reads several replies per wakeup. A
new task goes to the live process with the fewest requests outstanding; one reader task per process matches
replies to requests by sequence number.

When a process dies, the task it was running (the oldest outstanding request: it runs them in order) fails
with ``WorkerLost`` (the message names the exit code or signal); the requests queued behind it never started
and run on another process or the replacement, which is spawned in the background. When the running task
passes its deadline, its process is killed and the task fails with ``TaskTimeout``; a queued task that
passes its deadline fails at once, and the executor skips its request (``ExecRequest.deadline_unix_s``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from dlhub.common.errors import DLHubError, InvalidMessage, TaskNotStarted, TaskTimeout, WorkerLost
from dlhub.common.logging import get_logger
from dlhub.common.messages import EMPTY_MAP, NIL
from dlhub.worker.files import FileLimits
from dlhub.worker.metrics import EXECUTOR_RESTARTS
from dlhub.worker.protocol import (
    HEADER_BYTES,
    RECALL_SIGNAL,
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
DEFAULT_DEPTH: Final = 4
"""Requests written ahead to one executor process (1: the next is written only after the reply)."""


class ExecutionBackend(Protocol):
    """What the worker service needs from whatever runs its tasks: this pool, or Parsl
    (``dlhub.worker.parsl_backend``). Both run ``Executor.handle`` on msgpack ``ExecRequest`` frames."""

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


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one executor process whose work also lives outside the worker's process tree."""

    argv: list[str]
    reap: Callable[[], Awaitable[None]]
    """Called (once) when the process has been killed or has ended: stops and removes what it started
    elsewhere (its container, through the engine), since killing a ``docker run`` client does not."""
    listener: socket.socket | None = None
    """A listening unix socket the executor connects to (``--socket``), in a directory only it and the worker
    can reach: the protocol then runs over that connection, and the process's stdin/stdout are unused. The
    first connection is the executor's; the listener is closed and unlinked once it is accepted."""
    peer_uid: int | None = None
    """The user the connection must come from (``SO_PEERCRED``); ``None``: not checked."""


ExecutorCommand = Callable[[list[str]], list[str] | Launch]
"""Executor arguments -> the full command line of one executor process (its environment's interpreter), or a
``Launch`` (a ``docker run``, how to remove its container and the socket it connects to); default
``python -m dlhub.worker.executor ARGS``."""


def listen_unix(path: str) -> socket.socket:
    """A non-blocking unix socket listening at ``path`` that any user who can reach the path may connect to
    (the directories around it decide who can)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o666)
        listener.listen(1)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a unix socket, as this process sees them."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class NotStarted(Exception):
    """The executor process ended before it read this request, so it can safely run elsewhere."""


class ExecutorProcess:
    """One executor child, its two pipes (or its socket) and the requests written to it that await a reply."""

    def __init__(
        self,
        *,
        slot: int,
        process: asyncio.subprocess.Process,
        max_message_bytes: int,
        reap: Callable[[], Awaitable[None]] | None = None,
        listener: socket.socket | None = None,
        peer_uid: int | None = None,
    ) -> None:
        self.slot = slot
        self._reap = reap
        self.process = process
        self.pid = process.pid
        self.max_message_bytes = max_message_bytes
        self.retired = False
        self.killed_running = False
        """Killed because the task it was running passed its deadline (that task has already failed)."""
        self.inflight: dict[int, asyncio.Future[tuple[ExecReply, float]]] = {}
        """Outstanding requests by sequence number, oldest first (dicts keep insertion order); each future
        gets the reply and when the process started that request (``perf_counter``)."""
        self.head_started = 0.0
        """When the process started the request it is running: it runs them in order, so the next one starts
        when the previous reply arrives, or when it is written to an idle process."""
        self._listener = listener
        self._peer_uid = peer_uid
        self.over_socket = listener is not None
        """The protocol runs over a unix socket (connected by ``_accept``), not the process's stdin/stdout."""
        self._stdin: asyncio.StreamWriter
        self._stdout: asyncio.StreamReader
        if listener is None:
            assert process.stdin is not None and process.stdout is not None
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
        command: ExecutorCommand | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecutorProcess:
        args = [
            "--max-message-bytes",
            str(max_message_bytes),
            "--cache-size",
            str(cache_size),
            *(file_limits or FileLimits()).as_args(),
        ]
        launch = command(args) if command is not None else [python, "-m", "dlhub.worker.executor", *args]
        argv, reap, listener, peer_uid = (
            (launch.argv, launch.reap, launch.listener, launch.peer_uid)
            if isinstance(launch, Launch)
            else (launch, None, None, None)
        )
        stdio = asyncio.subprocess.PIPE if listener is None else asyncio.subprocess.DEVNULL
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdio,
                stdout=stdio,
                limit=STREAM_LIMIT_BYTES,
                env=dict(env) if env is not None else None,
            )
        except BaseException:
            if listener is not None:
                listener.close()
            if reap is not None:
                await reap()
            raise
        child = cls(
            slot=slot,
            process=process,
            max_message_bytes=max_message_bytes,
            reap=reap,
            listener=listener,
            peer_uid=peer_uid,
        )
        try:
            async with asyncio.timeout(startup_timeout_s):
                if child.over_socket:
                    await child._accept()
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
            await child.reap()
            raise
        return child

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def _accept(self) -> None:
        """Accept the executor's connection to the listener (raising ``ConnectionError`` if the process ends
        first), then close the listener so that nothing else can connect."""
        listener = self._listener
        assert listener is not None
        loop = asyncio.get_running_loop()
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        exiting = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait((accepting, exiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            exiting.cancel()
            if not accepting.done():
                accepting.cancel()
            self._close_listener()
        if accepting.cancelled() or not accepting.done():
            raise ConnectionError("the executor ended before it connected")
        conn, _ = accepting.result()
        try:
            pid, uid, _gid = peer_credentials(conn)
            if self._peer_uid is not None and uid != self._peer_uid:
                raise WorkerLost(
                    f"executor process {self.pid}: refused a connection from pid {pid}, uid {uid} "
                    f"(expected uid {self._peer_uid})"
                )
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, option, STREAM_LIMIT_BYTES)
            streams = await asyncio.open_unix_connection(sock=conn, limit=STREAM_LIMIT_BYTES)
            self._stdout, self._stdin = streams
        except BaseException:
            conn.close()
            raise

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            path = listener.getsockname()
            if isinstance(path, str) and path:
                os.unlink(path)
        listener.close()

    def _close_socket(self) -> None:
        """Release the listener and the connection (socket mode; the pipes belong to the process)."""
        if not self.over_socket:
            return
        self._close_listener()
        writer = getattr(self, "_stdin", None)
        if writer is not None:
            writer.close()

    async def _read(self) -> FromExecutor:
        header = await self._stdout.readexactly(HEADER_BYTES)
        body = await self._stdout.readexactly(body_length(header, max_bytes=self.max_message_bytes))
        return decode_reply(body)

    async def read_replies(self) -> tuple[str, int]:
        """Hand each reply to the request with its sequence number until the process ends; then fail the
        outstanding requests and return how it ended and how many there were."""
        try:
            while True:
                frame = await self._read()
                if isinstance(frame, ExecReply):
                    started = self.head_started
                    self.head_started = time.perf_counter()
                    future = self.inflight.pop(frame.seq, None)
                    # None: a request whose waiter gave up (deadline, cancellation); its reply is dropped.
                    if future is not None and not future.done():
                        future.set_result((frame, started))
        except (asyncio.IncompleteReadError, ConnectionError):
            ending = describe_exit(await self.wait_exit(EXIT_GRACE_S))
        except InvalidMessage as exc:
            await self.kill()
            ending = f"sent a corrupt reply ({exc.message})"
        outstanding = len(self.inflight)
        self._fail_inflight(ending)
        return ending, outstanding

    def _fail_inflight(self, ending: str) -> None:
        """The oldest outstanding request was running (unless its deadline is why the process was killed): it
        is lost. The others were never read."""
        for index, future in enumerate(self.inflight.values()):
            if future.done():
                continue
            if index == 0 and not self.killed_running:
                future.set_exception(
                    WorkerLost(f"executor process {self.pid} {ending} while running the task")
                )
            else:
                future.set_exception(NotStarted())
        self.inflight.clear()

    async def request(
        self, payload: bytes | bytearray, seq: int, deadline: float | None, since: float
    ) -> ExecReply:
        """Write one encoded request and await its reply until ``deadline`` (loop time); the reply's
        ``queue_ms`` is the time from ``since`` (``perf_counter``) until the process started the request.

        Raises ``NotStarted`` if the process ended before reading it, ``WorkerLost`` if it ended while running
        it and ``TaskTimeout`` past the deadline (killing the process if the task was running).
        """
        future: asyncio.Future[tuple[ExecReply, float]] = asyncio.get_running_loop().create_future()
        written = time.perf_counter()
        if not self.inflight:
            self.head_started = written
        self.inflight[seq] = future
        try:
            self._stdin.write(payload)
            async with asyncio.timeout_at(deadline):
                with contextlib.suppress(ConnectionError):  # a dead process: the reader fails the future
                    await self._stdin.drain()
                reply, started = await future
            reply.queue_ms = (max(started, written) - since) * 1000.0
            return reply
        except TimeoutError:
            running = next(iter(self.inflight), None) == seq
            self.inflight.pop(seq, None)
            if not running:
                raise TaskTimeout(
                    f"the task passed its deadline while queued for executor process {self.pid}"
                ) from None
            self.killed_running = True
            await self.kill()
            raise TaskTimeout(
                f"the task passed its deadline; executor process {self.pid} was killed"
            ) from None
        except asyncio.CancelledError:
            # Nobody awaits the task any more (the worker abandoned it: its broker session ended, or its
            # shutdown grace ran out). A running one is stopped so that the process is free at once; the
            # requests queued behind it were never read and run elsewhere (NotStarted).
            if next(iter(self.inflight), None) == seq and self.process.returncode is None:
                self.killed_running = True
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            self.inflight.pop(seq, None)
            raise
        finally:
            if future.cancelled():  # the waiter was cancelled: the reply, if it comes, is dropped
                self.inflight.pop(seq, None)

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        await self.reap()

    async def reap(self) -> None:
        """Remove what the process started outside the worker (its container), once; no-op otherwise."""
        self._close_socket()
        reap, self._reap = self._reap, None
        if reap is not None:
            try:
                await reap()
            except Exception as exc:
                log.error("could not remove the executor's container", pid=self.pid, error=str(exc))

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit status once the process has ended (killing it if it lingers past ``timeout_s``)."""
        try:
            async with asyncio.timeout(timeout_s):
                returncode = await self.process.wait()
        except TimeoutError:
            await self.kill()
            return self.process.returncode
        await self.reap()
        return returncode

    async def close(self, grace_s: float = EXIT_GRACE_S) -> None:
        """Close stdin, or our sending side of the socket (the executor finishes its current task and exits),
        then kill it after ``grace_s``."""
        if self.process.returncode is None:
            if not self.over_socket:
                self._stdin.close()
            elif getattr(self, "_stdin", None) is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    self._stdin.write_eof()
        await self.wait_exit(grace_s)


class ExecutorPool:
    """``processes`` executor children, each running one task at a time with up to ``depth`` requests
    written to it ahead."""

    def __init__(
        self,
        *,
        processes: int,
        max_message_bytes: int,
        depth: int = DEFAULT_DEPTH,
        cache_size: int = 32,
        startup_timeout_s: float = 60.0,
        python: str = sys.executable,
        file_limits: FileLimits | None = None,
        command: ExecutorCommand | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "shared",
    ) -> None:
        if processes < 1:
            raise ValueError("an executor pool needs at least one process")
        if depth < 1:
            raise ValueError("the pipeline depth must be at least 1")
        self.processes = processes
        self.depth = depth
        self.max_message_bytes = max_message_bytes
        self.cache_size = cache_size
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        self.file_limits = file_limits or FileLimits()
        self.command = command
        self.env = env
        self.name = name
        """The environment this pool's processes run in (logs)."""
        self.respawns = 0
        self._slots: list[ExecutorProcess | None] = [None] * processes
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._seq = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._recalled = False

    @property
    def pids(self) -> list[int]:
        """PIDs of the live executor processes (a slot being respawned is left out)."""
        return [p.pid for p in self._slots if p is not None and not p.retired]

    async def start(self, spare: ExecutorProcess | None = None) -> None:
        """Spawn the processes (``spare``, an already started one with the same command, takes slot 0)."""
        first = 0
        if spare is not None:
            spare.slot, first = 0, 1
        spawned = await asyncio.gather(
            *(self._spawn(slot) for slot in range(first, self.processes)), return_exceptions=True
        )
        children: list[ExecutorProcess | BaseException] = [spare] if spare is not None else []
        children.extend(spawned)
        failures = [c for c in children if isinstance(c, BaseException)]
        for child in children:
            if isinstance(child, ExecutorProcess):
                self._adopt(child)
        if failures:
            await self.close()
            raise failures[0]
        log.info(
            "executor pool started",
            environment=self.name,
            processes=self.processes,
            depth=self.depth,
            pids=self.pids,
        )

    async def _spawn(self, slot: int) -> ExecutorProcess:
        return await ExecutorProcess.spawn(
            slot=slot,
            python=self.python,
            max_message_bytes=self.max_message_bytes,
            cache_size=self.cache_size,
            startup_timeout_s=self.startup_timeout_s,
            file_limits=self.file_limits,
            command=self.command,
            env=self.env,
        )

    def _adopt(self, child: ExecutorProcess) -> None:
        self._slots[child.slot] = child
        self._spawn_background(self._watch(child))
        self._wake_waiters(self.depth)

    def _spawn_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watch(self, child: ExecutorProcess) -> None:
        """Deliver the process's replies; when it ends, replace it (unless we are closing or already are)."""
        ending, outstanding = await child.read_replies()
        if child.retired or self._closing:
            return
        if child.killed_running:
            log.info("executor process killed at its task's deadline", pid=child.pid)
        elif outstanding:
            log.warning("executor process died", pid=child.pid, exit=ending, outstanding=outstanding)
        else:
            log.warning("executor process died while idle", pid=child.pid, exit=ending)
        self._retire(child)

    def _retire(self, child: ExecutorProcess) -> None:
        """Take ``child`` out of service (once) and spawn its replacement in the background."""
        if child.retired:
            return
        child.retired = True
        if self._slots[child.slot] is child:
            self._slots[child.slot] = None
        if not self._closing:
            self._spawn_background(self._respawn(child))

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
            EXECUTOR_RESTARTS.inc()
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
        """Run one task on the least-loaded executor process and return its reply.

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
            deadline_unix_s=0.0 if timeout_s is None else time.time() + timeout_s,
        )
        payload = encode_frame(request, max_bytes=self.max_message_bytes)
        since = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            child = await self._acquire(deadline)
            try:
                return await child.request(payload, seq, deadline, since)
            except NotStarted:
                if self._recalled:
                    raise TaskNotStarted("the worker is shutting down; the task had not started") from None
                continue  # its process ended before reading it: run it on another one (or the replacement)
            except (WorkerLost, TaskTimeout):
                if child.returncode is not None:
                    self._retire(child)  # killed for this task, or dead: replace it now
                raise
            finally:
                self._wake_waiters(1)

    def _least_loaded(self) -> ExecutorProcess | None:
        best: ExecutorProcess | None = None
        for child in self._slots:
            if child is None or child.retired or child.returncode is not None:
                continue
            load = len(child.inflight)
            if load < self.depth and (best is None or load < len(best.inflight)):
                best = child
        return best

    async def _acquire(self, deadline: float | None) -> ExecutorProcess:
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        while True:
            if self._closing:
                raise PoolClosed("the worker is shutting down")
            if self._recalled:
                raise TaskNotStarted("the worker is shutting down; the task had not started")
            child = self._least_loaded()
            if child is not None:
                return child
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                waited = time.monotonic() - start
                raise TaskTimeout(
                    f"the task passed its deadline after waiting {waited:.3f} s for a free executor process"
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()

    def recall(self) -> None:
        """The worker drains: every task not started yet ends ``TaskNotStarted`` (the worker hands it back to
        the broker) rather than waiting here. Waiting ones at once; those written ahead to a process when it
        reaches them: the process, signalled, answers them unstarted (``RECALL_SIGNAL``)."""
        self._recalled = True
        self._wake_waiters(len(self._waiters))
        for child in self._slots:
            if child is not None and child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, RECALL_SIGNAL)

    def _wake_waiters(self, count: int) -> None:
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def close(self) -> None:
        """Stop every executor process (they finish what they were sent within ``EXIT_GRACE_S``, then are
        killed) and fail whatever still waits."""
        self._closing = True
        self._wake_waiters(len(self._waiters))
        children = [c for c in self._slots if c is not None]
        await asyncio.gather(*(c.close() for c in children), return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for child in children:
            for future in child.inflight.values():
                if not future.done():
                    future.set_exception(PoolClosed("the worker is shutting down"))
            child.inflight.clear()
        self._slots = [None] * self.processes
