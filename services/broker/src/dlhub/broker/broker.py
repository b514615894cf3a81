"""The broker's main loop: one ROUTER socket, a handler table, a topic table and a queue of waiting tasks.

The loop waits until the socket is readable or a timer tick is due, then runs a short list of named steps:
receive messages, dispatch queued tasks, (on ticks) send heartbeats, expire deadlines and purge silent peers,
and last send what the steps queued: one multipart message per peer per pass, so that under load a worker
gets its dispatches and a client its results in one ZeroMQ message rather than one each. Incoming messages
are dispatched by type through one table. Payloads (``msgspec.Raw``) are forwarded without being decoded.
With bus keys on (``bus.curve_enabled``, docs/security.md) the socket is a CURVE server that admits only known
keys, and each message is checked against the role of its connection's key before it is dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import zmq
from prometheus_client import REGISTRY

from dlhub.broker.handlers import HandlerRecord, HandlerTable
from dlhub.broker.mailbox import Mailbox
from dlhub.broker.metrics import BrokerCollector
from dlhub.broker.placement import device_counts
from dlhub.broker.queue import PendingQueue
from dlhub.broker.routing import TopicTable
from dlhub.broker.tasks import TaskRecord
from dlhub.common.bus import send_frames
from dlhub.common.codec import Codec
from dlhub.common.config import BrokerConfig, BusConfig, DLHubSettings
from dlhub.common.curve import (
    BROKER_KEY,
    ZAP_DOMAIN,
    CurveKeyError,
    PeerRights,
    ZapHandler,
    authorized_keys,
    load_keypair,
    rights_of,
    untagged,
)
from dlhub.common.errors import InvalidMessage
from dlhub.common.ids import new_id
from dlhub.common.logging import get_logger
from dlhub.common.messages import (
    NIL,
    Ack,
    Dispatch,
    Draining,
    ErrorInfo,
    HandlerInfo,
    Heartbeat,
    Message,
    Progress,
    Queued,
    Reconnect,
    Register,
    Registered,
    Result,
    Started,
    StatsReply,
    StatsRequest,
    Submit,
    TaskQuery,
    TaskStatus,
    Timings,
    Unregister,
)
from dlhub.common.metrics import start_metrics_server

log = get_logger(__name__)

RECV_BATCH: Final = 1024
"""Messages handled per wakeup before the timer steps get a turn."""

MessageHandler = Callable[[bytes, Any, float], None]


def peer_name(identity: bytes) -> str:
    """A printable form of a ROUTER identity (our peers use their UUIDs; others get hex), without the tag a
    CURVE peer's identity carries (``dlhub.common.curve.tagged_identity``)."""
    try:
        text = identity.decode()
    except UnicodeDecodeError:
        return identity.hex()
    return untagged(text) if text.isprintable() else identity.hex()


class Broker:
    def __init__(
        self,
        *,
        bus: BusConfig,
        config: BrokerConfig,
        codec: Codec,
        metrics: BrokerCollector | None = None,
        metrics_interval_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.metrics = metrics
        self.metrics_interval_s = metrics_interval_s
        self._next_metrics = 0.0
        self.config = config
        self.codec = codec
        self.broker_id = f"broker-{new_id()}"
        self.handlers = HandlerTable()
        self.topics = TopicTable()
        self.queue = PendingQueue(
            max_tasks=config.max_queued_tasks, max_per_topic=config.max_queued_per_topic
        )
        self.tasks: dict[str, TaskRecord] = {}
        self.mailbox = Mailbox(
            max_results=config.max_unacked_results,
            max_bytes=config.max_unacked_result_bytes,
            ttl_s=config.unacked_result_ttl_s,
        )
        self.clients: dict[bytes, float] = {}  # client identity -> last seen (monotonic)
        self.tick_s = min(0.1, bus.heartbeat_interval_s / 2)
        self.client_timeout_s = max(60.0, 10 * bus.liveness_timeout_s)
        self._table: dict[type[Message], MessageHandler] = {
            Submit: self._on_submit,
            Result: self._on_result,
            Progress: self._on_progress,
            Heartbeat: self._on_heartbeat,
            Register: self._on_register,
            Unregister: self._on_unregister,
            Draining: self._on_draining,
            StatsRequest: self._on_stats_request,
            Ack: self._on_ack,
            TaskQuery: self._on_task_query,
        }
        self._sock: zmq.Socket[bytes] | None = None
        self._zap: ZapHandler | None = None
        # CURVE on: key name -> what its holder may send; identity -> the key name it first came with.
        self._rights: dict[str, PeerRights] | None = None
        self._identity_keys: dict[bytes, str] = {}
        self._refusals = 0
        self._waiter: asyncio.Future[None] | None = None
        self._stopping = False
        self._draining = False
        self._drain_deadline = 0.0
        self._tick_due = False
        self._capacity_changed = False
        self._turn = 0
        self._next_heartbeat = 0.0
        self._heartbeat_frame = codec.encode(Heartbeat(sender_id=self.broker_id))
        self._outbox: dict[bytes, list[bytes | bytearray]] = {}
        # Tasks dispatched in the outbox by handler identity: routed again if that handler proves unreachable.
        self._undelivered: dict[bytes, list[TaskRecord]] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------

    def bind(self) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting handler takes over its identity
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.codec.max_message_bytes + 64)
        if self.bus.curve_enabled:
            self._setup_curve(sock)
        for url in (self.config.bind_url, *self.config.extra_bind_urls):
            sock.bind(url)
        self._sock = sock

    def _setup_curve(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a CURVE server that admits only the keys in the keys directory (before any bind: a
        connection accepted without the ZAP handler in place would be admitted unchecked)."""
        keys_dir = self.bus.curve_keys_dir
        if keys_dir is None:
            raise CurveKeyError("bus.curve_enabled is set but bus.curve_keys_dir is not")
        _, secret = load_keypair(keys_dir, BROKER_KEY)
        admitted = authorized_keys(keys_dir)
        self._rights = {name: rights_of(name) for name in admitted.values()}
        self._zap = ZapHandler(zmq.Context.instance(), admitted)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        log.info("bus authentication on", keys_dir=str(keys_dir), keys=sorted(self._rights))

    def stop(self) -> None:
        """Stop now: queued and running tasks are not answered (their clients see a silent broker)."""
        self._stopping = True
        self._wake()

    def drain(self) -> None:
        """Graceful stop (SIGTERM): refuse new tasks with ``shutting_down``, fail the queued ones with it
        (never dispatched: safe to submit again), let running ones finish for ``shutdown_grace_s``, then
        fail what is left and stop. A second call stops at once."""
        if self._draining:
            self.stop()
            return
        self._draining = True
        self._drain_deadline = time.monotonic() + self.config.shutdown_grace_s
        log.info("broker draining", tasks=len(self.tasks), grace_s=self.config.shutdown_grace_s)
        for task in self.queue.drain():
            self._fail(task, "shutting_down", "the broker is shutting down; submit again")
        self._wake()

    async def serve(self) -> None:
        """Bind and run the main loop until ``stop``."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        loop.add_reader(fd, self._wake)
        ticker = loop.call_later(self.tick_s, self._on_timer)
        log.info(
            "broker ready",
            bind_url=self.config.bind_url,
            extra_bind_urls=self.config.extra_bind_urls,
            broker_id=self.broker_id,
        )
        try:
            while not self._stopping:
                await self._poll()
                self._receive_messages()
                self._dispatch_queued()
                if self._tick_due:
                    self._tick_due = False
                    ticker = loop.call_later(self.tick_s, self._on_timer)
                    self._run_timer_steps(time.monotonic())
                self._flush_outbox()
        finally:
            ticker.cancel()
            with contextlib.suppress(Exception):  # best effort: results already decided still go out
                self._flush_outbox()
            loop.remove_reader(fd)
            self._sock.close(linger=0)
            self._sock = None
            if self._zap is not None:
                self._zap.stop()
                self._zap = None
            log.info("broker stopped", queued=len(self.queue), tasks=len(self.tasks))

    # -- waiting ---------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self._tick_due = True
        self._wake()

    async def _poll(self) -> None:
        """Wait until a frame may be readable, a tick is due or we are stopping."""
        assert self._sock is not None
        # The FD is edge-triggered; sends made since the last drain may have swallowed its signal.
        if self._tick_due or self._stopping or cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- step: receive ---------------------------------------------------------------------------------------

    def _receive_messages(self) -> None:
        sock = self._sock
        assert sock is not None
        handlers = self.handlers.by_identity
        now = time.monotonic()
        for _ in range(RECV_BATCH):
            try:
                # Uncopied: a payload stays a view of the frame it arrived in until it is forwarded.
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            if len(frames) < 2:
                log.warning("dropping message without a body", peer=peer_name(identity), frames=len(frames))
                continue
            rights = None if self._rights is None else self._peer_rights(identity, frames[1])
            if rights is False:
                continue
            handler = handlers.get(identity)
            if handler is not None:
                handler.last_seen = now
            for frame in frames[1:]:  # a peer sends what it queued in one loop iteration together
                self._handle_frame(identity, frame.buffer, now, rights)

    def _peer_rights(self, identity: bytes, frame: zmq.Frame) -> PeerRights | Literal[False]:
        """What the key this message came with may send; False (message dropped) when the identity first came
        with another key: one key cannot take over the routing identity of another."""
        assert self._rights is not None
        try:
            name = str(frame.get("User-Id"))  # the key's name: our ZAP handler's answer for this connection
        except zmq.ZMQError:
            name = ""
        rights = self._rights.get(name)
        bound = self._identity_keys.setdefault(identity, name)
        if rights is None or bound != name:
            self._refuse(identity, name, "identity of another key" if rights else "unknown key")
            return False
        if len(self._identity_keys) > 100_000:  # forget old peers now and then; live ones bind again
            self._identity_keys.clear()
        return rights

    def _permitted(self, identity: bytes, message: Message, rights: PeerRights) -> bool:
        """Whether the peer's role may send ``message``; a refused Submit is answered ``forbidden``."""
        kind = type(message)
        topics_ok = not isinstance(message, Register) or rights.may_register(message.topics)
        if kind in rights.messages and topics_ok:
            return True
        self._refuse(identity, rights.name, f"{rights.role} may not send {kind.__name__}")
        if isinstance(message, Submit):
            text = f"the {rights.role} key may not submit tasks"
            self._reply(identity, _failure(message.task_id, "forbidden", text))
        return False

    def _refuse(self, identity: bytes, key: str, reason: str) -> None:
        # Logged the first few times and then every 1000th: a refused peer must not flood the log.
        self._refusals += 1
        if self._refusals <= 20 or self._refusals % 1000 == 0:
            log.warning(
                "bus message refused",
                peer=peer_name(identity),
                key=key,
                reason=reason,
                refusals=self._refusals,
            )

    def _handle_frame(
        self, identity: bytes, frame: memoryview, now: float, rights: PeerRights | None = None
    ) -> None:
        try:
            message = self.codec.decode(frame)
        except InvalidMessage as exc:
            log.warning("dropping undecodable message", peer=peer_name(identity), error=str(exc))
            return
        on_message = self._table.get(type(message))
        if on_message is None:
            log.warning("dropping unexpected message", peer=peer_name(identity), type=type(message).__name__)
            return
        if rights is not None and not self._permitted(identity, message, rights):
            return
        try:
            on_message(identity, message, now)
        except Exception:  # one bad message must not take the broker down
            log.exception("failed to handle message", peer=peer_name(identity), type=type(message).__name__)

    # -- message handlers ------------------------------------------------------------------------------------

    def _on_register(self, identity: bytes, msg: Register, now: float) -> None:
        if msg.capacity < 1 or not msg.topics:
            log.warning("rejecting registration", handler_id=msg.handler_id, capacity=msg.capacity)
            return
        old = self.handlers.get(identity)
        if old is not None:
            # A new registration is a new session: whatever the old one held is not coming back through it.
            self._remove_handler(old, "handler re-registered")
        self.clients.pop(identity, None)
        handler = HandlerRecord(
            handler_id=msg.handler_id,
            identity=identity,
            kind=msg.kind,
            topics=list(msg.topics),
            capacity=msg.capacity,
            last_seen=now,
            max_per_topic=max(0, msg.max_tasks_per_topic),
            site=msg.site,
            instance_id=msg.instance_id,
            executors=list(msg.executors),
            serves=list(msg.serves),
            devices=list(msg.devices),
            device_counts=device_counts(msg.devices),
        )
        self.handlers.add(handler)
        self.topics.add(handler)
        self._capacity_changed = True
        reply = Registered(handler_id=msg.handler_id, heartbeat_interval_s=self.bus.heartbeat_interval_s)
        self._send(identity, self.codec.encode(reply))
        log.info(
            "handler registered",
            handler_id=msg.handler_id,
            kind=msg.kind,
            topics=msg.topics,
            capacity=msg.capacity,
            site=msg.site or None,
            instance_id=msg.instance_id or None,
            devices=msg.devices or None,
        )

    def _on_unregister(self, identity: bytes, msg: Unregister, now: float) -> None:
        handler = self.handlers.get(identity)
        if handler is None:
            log.info("unregister from unknown peer", peer=peer_name(identity))
            return
        self._remove_handler(handler, "handler unregistered")
        log.info("handler unregistered", handler_id=handler.handler_id)

    def _on_draining(self, identity: bytes, msg: Draining, now: float) -> None:
        """The handler stops taking work: no more dispatches; its running tasks' results are still taken."""
        handler = self.handlers.get(identity)
        if handler is None:
            return
        handler.draining = True
        self.topics.remove(handler)
        self._send(identity, self.codec.encode(msg))  # the acknowledgement: our dispatches came before it
        log.info("handler draining", handler_id=handler.handler_id, inflight=len(handler.inflight))

    def _on_heartbeat(self, identity: bytes, msg: Heartbeat, now: float) -> None:
        if identity in self.handlers.by_identity:
            return  # last_seen already refreshed
        if identity in self.clients:
            self.clients[identity] = now
            self._send(identity, self._heartbeat_frame)
            return
        # Unknown: a handler or client of a previous broker life. Ask it to re-register; a client hears this
        # once and is known from then on.
        self.clients[identity] = now
        log.info("heartbeat from unknown peer", peer=peer_name(identity))
        self._send(identity, self.codec.encode(Reconnect(reason="unknown peer")))

    def _on_stats_request(self, identity: bytes, msg: StatsRequest, now: float) -> None:
        if identity not in self.handlers.by_identity:
            self.clients[identity] = now
        handlers = [
            HandlerInfo(
                handler_id=h.handler_id,
                kind=h.kind,
                topics=h.topics,
                capacity=h.capacity,
                inflight=len(h.inflight),
                draining=h.draining,
                site=h.site,
                instance_id=h.instance_id,
                executors=h.executors,
                serves=h.serves,
                devices=h.devices,
            )
            for h in self.handlers
        ]
        reply = StatsReply(
            request_id=msg.request_id,
            handlers=handlers,
            queued=len(self.queue),
            inflight=self.handlers.total_inflight(),
        )
        self._send(identity, self.codec.encode(reply))

    def _on_submit(self, identity: bytes, msg: Submit, now: float) -> None:
        self.clients[identity] = now
        if msg.task_id in self.tasks:
            log.warning("ignoring duplicate submit", task_id=msg.task_id)
            return
        if not msg.route:
            self._reply(identity, _failure(msg.task_id, "validation_error", "route is empty"))
            return
        if self._draining:
            self._reply(identity, _failure(msg.task_id, "shutting_down", "the broker is shutting down"))
            return
        first = msg.route[0]
        if msg.require_handler and not self.topics.candidates(first.topic, first.placement):
            message = self.topics.unserved_reason(first.topic, first.placement) + " right now"
            self._reply(identity, _failure(msg.task_id, "no_handler", message, topic=first.topic))
            return
        task = TaskRecord(
            task_id=msg.task_id,
            client=identity,
            route=msg.route,
            deadline=now + msg.timeout_s,
            deadline_unix_s=time.time() + msg.timeout_s,
            notify_start=msg.notify_start,
            inputs=msg.inputs,
            ready_at=now,
            durable=msg.durable,
            notify_queued=msg.notify_queued,
        )
        self.tasks[msg.task_id] = task
        self._route(task, now)

    def _on_ack(self, identity: bytes, msg: Ack, now: float) -> None:
        self.mailbox.ack(msg.task_ids)

    def _on_task_query(self, identity: bytes, msg: TaskQuery, now: float) -> None:
        """Re-send the client's unacknowledged results, then say which of the asked tasks are still held.

        Both go out in this pass's one message to the client, the results first: a task the answer does not
        name has no outcome coming from this broker."""
        if identity not in self.handlers.by_identity:
            self.clients[identity] = now
        if msg.adopt:
            self._readdress(msg.task_ids, identity)
        if msg.resend_all:
            held = self.mailbox.held_for(identity)
        else:  # a periodic check of long-awaited tasks, or a takeover: only the results of those asked
            held = self.mailbox.held_among(identity, msg.task_ids)
        for frame in held:
            self._send(identity, frame)
        known = [t for t in msg.task_ids if t in self.tasks or t in self.mailbox]
        peer = peer_name(identity)
        log.info("task query", peer=peer, asked=len(msg.task_ids), known=len(known), resent=len(held))
        reply = TaskStatus(request_id=msg.request_id, broker_id=self.broker_id, known=known)
        self._send(identity, self.codec.encode(reply))

    def _readdress(self, task_ids: list[str], client: bytes) -> None:
        """Send the outcomes of ``task_ids`` to ``client`` from now on (a registry took them over from one
        that is gone): tasks still queued or running, and results held for acknowledgement."""
        moved = 0
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is not None:
                task.client = client
                moved += 1
        held = self.mailbox.readdress(task_ids, client)
        log.info("tasks taken over", peer=peer_name(client), running=moved, held=held)

    def _on_progress(self, identity: bytes, msg: Progress, now: float) -> None:
        """Forward a running task's progress to its client; stale or foreign reports are dropped."""
        handler = self.handlers.get(identity)
        task = self.tasks.get(msg.task_id)
        if handler is None or task is None or task.handler is not handler or task.step != msg.step:
            log.debug("dropping progress for unknown or finished task", task_id=msg.task_id)
            return
        self._reply(task.client, msg)

    def _on_result(self, identity: bytes, msg: Result, now: float) -> None:
        handler = self.handlers.get(identity)
        if handler is None:
            log.warning("result from unknown peer", peer=peer_name(identity), task_id=msg.task_id)
            self._send(identity, self.codec.encode(Reconnect(reason="unknown handler")))
            return
        if handler.release(msg.task_id):
            self._capacity_changed = True
        task = self.tasks.get(msg.task_id)
        if task is None or task.handler is not handler or task.step != msg.step:
            log.info(
                "dropping result for unknown or finished task",
                task_id=msg.task_id,
                handler_id=handler.handler_id,
            )
            return
        task.handler = None
        if handler.draining and not msg.ok and msg.error is not None and msg.error.code == "not_started":
            # A draining worker hands back a task it never started: route it again (never run twice).
            log.info("task handed back", task_id=task.task_id, handler_id=handler.handler_id)
            task.inputs = msg.output  # the handler returns them (ours were freed at dispatch)
            task.ready_at = now
            self._route(task, now)
            return
        task.inference_ms += msg.timings.inference_ms
        task.invocation_ms += msg.timings.invocation_ms
        task.queue_ms += msg.timings.queue_ms
        if msg.ok and task.step + 1 < len(task.route):
            task.step += 1
            task.inputs = msg.output
            task.ready_at = now
            self._route(task, now)
            return
        error = msg.error
        if not msg.ok:
            if error is None:
                error = ErrorInfo(code="servable_error", message="handler reported failure without an error")
            error.step = task.step
            error.topic = task.topic
        self._finish(
            task,
            Result(
                task_id=task.task_id,
                ok=msg.ok,
                output=msg.output,
                error=error,
                timings=self._timings(task),
                step=task.step,
                handler_id=handler.handler_id,
            ),
        )

    # -- routing ---------------------------------------------------------------------------------------------

    def _route(self, task: TaskRecord, now: float) -> None:
        """Hand the task's current step to a handler with free capacity, or queue it."""
        topic = task.topic
        placement = task.placement
        while True:
            handler = self.topics.choose(topic, placement)
            if handler is None:
                break
            if self._dispatch(task, handler, now):
                return
            if task.task_id not in self.tasks:  # failed while dispatching
                return
        if self._draining:  # a later step of a pipeline: nothing will take it before the broker stops
            self._fail(task, "shutting_down", "the broker is shutting down")
        elif not self.queue.push(task):
            self._fail(task, "queue_full", self._queue_full_message(topic))
        elif task.notify_queued and task.step == 0:
            self._reply(task.client, Queued(task_id=task.task_id))

    def _queue_full_message(self, topic: str) -> str:
        if len(self.queue) >= self.queue.max_tasks:
            return f"the broker's queue is full ({self.queue.max_tasks} tasks); retry later"
        return f"the queue of topic {topic!r} is full ({self.queue.max_per_topic} tasks); retry later"

    def _dispatch(self, task: TaskRecord, handler: HandlerRecord, now: float) -> bool:
        step = task.route[task.step]
        try:
            frame = self.codec.encode(
                Dispatch(
                    task_id=task.task_id,
                    step=task.step,
                    topic=step.topic,
                    method=step.method,
                    inputs=task.inputs,
                    parameters=step.parameters,
                    deadline_unix_s=task.deadline_unix_s,
                    package=step.package,
                )
            )
        except InvalidMessage as exc:
            self._fail(task, exc.code, exc.message)
            return False
        self._send(handler.identity, frame)
        self._undelivered.setdefault(handler.identity, []).append(task)
        handler.hold(task.task_id, step.topic)
        task.handler = handler
        task.queue_ms += (now - task.ready_at) * 1000.0
        if task.notify_start and not task.started_sent:
            task.started_sent = True
            self._reply(task.client, Started(task_id=task.task_id, handler_id=handler.handler_id))
        return True

    # -- step: dispatch queued tasks -------------------------------------------------------------------------

    def _dispatch_queued(self) -> None:
        if not self._capacity_changed or not len(self.queue):
            self._capacity_changed = False
            return
        self._capacity_changed = False
        now = time.monotonic()
        queue = self.queue
        topics = queue.topics()
        if len(topics) > 1:  # topics take turns, one task each, from a rotating start: none starves another
            self._turn = (self._turn + 1) % len(topics)
            topics = topics[self._turn :] + topics[: self._turn]
        progress = True
        while progress:
            progress = False
            for topic in topics:
                task = queue.peek(topic)
                if task is None:
                    continue
                handler = self.topics.choose(topic, task.placement)
                if handler is None:
                    continue
                queue.take(task)
                progress = True
                if not self._dispatch(task, handler, now) and task.task_id in self.tasks:
                    self._route(task, now)  # that handler vanished; try another or requeue

    # -- timer steps -----------------------------------------------------------------------------------------

    def _run_timer_steps(self, now: float) -> None:
        for step in (
            self._send_heartbeats,
            self._expire_tasks,
            self._expire_results,
            self._check_drained,
            self._purge_silent_peers,
            self._update_metrics,
        ):
            try:
                step(now)
            except Exception:
                log.exception("timer step failed", step=step.__name__)

    def _update_metrics(self, now: float) -> None:
        if self.metrics is None or now < self._next_metrics:
            return
        self._next_metrics = now + self.metrics_interval_s
        self.metrics.update(self.handlers, self.queue, len(self.tasks), self.mailbox)

    def _send_heartbeats(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.bus.heartbeat_interval_s
        frame = self._heartbeat_frame
        for handler in self.handlers:
            self._send(handler.identity, frame)

    def _expire_unserved(self, now: float) -> None:
        """Fail queued tasks that no registered handler could take for ``unserved_timeout_s``: a task for a
        servable no Task Manager serves (or none where its placement asks) ends typed, naming what is
        missing, instead of waiting for its deadline."""
        limit_s = self.config.unserved_timeout_s
        if not limit_s or not len(self.queue):
            return
        for topic in self.queue.topics():
            head = self.queue.peek(topic)
            if head is None or self.topics.candidates(topic, head.placement):
                continue
            reason = self.topics.unserved_reason(topic, head.placement)
            while (task := self.queue.peek(topic)) is not None and now - task.ready_at >= limit_s:
                self._fail(task, "no_handler", reason)

    def _expire_tasks(self, now: float) -> None:
        self._expire_unserved(now)
        for task in self.queue.expired(now):
            if self.topics.ever_served(task.topic):
                self._fail(task, "task_timeout", "deadline passed while waiting for a free handler")
            else:
                self._fail(task, "no_handler", f"no handler is registered for topic {task.topic!r}")
        for handler in self.handlers:
            for task_id in list(handler.inflight):
                running = self.tasks.get(task_id)
                if running is not None and running.handler is handler and running.deadline <= now:
                    # The handler stays busy until it answers; the client hears now.
                    self._fail(running, "task_timeout", "deadline passed while the task was running")

    def _expire_results(self, now: float) -> None:
        expired = self.mailbox.expire(now)
        if expired:
            log.warning("unacknowledged results expired", count=len(expired), first_task_id=expired[0])

    def _check_drained(self, now: float) -> None:
        """While draining: stop once no task is left, or fail what is left when the grace period is over."""
        if not self._draining:
            return
        if self.tasks and now < self._drain_deadline:
            return
        for task in list(self.tasks.values()):
            self._fail(task, "broker_unavailable", "the broker stopped before the task finished")
        log.info("broker drained")
        self._stopping = True

    def _purge_silent_peers(self, now: float) -> None:
        for handler in self.handlers.silent_since(now - self.bus.liveness_timeout_s):
            log.warning(
                "handler silent; dropping it",
                handler_id=handler.handler_id,
                silent_s=round(now - handler.last_seen, 3),
                inflight=len(handler.inflight),
            )
            self._remove_handler(handler, "handler stopped heartbeating")
        cutoff = now - self.client_timeout_s
        for identity in [i for i, seen in self.clients.items() if seen < cutoff]:
            del self.clients[identity]

    # -- helpers ---------------------------------------------------------------------------------------------

    def _remove_handler(self, handler: HandlerRecord, reason: str) -> None:
        """Forget a handler and fail (typed) every task it still held."""
        self.handlers.remove(handler)
        self.topics.remove(handler)
        held = handler.release_all()
        for task_id in held:
            task = self.tasks.get(task_id)
            if task is not None and task.handler is handler:
                self._fail(task, "handler_lost", f"{reason} ({handler.kind} {handler.handler_id})")
        if held:
            log.warning(
                "failed tasks of lost handler", handler_id=handler.handler_id, tasks=len(held), reason=reason
            )

    def _fail(self, task: TaskRecord, code: str, message: str) -> None:
        result = _failure(task.task_id, code, message, step=task.step, topic=task.topic)
        result.timings = self._timings(task)
        self._finish(task, result)

    def _finish(self, task: TaskRecord, result: Result) -> None:
        self.tasks.pop(task.task_id, None)
        if task.queued:
            self.queue.take(task)
        task.handler = None
        if task.durable:
            frame = self._encode_reply(result)
            dropped = self.mailbox.put(task.client, task.task_id, frame, time.monotonic())
            if dropped:
                log.warning("unacknowledged results dropped", count=len(dropped), first_task_id=dropped[0])
            self._send(task.client, frame)
        else:
            self._reply(task.client, result)
        if not result.ok and result.error is not None:
            log.info(
                "task failed", task_id=task.task_id, code=result.error.code, step=task.step, topic=task.topic
            )

    @staticmethod
    def _timings(task: TaskRecord) -> Timings:
        return Timings(
            inference_ms=task.inference_ms, invocation_ms=task.invocation_ms, queue_ms=task.queue_ms
        )

    def _reply(self, identity: bytes, message: Message) -> None:
        self._send(identity, self._encode_reply(message))

    def _encode_reply(self, message: Message) -> bytes | bytearray:
        try:
            return self.codec.encode(message)
        except InvalidMessage as exc:
            if not isinstance(message, Result):
                raise
            return self.codec.encode(_failure(message.task_id, exc.code, exc.message, step=message.step))

    def _send(self, identity: bytes, frame: bytes | bytearray) -> None:
        """Queue one message for a peer; the last step of the pass sends it (``_flush_outbox``)."""
        frames = self._outbox.get(identity)
        if frames is None:
            self._outbox[identity] = [frame]
        else:
            frames.append(frame)

    # -- step: send ------------------------------------------------------------------------------------------

    def _flush_outbox(self) -> None:
        """Send each peer its queued messages as one multipart message.

        A peer that cannot take them (gone: ROUTER_MANDATORY says unreachable; or over its high-water mark)
        is dropped: a handler is removed and the tasks just dispatched to it are routed again, a client is
        forgotten.
        Re-routing may queue more messages, hence the loop.
        """
        while self._outbox:
            identity, frames = self._outbox.popitem()
            dispatched = self._undelivered.pop(identity, [])
            error = self._deliver(identity, frames)
            if error is None:
                for task in dispatched:
                    task.inputs = NIL  # the handler has them now; free them here
            elif error == errno.EAGAIN and identity not in self.handlers.by_identity:
                # A client past broker.sndhwm (reading too slowly) is still there: keep knowing it. Durable
                # results stay in the mailbox; the client's periodic TaskQuery finds what it missed.
                log.warning(
                    "messages to a slow client dropped", peer=peer_name(identity), messages=len(frames)
                )
            else:
                self._drop_peer(identity, dispatched)

    def _deliver(self, identity: bytes, frames: list[bytes | bytearray]) -> int | None:
        """Send; None when sent, else the ZeroMQ errno (EHOSTUNREACH: gone; EAGAIN: past its high-water
        mark)."""
        sock = self._sock
        assert sock is not None
        try:
            send_frames(sock, [identity, *frames])
        except zmq.ZMQError as exc:
            reason = "unreachable" if exc.errno == errno.EHOSTUNREACH else str(exc)
            log.warning("send to peer failed", peer=peer_name(identity), reason=reason, messages=len(frames))
            return exc.errno or -1
        return None

    def _drop_peer(self, identity: bytes, dispatched: list[TaskRecord]) -> None:
        handler = self.handlers.get(identity)
        if handler is None:
            self.clients.pop(identity, None)
            return
        retry = [t for t in dispatched if t.handler is handler and self.tasks.get(t.task_id) is t]
        for task in retry:
            handler.release(task.task_id)
            task.handler = None
        self._remove_handler(handler, "handler unreachable")
        now = time.monotonic()
        for task in retry:
            self._route(task, now)


def _failure(task_id: str, code: str, message: str, *, step: int = 0, topic: str = "") -> Result:
    return Result(
        task_id=task_id,
        ok=False,
        step=step,
        error=ErrorInfo(code=code, message=message, step=step, topic=topic),
    )


async def run(settings: DLHubSettings) -> None:
    """Run one broker until SIGTERM or SIGINT."""
    collector: BrokerCollector | None = None
    if start_metrics_server(settings, "broker") is not None:
        collector = BrokerCollector()
        REGISTRY.register(collector)
    broker = Broker(
        bus=settings.bus,
        config=settings.broker,
        codec=Codec(max_message_bytes=settings.bus.max_message_bytes),
        metrics=collector,
        metrics_interval_s=settings.metrics.broker_update_interval_s,
    )
    broker.bind()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, broker.drain)
    await broker.serve()
