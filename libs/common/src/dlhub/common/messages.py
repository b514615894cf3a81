"""Every message that crosses the bus.

Messages are plain typed structs tagged by ``type``; they never encode themselves (``codec.Codec`` does). New
fields must be optional so that older peers keep decoding newer messages; unknown fields are ignored.

Values chosen by users (task inputs, parameters, outputs) travel as ``msgspec.Raw``: already-encoded msgpack
that the broker forwards without decoding, so routing cost does not grow with payload size.
"""

from __future__ import annotations

from typing import Final

import msgspec

NIL: Final = msgspec.Raw(b"\xc0")
EMPTY_MAP: Final = msgspec.Raw(b"\x80")


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of all bus messages."""


class Register(Message, tag="register"):
    """Handler -> broker: serve these topics with this many concurrent tasks.

    A topic ending in ``*`` is a prefix pattern (``servable/*`` serves every servable).
    """

    handler_id: str
    kind: str
    topics: list[str]
    capacity: int
    max_tasks_per_topic: int = 0
    """At most this many tasks of one exact topic at once (0: up to ``capacity``): a worker's fair share, so
    that one servable cannot hold all of its capacity while requests to others wait."""
    site: str = ""
    """Where a Task Manager (a worker) runs: a name its operator chose (``worker.site``), shown in /health;
    a step whose placement names a site goes only to handlers registered with it."""
    instance_id: str = ""
    """The operator's name for this process (``worker.instance_id``), stable across its restarts."""
    executors: list[str] = msgspec.field(default_factory=list)
    """What it can launch: ``local`` or ``parsl``, and the environment backends (``venv``, ``docker``)."""
    serves: list[str] = msgspec.field(default_factory=list)
    """The servable name patterns it serves (``*``, ``alice/*``), as configured; ``topics`` is what routes."""
    devices: list[str] = msgspec.field(default_factory=list)
    """The devices it offers its servables, ``kind:id`` (``gpu:0``, ``gpu:1``): what a servable's placement
    asks for by kind (``worker.devices``, or found by ``dlhub.worker.devices``)."""


class Registered(Message, tag="registered"):
    """Broker -> handler: registration accepted; heartbeat at this interval."""

    handler_id: str
    heartbeat_interval_s: float


class Unregister(Message, tag="unregister"):
    """Handler -> broker: leaving; fail nothing, it has already drained."""

    handler_id: str


class Draining(Message, tag="draining"):
    """Handler -> broker: dispatch me nothing more; results of the tasks I hold still come (graceful stop).
    An ``Unregister`` follows once they are done (or the grace period is over). The broker sends it back as
    its acknowledgement: every dispatch it sent before comes ahead of it on the connection."""

    handler_id: str


class Heartbeat(Message, tag="heartbeat"):
    """Either direction; any message also counts as a sign of life."""

    sender_id: str


class Reconnect(Message, tag="reconnect"):
    """Broker -> peer: you are unknown to me (e.g. I restarted); register again."""

    reason: str


class DeviceNeed(msgspec.Struct, frozen=True, array_like=True):
    """A servable needs ``count`` devices of ``kind`` (``gpu``) on the Task Manager that runs it."""

    kind: str
    count: int = 1


class Placement(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, cache_hash=True):
    """Where a servable step may run: its version's ``servable.placement`` (docs/task-managers.md).

    Frozen (hashable, the hash kept once computed): the broker keys its cache of eligible handlers on
    ``(topic, placement)``."""

    site: str = ""
    """Only Task Managers registered with this ``site`` ("" : any)."""
    devices: tuple[DeviceNeed, ...] = ()
    """Only Task Managers offering at least this many devices of each kind."""
    replicas: int = 0
    """Spread the topic's tasks over at most this many eligible Task Managers, always the same ones while
    they stay registered, so that only they keep its executors warm (0: every eligible one)."""


class RouteStep(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One step of a route: the topic to send to, the method to call and its keyword parameters."""

    topic: str
    method: str = "run"
    parameters: msgspec.Raw = msgspec.field(default_factory=lambda: EMPTY_MAP)
    package: str = ""
    """A servable step: the sha256 hex digest of its version's bundle, which a worker without the version's
    files fetches from the registry by that digest and verifies (docs/task-managers.md)."""
    placement: Placement | None = None
    """A servable step whose version declares a placement: the broker dispatches it only to handlers that
    meet it (None: any handler serving the topic)."""


class Submit(Message, tag="submit"):
    """Client -> broker: run ``inputs`` through ``route``; the broker replies with one ``Result``.

    With several steps the broker feeds each step's output to the next step (a server-side pipeline).
    """

    task_id: str
    route: list[RouteStep]
    inputs: msgspec.Raw = NIL
    timeout_s: float = 300.0
    notify_start: bool = False
    notify_queued: bool = False
    """Ask for a ``Queued`` reply when the task has to wait for a free handler: with ``notify_start`` the
    client then hears at once whether the broker accepted the task (Started or Queued) or refused it (a
    failed Result, e.g. ``queue_full``)."""
    require_handler: bool = False
    """Fail at once with ``no_handler`` when no handler serves the first step's topic right now, instead of
    waiting in the queue for one to register (a search query should answer 503, not wait for its deadline)."""
    durable: bool = False
    """Keep the final ``Result`` until the client acknowledges it (``Ack``), re-sending it to a client that
    comes back under the same identity (a restarted registry); for tasks whose outcome is stored."""


class Ack(Message, tag="ack"):
    """Client -> broker: the results of these durable tasks are stored; forget them."""

    task_ids: list[str]


class TaskQuery(Message, tag="task_query"):
    """Client -> broker: which of these tasks do you still hold (queued, running or an unacknowledged result)?

    The broker first re-sends every unacknowledged result it holds for the client (only those of
    ``task_ids`` when ``resend_all`` is false), then answers ``TaskStatus``; a task it does not know has no
    outcome coming."""

    request_id: str
    task_ids: list[str]
    resend_all: bool = True
    adopt: bool = False
    """The client takes ``task_ids`` over from the registry that submitted them (gone for good): the broker
    first re-addresses them to the client (a queued or running task's final ``Result``, and a held result),
    then re-sends and answers as above (the re-addressed held results are the client's now). A broker
    without this field answers without re-addressing: the tasks then end at their deadline."""


class TaskStatus(Message, tag="task_status"):
    """Broker -> client: the answer to ``TaskQuery``."""

    request_id: str
    broker_id: str
    known: list[str]
    notify_queued: bool = False
    """Ask for a ``Queued`` reply when the task has to wait for a free handler: with ``notify_start`` the
    client then hears at once whether the broker accepted the task (Started or Queued) or refused it (a
    failed Result, e.g. ``queue_full``)."""


class Dispatch(Message, tag="dispatch"):
    """Broker -> handler: run one step of a task."""

    task_id: str
    step: int
    topic: str
    method: str
    inputs: msgspec.Raw = NIL
    parameters: msgspec.Raw = EMPTY_MAP
    deadline_unix_s: float = 0.0
    package: str = ""
    """The step's ``RouteStep.package``: the digest of the version's bundle ("" when it has none)."""


class Started(Message, tag="started"):
    """Broker -> client: the task's first step was handed to a handler."""

    task_id: str
    handler_id: str


class Queued(Message, tag="queued"):
    """Broker -> client: the task was accepted and waits for a free handler (asked by ``notify_queued``)."""

    task_id: str


class Progress(Message, tag="progress"):
    """Handler -> broker -> client: a partial report of a running task (a build's states and log lines).

    Best effort and ordered per task; the broker forwards it only while the task is running on the handler
    that sends it. Never a substitute for the task's ``Result``."""

    task_id: str
    step: int = 0
    payload: msgspec.Raw = NIL


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A typed failure: ``code`` is a DLHub error code; ``exception_type`` the servable's own exception."""

    code: str
    message: str
    exception_type: str = ""
    traceback: str = ""
    step: int = -1
    topic: str = ""


class Timings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The paper's timings in milliseconds; each layer fills its own field."""

    inference_ms: float = 0.0
    invocation_ms: float = 0.0
    queue_ms: float = 0.0
    request_ms: float = 0.0


class Result(Message, tag="result"):
    """Handler -> broker -> client: outcome of one step (to the broker) or the whole route (to the client)."""

    task_id: str
    ok: bool
    output: msgspec.Raw = NIL
    error: ErrorInfo | None = None
    timings: Timings = msgspec.field(default_factory=Timings)
    step: int = 0
    handler_id: str = ""


class StatsRequest(Message, tag="stats_request"):
    """Client -> broker: report registered handlers and queue depth (used by health checks)."""

    request_id: str


class HandlerInfo(msgspec.Struct, kw_only=True):
    handler_id: str
    kind: str
    topics: list[str]
    capacity: int
    inflight: int
    draining: bool = False
    """The handler said ``Draining``: it finishes what it holds and is dispatched nothing more."""
    site: str = ""
    instance_id: str = ""
    executors: list[str] = msgspec.field(default_factory=list)
    serves: list[str] = msgspec.field(default_factory=list)
    devices: list[str] = msgspec.field(default_factory=list)


class StatsReply(Message, tag="stats_reply"):
    request_id: str
    handlers: list[HandlerInfo]
    queued: int
    inflight: int


AnyMessage = (
    Register
    | Registered
    | Unregister
    | Draining
    | Heartbeat
    | Reconnect
    | Submit
    | Dispatch
    | Started
    | Queued
    | Progress
    | Result
    | StatsRequest
    | StatsReply
    | Ack
    | TaskQuery
    | TaskStatus
)
