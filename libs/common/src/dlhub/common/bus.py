"""Both ends of the broker connection, shared by every service.

- ``HandlerService``: the DEALER side of workers, the builder and search. Registers its topics and capacity,
  heartbeats, reconnects with backoff when the broker goes silent (re-registering), and runs dispatched tasks
  with at most ``capacity`` in flight.
- ``BusClient``: the DEALER side of task submitters (the registry). ``call`` submits a task and awaits its
  ``Result``; failures come back as ``Result(ok=False, error=...)``, never as a hang.

Both drive a plain ZeroMQ socket from the event loop (``add_reader`` on the socket's FD) and drain every
available frame per wakeup, so a message costs one decode and one callback, not a future per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import zmq

from dlhub.common.codec import Codec
from dlhub.common.config import BusConfig
from dlhub.common.curve import ClientKeys, client_keys_for, tagged_identity
from dlhub.common.errors import BrokerUnavailable, DLHubError, InvalidMessage, TaskNotStarted
from dlhub.common.ids import new_id
from dlhub.common.logging import get_logger
from dlhub.common.messages import (
    Ack,
    Dispatch,
    Draining,
    ErrorInfo,
    Heartbeat,
    Message,
    Progress,
    Queued,
    Reconnect,
    Register,
    Registered,
    Result,
    RouteStep,
    Started,
    StatsReply,
    StatsRequest,
    Submit,
    TaskQuery,
    TaskStatus,
    Unregister,
)

TaskHandler = Callable[[Dispatch], Awaitable[Result]]
"""Runs one dispatched step. Must return a Result with the dispatch's task_id and step; if it raises, the
HandlerService turns the exception into a failed Result (DLHubError -> its code; others -> servable_error)."""

log = get_logger(__name__)

_DRAIN_BATCH: Final = 512
"""Messages handled per wakeup before yielding to the event loop (so one busy socket cannot starve others)."""
MAX_BATCH_FRAMES: Final = 256
"""Frames sent as one multipart message at most; a fuller outbox is sent at once."""
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024
"""Bytes queued at most before the outbox is sent at once (large payloads need no company)."""
_CHECK_BATCH: Final = 1000
"""Task ids per periodic check of long-awaited calls (the oldest first)."""
ZERO_COPY_BYTES: Final = 65536
"""Frames at least this large are handed to ZeroMQ without a copy (smaller ones are cheaper copied)."""


def send_frames(
    sock: zmq.Socket[bytes], frames: Sequence[bytes | bytearray], flags: int = zmq.NOBLOCK
) -> None:
    """Send ``frames`` as one multipart message (each frame one bus message, or a ROUTER identity first)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        more = zmq.SNDMORE if index < last else 0
        sock.send(frame, flags | more, copy=len(frame) < ZERO_COPY_BYTES)


def failed_result(task_id: str, code: str, message: str, *, step: int = 0, **error: Any) -> Result:
    """Build a failed Result carrying a typed error."""
    return Result(task_id=task_id, ok=False, step=step, error=ErrorInfo(code=code, message=message, **error))


def _expire(future: asyncio.Future[Result], task_id: str, timeout_s: float) -> None:
    if not future.done():
        future.set_result(failed_result(task_id, "task_timeout", f"no result within {timeout_s} s"))


def reconnect_delay_s(backoff_s: float) -> float:
    """The wait before the next connection attempt: ``backoff_s`` (which doubles up to
    ``bus.reconnect_max_s``) less a random part of up to half of it, so that the Task Managers a broker
    restart disconnected together do not all come back in the same instant."""
    return backoff_s * (0.5 + random.random() / 2)


class _Dealer:
    """A DEALER socket driven by the event loop: frames received go to ``on_frame``; sends never block."""

    def __init__(
        self,
        *,
        url: str,
        identity: str,
        max_message_bytes: int,
        on_frame: Callable[[memoryview], None],
        keys: ClientKeys | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._drain_scheduled = False
        self._outbox: list[bytes | bytearray] = []
        self._outbox_bytes = 0
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, tagged_identity(identity, keys))
        if keys is not None:  # a CURVE client of the broker (docs/security.md)
            keys.apply(sock)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + 64)
        # Retry the TCP connection every 100 ms without ZeroMQ's own backoff, so a broker that comes (back) up
        # is reached at once; the reconnect backoff of the bus (a new socket) is ours, after a silent broker.
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
        sock.connect(url)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._drain)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self._sock
        if sock.closed:
            return
        for _ in range(_DRAIN_BATCH):
            try:
                # Uncopied: a message's payload (``msgspec.Raw``) stays a view of the frame it arrived in.
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("bus recv failed", error=str(exc))
                return
            for frame in frames:  # one message per frame; the broker batches what it sends us at once
                try:
                    self._on_frame(frame.buffer)
                except Exception:  # a failing callback must not stop the drain (the FD would not fire again)
                    log.exception("bus message callback failed")
                if sock.closed:  # on_frame may close us (reconnect)
                    return
        self._schedule_drain()

    def receive_now(self) -> None:
        """Handle what has arrived without waiting for the event loop (a loop that was blocked may not have
        run our reader yet)."""
        self._drain()

    def send(self, frame: bytes | bytearray) -> bool:
        """Queue one frame for the broker; False if the socket is closed.

        Frames queued during one event-loop iteration leave together as one multipart message at the start of
        the next (``_flush``): under load that turns many small sends, each waking ZeroMQ's I/O thread and the
        broker, into one. Idle, a frame waits for nothing but the current iteration to end.
        """
        if self._sock.closed:
            return False
        outbox = self._outbox
        outbox.append(frame)
        self._outbox_bytes += len(frame)
        if len(outbox) >= MAX_BATCH_FRAMES or self._outbox_bytes >= MAX_BATCH_BYTES:
            self._flush()
        elif len(outbox) == 1:
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        if not frames or self._sock.closed:
            return
        try:
            send_frames(self._sock, frames)
        except zmq.ZMQError as exc:
            log.warning("bus send failed", error=str(exc), frames=len(frames))
            return
        # The FD is edge-triggered: a send can consume the readiness signal for frames that already arrived.
        # One drain per flush covers every frame sent (cheaper than asking the socket for its events).
        self._schedule_drain()

    def close(self, *, linger_ms: int = 0) -> None:
        if self._sock.closed:
            return
        self._flush()  # what was queued this iteration (an Unregister, a last Result) still goes out
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._fd)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()


class HandlerService:
    stop_drain_timeout_s: float = 10.0
    """How long ``stop`` waits for in-flight tasks before cancelling them (the worker sets its
    ``worker.shutdown_grace_s``)."""

    def __init__(
        self,
        *,
        bus: BusConfig,
        codec: Codec,
        kind: str,
        topics: Sequence[str],
        capacity: int,
        handle: TaskHandler,
        handler_id: str | None = None,
        max_tasks_per_topic: int = 0,
        profile: Register | None = None,
    ) -> None:
        """``profile``: what a Task Manager says of itself at registration (site, instance id, executors,
        patterns served); its identity, topics and capacity fields are ignored (this service's own go)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.bus = bus
        self.codec = codec
        self.kind = kind
        self.topics = list(topics)
        self.capacity = capacity
        self.max_tasks_per_topic = max_tasks_per_topic
        """Asked of the broker at registration: at most this many tasks of one topic at once (0: any)."""
        self.handler_id = handler_id or new_id()
        self.profile = profile
        self._handle = handle
        self._keys = client_keys_for(bus, kind)
        self._dealer: _Dealer | None = None
        self._registered = asyncio.Event()
        self._session_over = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._refusing = False  # past the drain: dispatches still arriving are failed, not run
        self.on_drain: Callable[[], None] | None = None
        """Called once ``Draining`` is sent (the worker hands back the tasks it has not started)."""
        self._last_seen = 0.0
        self._heard = False  # has the broker sent anything on the current socket?
        self._slots = asyncio.Semaphore(capacity)
        self._tasks: set[asyncio.Task[None]] = set()
        self._table: dict[type[Message], Callable[[Any], None]] = {
            Dispatch: self._on_dispatch,
            Registered: self._on_registered,
            Heartbeat: lambda _msg: None,
            Reconnect: self._on_reconnect,
            Draining: lambda _msg: self._drain_acked.set(),
        }
        self._drain_acked = asyncio.Event()
        self._log = log.bind(handler_id=self.handler_id, kind=kind)

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        """Connect, register and serve until ``stop`` is called."""
        backoff_s = self.bus.reconnect_initial_s
        try:
            while not self._stopping:
                self._open_session()
                await self._session()
                was_registered = self._registered.is_set()
                self._close_session()
                if self._stopping:
                    break
                self._abandon_tasks()
                if was_registered:
                    backoff_s = self.bus.reconnect_initial_s
                wait_s = reconnect_delay_s(backoff_s)
                self._log.warning("reconnecting to broker", backoff_s=round(wait_s, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), wait_s)
                backoff_s = min(backoff_s * 2, self.bus.reconnect_max_s)
        finally:
            self._close_session()
            self._stopped.set()

    async def wait_registered(self, timeout_s: float) -> None:
        """Return once the broker has acknowledged the registration."""
        try:
            await asyncio.wait_for(self._registered.wait(), timeout_s)
        except TimeoutError:
            raise BrokerUnavailable(f"broker did not acknowledge registration within {timeout_s} s") from None

    async def stop(self) -> None:
        """Tell the broker we take no new work (``Draining``), let in-flight tasks finish (bounded by
        ``stop_drain_timeout_s``; what is left is cancelled and the broker fails it typed), unregister, close.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._dealer is not None and self._registered.is_set():
            self._send(Draining(handler_id=self.handler_id))
            if self.on_drain is not None:
                try:
                    self.on_drain()
                except Exception:
                    self._log.exception("drain hook failed")
        deadline = time.monotonic() + self.stop_drain_timeout_s
        if self._dealer is not None and self._registered.is_set():
            # Dispatches the broker sent before it read our Draining may still be on their way, and our task
            # set may be empty meanwhile: wait for its acknowledgement, which comes after them.
            wait_s = min(self.bus.liveness_timeout_s, self.stop_drain_timeout_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_acked.wait(), wait_s)
        await self._drain(deadline)
        if self._dealer is not None and self._registered.is_set():
            self._send(Unregister(handler_id=self.handler_id))
            self._dealer.close(linger_ms=500)
        self._session_over.set()
        self._stopped.set()
        self._close_session()

    def _abandon_tasks(self) -> None:
        """The session is over: the broker has failed every task it dispatched in it (``handler_lost``,
        at the latest when our next ``Register`` arrives) and drops their results. Cancel them, so that what
        runs them (executors) is free for the next session's work at once instead of at their deadlines."""
        if not self._tasks:
            return
        self._log.warning("cancelling the tasks of the ended broker session", tasks=len(self._tasks))
        for task in self._tasks:
            task.cancel()

    async def _drain(self, deadline: float) -> None:
        # Dispatches the broker sent before it read our Draining still arrive: they join the wait.
        while self._tasks and (remaining_s := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=remaining_s)
        self._refusing = True
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            self._log.warning("tasks cancelled at the end of the shutdown grace period", tasks=len(pending))
            await asyncio.wait(pending, timeout=1.0)

    # -- session -------------------------------------------------------------------------------------------

    def _open_session(self) -> None:
        self._registered.clear()
        self._session_over.clear()
        self._last_seen = time.monotonic()
        self._heard = False
        self._dealer = _Dealer(
            url=self.bus.broker_url,
            identity=self.handler_id,
            max_message_bytes=self.codec.max_message_bytes,
            on_frame=self._on_frame,
            keys=self._keys,
        )
        register = Register(
            handler_id=self.handler_id,
            kind=self.kind,
            topics=self.topics,
            capacity=self.capacity,
            max_tasks_per_topic=self.max_tasks_per_topic,
        )
        if self.profile is not None:
            register.site = self.profile.site
            register.instance_id = self.profile.instance_id
            register.executors = self.profile.executors
            register.serves = self.profile.serves
            register.devices = self.profile.devices
        self._send(register)

    def _close_session(self) -> None:
        self._registered.clear()
        if self._dealer is not None:
            self._dealer.close()
            self._dealer = None

    async def _session(self) -> None:
        """Heartbeat until the broker goes silent, asks us to reconnect, or we stop."""
        interval_s = self.bus.heartbeat_interval_s
        timeout_s = self.bus.liveness_timeout_s
        heartbeat = self.codec.encode(Heartbeat(sender_id=self.handler_id))
        while not self._session_over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_over.wait(), interval_s)
            if self._session_over.is_set() or self._dealer is None:
                return
            if time.monotonic() - self._last_seen > timeout_s:
                if not self._heard:
                    # Never reached a broker on this socket: nothing to discard, and a new socket would only
                    # race the old one's connection. ZeroMQ keeps reconnecting; our Register is queued.
                    self._last_seen = time.monotonic()
                    self._log.info("waiting for the broker", broker_url=self.bus.broker_url)
                    continue
                self._log.warning("broker silent", silent_s=round(time.monotonic() - self._last_seen, 3))
                return
            self._dealer.send(heartbeat)

    def _send(self, message: Message) -> bool:
        if self._dealer is None:
            return False
        return self._dealer.send(self.codec.encode(message))

    def _on_frame(self, frame: memoryview) -> None:
        self._last_seen = time.monotonic()
        self._heard = True
        try:
            message = self.codec.decode(frame)
        except InvalidMessage as exc:
            self._log.warning("dropping undecodable frame", error=str(exc))
            return
        handler = self._table.get(type(message))
        if handler is None:
            self._log.warning("dropping unexpected message", type=type(message).__name__)
            return
        handler(message)

    def report(self, task_id: str, step: int, payload: msgspec.Raw) -> bool:
        """Send a ``Progress`` report for a task this handler is running (event-loop thread only).

        Best effort: False when there is no connection or the report cannot be encoded."""
        try:
            frame = self.codec.encode(Progress(task_id=task_id, step=step, payload=payload))
        except InvalidMessage as exc:
            self._log.warning("progress report not sent", task_id=task_id, reason=exc.message)
            return False
        return self._dealer is not None and self._dealer.send(frame)

    def _on_registered(self, message: Registered) -> None:
        self._log.info("registered with broker", topics=self.topics, capacity=self.capacity)
        self._registered.set()

    def _on_reconnect(self, message: Reconnect) -> None:
        self._log.warning("broker asked us to reconnect", reason=message.reason)
        self._session_over.set()

    def _on_dispatch(self, dispatch: Dispatch) -> None:
        task = asyncio.get_running_loop().create_task(self._run_task(dispatch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_task(self, dispatch: Dispatch) -> None:
        if self._refusing:
            result = failed_result(
                dispatch.task_id, "handler_lost", "handler is shutting down", step=dispatch.step
            )
        else:
            async with self._slots:
                result = await self._invoke(dispatch)
        result.handler_id = self.handler_id
        if not result.ok and result.error is not None and result.error.code == TaskNotStarted.code:
            result.output = dispatch.inputs  # handed back: the broker freed its copy when it dispatched
        try:
            frame = self.codec.encode(result)
        except InvalidMessage as exc:
            frame = self.codec.encode(
                failed_result(dispatch.task_id, exc.code, exc.message, step=dispatch.step)
            )
        if self._dealer is None or not self._dealer.send(frame):
            self._log.warning("could not send result", task_id=dispatch.task_id)

    async def _invoke(self, dispatch: Dispatch) -> Result:
        started = time.perf_counter()
        try:
            result = await self._handle(dispatch)
        except asyncio.CancelledError:
            raise
        except DLHubError as exc:
            result = failed_result(dispatch.task_id, exc.code, exc.message, step=dispatch.step)
        except Exception as exc:
            self._log.info("servable raised", task_id=dispatch.task_id, exception_type=type(exc).__name__)
            result = failed_result(
                dispatch.task_id,
                "servable_error",
                str(exc),
                step=dispatch.step,
                exception_type=type(exc).__name__,
                traceback=traceback.format_exc(),
            )
        result.task_id = dispatch.task_id
        result.step = dispatch.step
        if not result.timings.invocation_ms:
            result.timings.invocation_ms = (time.perf_counter() - started) * 1000.0
        return result


@dataclass(slots=True)
class _PendingCall:
    future: asyncio.Future[Result]
    sent_at: float
    on_started: Callable[[Started], None] | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_queued: Callable[[Queued], None] | None = None


@dataclass(slots=True)
class _ClientState:
    pending: dict[str, _PendingCall] = field(default_factory=dict)
    stats: dict[str, asyncio.Future[StatsReply]] = field(default_factory=dict)
    queries: dict[str, asyncio.Future[TaskStatus]] = field(default_factory=dict)
    acks: list[str] = field(default_factory=list)
    checks: dict[str, list[str]] = field(default_factory=dict)
    """Periodic checks of long-awaited calls in flight: TaskQuery request id -> the task ids asked."""
    next_check: float = 0.0


OrphanResultListener = Callable[[Result], None]
"""Gets a Result no call awaits: a durable task's, re-sent to a restarted client (``BusClient.listen``)."""
BrokerChangeListener = Callable[[str, str], None]
"""Gets (previous broker id, new broker id) when a different broker process answers (it restarted)."""


class BusClient:
    def __init__(self, *, bus: BusConfig, codec: Codec, client_id: str | None = None) -> None:
        self.bus = bus
        self.codec = codec
        self.client_id = client_id or new_id()
        self._keys = client_keys_for(bus, "registry")
        self._dealer: _Dealer | None = None
        self._state = _ClientState()
        self._last_seen = 0.0  # liveness clock, reset on every (re)connect
        self._last_heard = 0.0  # when the broker last sent us anything at all
        self._heard_before = 0.0  # _last_heard as it was before the frame being handled
        self._heard = False  # has the broker sent anything on the current socket?
        self._ticker: asyncio.Task[None] | None = None
        self._heartbeat = codec.encode(Heartbeat(sender_id=self.client_id))
        self.broker_id = ""  # of the broker process last heard (its heartbeats carry it)
        self._on_orphan: OrphanResultListener | None = None
        self._on_broker_change: BrokerChangeListener | None = None
        self._table: dict[type[Message], Callable[[Any], None]] = {
            Result: self._on_result,
            Started: self._on_started,
            Progress: self._on_progress,
            StatsReply: self._on_stats,
            TaskStatus: self._on_task_status,
            Heartbeat: self._on_heartbeat,
            Reconnect: self._on_reconnect,
        }
        self._table[Queued] = self._on_queued
        self._max_pending = bus.max_pending_calls
        self._log = log.bind(client_id=self.client_id)

    @property
    def grace_s(self) -> float:
        """Extra time a call waits past its own timeout for the broker's answer."""
        return self.bus.liveness_timeout_s

    async def start(self) -> None:
        if self._dealer is not None:
            return
        self._connect()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._fail_all("client closed")
        if self._dealer is not None:
            self._dealer.close()
            self._dealer = None

    async def call(
        self,
        route: Sequence[RouteStep],
        inputs: msgspec.Raw,
        *,
        timeout_s: float,
        task_id: str | None = None,
        on_started: Callable[[Started], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        require_handler: bool = False,
        durable: bool = False,
        on_queued: Callable[[Queued], None] | None = None,
    ) -> Result:
        """Submit ``inputs`` along ``route`` and await the final Result; ``on_progress`` gets the handlers'
        ``Progress`` reports while the task runs, ``on_queued`` hears when it waits in the broker's queue.

        A deadline passing yields code ``task_timeout``; a silent broker yields ``broker_unavailable``; more
        than ``bus.max_pending_calls`` calls awaited at once ``queue_full`` (before anything is sent); with
        ``require_handler`` no handler for the first step's topic yields ``no_handler`` at once.
        ``durable``: the broker keeps the Result until ``ack(task_id)`` (call it once the outcome is stored).
        """
        if self._dealer is None:
            await self.start()
        task_id = task_id or new_id()
        pending = self._state.pending
        if task_id in pending:
            return failed_result(task_id, "conflict", f"task {task_id} is already pending on this client")
        if len(pending) >= self._max_pending:
            return failed_result(task_id, "queue_full", f"{self._max_pending} calls already in flight")
        try:
            frame = self.codec.encode(
                Submit(
                    task_id=task_id,
                    route=list(route),
                    inputs=inputs,
                    timeout_s=timeout_s,
                    notify_start=on_started is not None,
                    require_handler=require_handler,
                    durable=durable,
                    notify_queued=on_queued is not None,
                )
            )
        except InvalidMessage as exc:
            return failed_result(task_id, exc.code, exc.message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        pending[task_id] = _PendingCall(future, time.monotonic(), on_started, on_progress, on_queued)
        # A plain timer on the future rather than asyncio.wait_for: the same deadline for less work on the
        # request path (no waiter future, no extra callbacks).
        timer = loop.call_later(timeout_s + self.grace_s, _expire, future, task_id, timeout_s)
        try:
            if self._dealer is None or not self._dealer.send(frame):
                return failed_result(task_id, "broker_unavailable", "could not send the task to the broker")
            return await future
        finally:
            timer.cancel()
            pending.pop(task_id, None)

    async def stats(self, *, timeout_s: float = 2.0) -> StatsReply:
        """Ask the broker for its handler table and queue depth; raise BrokerUnavailable on no answer."""
        if self._dealer is None:
            await self.start()
        request_id = new_id()
        future: asyncio.Future[StatsReply] = asyncio.get_running_loop().create_future()
        self._state.stats[request_id] = future
        try:
            if self._dealer is None or not self._send(StatsRequest(request_id=request_id)):
                raise BrokerUnavailable("could not reach the broker")
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BrokerUnavailable(f"broker did not answer within {timeout_s} s") from None
        finally:
            self._state.stats.pop(request_id, None)

    def ack(self, task_id: str) -> None:
        """Tell the broker the durable task's outcome is stored; acks of one loop pass go as one ``Ack``."""
        acks = self._state.acks
        acks.append(task_id)
        if len(acks) == 1:
            asyncio.get_running_loop().call_soon(self._send_acks)

    def listen(
        self,
        *,
        on_orphan_result: OrphanResultListener | None = None,
        on_broker_change: BrokerChangeListener | None = None,
    ) -> None:
        """Set who gets results no call awaits, and who hears that the broker process changed."""
        self._on_orphan = on_orphan_result
        self._on_broker_change = on_broker_change

    def awaiting(self, task_id: str) -> bool:
        """Whether a ``call`` of this client is waiting for the task's result."""
        return task_id in self._state.pending

    async def query_tasks(
        self,
        task_ids: Sequence[str],
        *,
        timeout_s: float = 5.0,
        adopt: bool = False,
        resend_all: bool = True,
    ) -> TaskStatus:
        """Ask the broker which of ``task_ids`` it still holds; it first re-sends every unacknowledged result
        it keeps for this client (only those of ``task_ids`` without ``resend_all``; they reach the orphan
        listener). ``adopt``: take the tasks over from the client that submitted them first (their outcomes
        come here). BrokerUnavailable on no answer."""
        if self._dealer is None:
            await self.start()
        request_id = new_id()
        future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        self._state.queries[request_id] = future
        try:
            query = TaskQuery(
                request_id=request_id, task_ids=list(task_ids), resend_all=resend_all, adopt=adopt
            )
            if not self._send(query):
                raise BrokerUnavailable("could not reach the broker")
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BrokerUnavailable(f"broker did not answer within {timeout_s} s") from None
        finally:
            self._state.queries.pop(request_id, None)

    # -- internals -----------------------------------------------------------------------------------------

    def _send_acks(self) -> None:
        task_ids, self._state.acks = self._state.acks, []
        if task_ids and not self._send(Ack(task_ids=task_ids)):
            self._log.info(
                "acks not sent (no connection); the broker keeps those results", count=len(task_ids)
            )

    def _connect(self) -> None:
        self._last_seen = time.monotonic()
        self._heard = False
        self._dealer = _Dealer(
            url=self.bus.broker_url,
            identity=self.client_id,
            max_message_bytes=self.codec.max_message_bytes,
            on_frame=self._on_frame,
            keys=self._keys,
        )
        self._dealer.send(self._heartbeat)

    def _send(self, message: Message) -> bool:
        return self._dealer is not None and self._dealer.send(self.codec.encode(message))

    async def _tick(self) -> None:
        interval_s = self.bus.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._check_broker()
            except Exception:  # the ticker must outlive any one failure, or calls could hang
                self._log.exception("client heartbeat tick failed")

    def _check_broker(self) -> None:
        if time.monotonic() - self._last_seen > self.bus.liveness_timeout_s and self._dealer is not None:
            self._dealer.receive_now()  # frames that arrived while our loop was busy count as heard
        if time.monotonic() - self._last_seen > self.bus.liveness_timeout_s:
            if not self._heard and not self._state.pending:
                # Never reached a broker on this socket and nothing to discard: keep it (ZeroMQ reconnects
                # by itself) rather than race a new socket's connection against the old one's.
                self._last_seen = time.monotonic()
                self._fail_all("broker is not answering")
                return
            self._log.warning("broker silent; failing pending calls and reconnecting")
            self._fail_all("broker stopped answering heartbeats")
            if self._dealer is not None:
                self._dealer.close()
            self._connect()
        elif self._dealer is not None:
            self._dealer.send(self._heartbeat)
            self._check_overdue_calls()

    def _check_overdue_calls(self) -> None:
        """Every liveness timeout, ask the broker about calls awaited longer than that (one ``TaskQuery``,
        only their held results re-sent). A result the broker could not deliver (this client read too
        slowly for ``broker.sndhwm``) is re-sent if the task was durable; otherwise the broker no longer
        knows the task and the call fails now rather than at its deadline (``_on_task_status``)."""
        state = self._state
        now = time.monotonic()
        timeout_s = self.bus.liveness_timeout_s
        if now < state.next_check or not state.pending:
            return
        state.next_check = now + timeout_s
        state.checks.clear()  # an unanswered check is superseded (its TaskStatus may have been dropped)
        cutoff = now - timeout_s
        overdue = [t for t, call in state.pending.items() if call.sent_at < cutoff and not call.future.done()]
        if not overdue:
            return
        request_id = new_id()
        asked = overdue[:_CHECK_BATCH]
        if self._send(TaskQuery(request_id=request_id, task_ids=asked, resend_all=False)):
            state.checks[request_id] = asked

    def _fail_unknown(self, asked: list[str], known: list[str]) -> None:
        """Fail the calls the broker's answer to a periodic check did not name: the broker has finished or
        lost those tasks, and their results (ahead of the answer on the same connection) did not arrive."""
        held = set(known)
        for task_id in asked:
            call = self._state.pending.get(task_id)
            if task_id in held or call is None or call.future.done():
                continue
            self._log.warning("the broker no longer holds an awaited task", task_id=task_id)
            call.future.set_result(
                failed_result(
                    task_id,
                    "broker_unavailable",
                    "the broker no longer holds the task and its result did not arrive "
                    "(dropped on the way to this client, or lost with a broker restart)",
                )
            )

    def _fail_all(self, reason: str) -> None:
        for task_id, call in list(self._state.pending.items()):
            if not call.future.done():
                call.future.set_result(failed_result(task_id, "broker_unavailable", reason))
        waiting: list[asyncio.Future[Any]] = [*self._state.stats.values(), *self._state.queries.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(BrokerUnavailable(reason))

    def _on_frame(self, frame: memoryview) -> None:
        now = time.monotonic()
        self._last_seen = now
        self._heard = True
        self._heard_before, self._last_heard = self._last_heard, now
        try:
            message = self.codec.decode(frame)
        except InvalidMessage as exc:
            self._log.warning("dropping undecodable frame", error=str(exc))
            return
        handler = self._table.get(type(message))
        if handler is None:
            self._log.warning("dropping unexpected message", type=type(message).__name__)
            return
        handler(message)

    def _on_result(self, result: Result) -> None:
        call = self._state.pending.get(result.task_id)
        if call is None or call.future.done():
            if self._on_orphan is not None:
                self._notify(self._on_orphan, result, result.task_id)
            else:
                self._log.debug("result for unknown or finished task", task_id=result.task_id)
            return
        call.future.set_result(result)

    def _on_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._saw_broker(heartbeat.sender_id)

    def _on_task_status(self, status: TaskStatus) -> None:
        self._saw_broker(status.broker_id)
        asked = self._state.checks.pop(status.request_id, None)
        if asked is not None:
            self._fail_unknown(asked, status.known)
            return
        future = self._state.queries.get(status.request_id)
        if future is not None and not future.done():
            future.set_result(status)

    def _saw_broker(self, broker_id: str) -> None:
        previous = self.broker_id
        if broker_id == previous:
            return
        self.broker_id = broker_id
        if previous and self._on_broker_change is not None:
            self._log.warning("the broker restarted", previous=previous, broker_id=broker_id)
            try:
                self._on_broker_change(previous, broker_id)
            except Exception:
                self._log.exception("broker change listener failed")

    def _on_started(self, started: Started) -> None:
        call = self._state.pending.get(started.task_id)
        if call is not None:
            self._notify(call.on_started, started, started.task_id)

    def _on_progress(self, progress: Progress) -> None:
        call = self._state.pending.get(progress.task_id)
        if call is not None:
            self._notify(call.on_progress, progress, progress.task_id)

    def _on_queued(self, queued: Queued) -> None:
        call = self._state.pending.get(queued.task_id)
        if call is not None:
            self._notify(call.on_queued, queued, queued.task_id)

    def _notify(self, callback: Callable[[Any], None] | None, message: Message, task_id: str) -> None:
        """Hand a running task's message to its caller's callback; a failing callback never breaks the bus."""
        if callback is None:
            return
        try:
            callback(message)
        except Exception:
            self._log.exception("task callback failed", task_id=task_id, message=type(message).__name__)

    def _on_stats(self, reply: StatsReply) -> None:
        future = self._state.stats.get(reply.request_id)
        if future is not None and not future.done():
            future.set_result(reply)

    def _on_reconnect(self, message: Reconnect) -> None:
        # The broker does not know us. A fresh client hears this once (nothing to fail); after a broker
        # restart the tasks we sent while the previous broker was answering are gone with it. Tasks sent since
        # then may have reached the new broker, so they keep waiting (bounded by their own timeout).
        cutoff = self._heard_before
        lost = [
            (task_id, call)
            for task_id, call in self._state.pending.items()
            if call.sent_at < cutoff and not call.future.done()
        ]
        if lost:
            self._log.warning("broker lost our tasks", reason=message.reason, lost=len(lost))
        for task_id, call in lost:
            call.future.set_result(
                failed_result(task_id, "broker_unavailable", f"broker lost the task: {message.reason}")
            )
