"""Running servables and pipelines through the broker.

Synchronous runs are the latency-critical path: cached version lookup, one msgspec decode of the body, one
``BusClient.call``, one JSON encode of the answer, and no database write. Asynchronous runs get a task record
that moves pending -> running (when the broker reports the start) -> completed | failed.

A task the broker (or the bus client) refuses before accepting it (``queue_full``, ``shutting_down``, and a
broker that cannot be reached) is answered 503 with ``Retry-After``: nothing ran, so the caller may submit
again. An asynchronous submission waits for the broker's word (Started, Queued or the refusal) before its 202.

Results of deterministic servables are memoized (``memo.py``): a hit answers before the bus is touched
(``"cached": true``, inference and invocation time 0); ``"memoize": false`` skips the lookup but still
stores the fresh result. The key hashes the whole input, so it is computed only when needed: before the run
to read the memo, or (``"memoize": false``) once the response has gone out, to store the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from dlhub.common import messages
from dlhub.common.codec import Codec, encode_body, to_json
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import (
    BrokerUnavailable,
    InvalidMessage,
    QueueFull,
    ShuttingDown,
    Unauthorized,
    ValidationFailed,
    error_class,
)
from dlhub.common.ids import new_id, servable_topic
from dlhub.common.logging import get_logger
from dlhub.common.messages import ErrorInfo, Queued, Result, RouteStep, Started
from dlhub.registry.argtypes import UNCHECKED, check_run_inputs
from dlhub.registry.auth import Caller
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.blobs import resolve_file_inputs
from dlhub.registry.memo import Memo, MemoStep, is_deterministic
from dlhub.registry.metrics import RegistryMetrics
from dlhub.registry.outcomes import TaskError, Timings, error_dict, task_error, timings_dict
from dlhub.registry.pipelines import (
    MAX_PIPELINE_STEPS,
    SERVABLE_REF_PATTERN,
    StepSpec,
    check_step_count,
    is_pipeline,
    resolve_step,
    stored_steps,
)
from dlhub.registry.placement import placement_of
from dlhub.registry.ports import Bus
from dlhub.registry.servables import Servables, deprecation_warning
from dlhub.registry.store import TaskRecord, VersionRecord
from dlhub.registry.tasks import TaskTable

log = get_logger(__name__)

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]

REFUSED_CODES = frozenset({QueueFull.code, ShuttingDown.code})
"""Failures of a task refused before its first step was accepted: answered 503, safe to submit again."""


def refusal(error: ErrorInfo | None) -> BrokerUnavailable | QueueFull | ShuttingDown | None:
    """The 503 error to raise for a task that was refused (or lost by an unreachable broker), else None."""
    if error is None:
        return None
    if error.code == BrokerUnavailable.code or (error.code in REFUSED_CODES and error.step <= 0):
        cls = error_class(error.code)
        assert issubclass(cls, BrokerUnavailable | QueueFull | ShuttingDown)
        return cls(error.message)
    return None


Inputs = Annotated[Any, msgspec.Meta(description="Any JSON value (msgpack: NumPy arrays as the extension)")]
Memoize = Annotated[
    bool, msgspec.Meta(description="false: skip the result cache lookup (the fresh result is still stored)")
]


class RunRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST .../run``; ``inputs`` is required (``null`` is a value)."""

    inputs: Inputs
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    method: str = "run"
    asynchronous: bool = False
    timeout_s: PositiveFloat | None = None
    memoize: Memoize = True


class PipelineStep(msgspec.Struct, kw_only=True):
    servable: Annotated[
        str,
        msgspec.Meta(
            description="owner/name or owner/name@version",
            extra_json_schema={"pattern": SERVABLE_REF_PATTERN},  # the schema's; parse_servable_ref checks
        ),
    ]
    method: str = "run"
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class PipelineRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST /pipelines/run``: each step's output feeds the next."""

    steps: Annotated[
        list[PipelineStep], msgspec.Meta(extra_json_schema={"minItems": 1, "maxItems": MAX_PIPELINE_STEPS})
    ]
    inputs: Inputs = None
    asynchronous: bool = False
    timeout_s: PositiveFloat | None = None
    memoize: Memoize = True


Warnings = Annotated[
    list[str],
    msgspec.Meta(
        description="Present when a version run is deprecated: '<owner>/<name>@<v> is deprecated: <reason>'"
    ),
]


class RunResult(msgspec.Struct, kw_only=True):
    """The 200 answer of a synchronous run (JSON, or msgpack when asked for)."""

    task_id: str
    state: Literal["completed", "failed"]
    output: msgspec.Raw | UnsetType = UNSET
    error: TaskError | UnsetType = UNSET
    timings: Timings
    servable: Annotated[
        str,
        msgspec.Meta(
            description="owner/name@version (a published pipeline's own; comma-separated steps for "
            "/pipelines/run)"
        ),
    ]
    cached: Annotated[bool, msgspec.Meta(description="answered from the result cache (memoization)")]
    warnings: Warnings | UnsetType = UNSET


@dataclass(slots=True)
class MemoPlan:
    """What a submission's memo key covers; ``key()`` computes it once (None: not memoizable after all)."""

    memo: Memo
    steps: list[MemoStep]
    inputs: Any
    _key: bytes | None = None
    _computed: bool = False

    def key(self) -> bytes | None:
        if not self._computed:
            self._key = self.memo.key(self.steps, self.inputs)
            self._computed = True
            self.inputs = None  # only the key was needed
        return self._key


@dataclass(frozen=True, slots=True)
class Submission:
    """A resolved run: where it goes and what it carries, ready for the bus."""

    route: list[RouteStep]
    inputs: msgspec.Raw
    timeout_s: float
    servable: str
    memo: MemoPlan | None = None
    """How to key the result in the memo (None: not memoizable); the result is stored under it on success."""
    memo_read: bool = True
    """Whether to answer from the memo (false: the request bypasses it, the fresh result is still stored)."""
    warnings: tuple[str, ...] = ()
    """Human-readable warnings for the caller (one per deprecated version on the route)."""
    deprecated_at_ms: int = 0
    """The earliest deprecation time among the route's versions (0: none is deprecated)."""


@dataclass(slots=True)
class _Expansion:
    """Steps resolved into a broker route, with the versions they run (for memo keys and warnings)."""

    route: list[RouteStep] = field(default_factory=list)
    records: list[VersionRecord] = field(default_factory=list)
    memo_steps: list[MemoStep] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    task_id: str
    result: Result
    servable: str
    cached: bool = False
    output: bytes | None = None
    """A memo hit's output, msgpack as the worker encoded it (``result`` is then empty)."""
    warnings: tuple[str, ...] = ()


class Runs:
    def __init__(
        self,
        *,
        settings: DLHubSettings,
        bus: Bus,
        codec: Codec,
        servables: Servables,
        tasks: TaskTable,
        background: BackgroundTasks,
        memo: Memo | None = None,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._memo = memo
        self._metrics = metrics or RegistryMetrics(enabled=False)
        self._bus = bus
        self._codec = codec
        self._servables = servables
        self._tasks = tasks
        self._background = background
        self._json = msgspec.json.Encoder()

    def check_may_run(self, caller: Caller) -> None:
        if caller.user is None and not self._settings.registry.allow_anonymous_run:
            raise Unauthorized("running servables needs a token on this registry")

    def _timeout(self, requested: float | None) -> float:
        limit = self._settings.registry.sync_timeout_s
        return limit if requested is None else min(requested, limit)

    def _step(
        self,
        record: VersionRecord,
        method: str,
        parameters: dict[str, Any],
        field: str,
        inputs: Any = UNCHECKED,
    ) -> RouteStep:
        """Resolve one route step; ``inputs`` (first step only) are checked against the declared type."""
        methods = (record.metadata.get("servable") or {}).get("methods") or {}
        if method not in methods:
            raise ValidationFailed(f"{record.label} has no method {method!r}", field=field)
        if inputs is not UNCHECKED:
            check_run_inputs(record, method, inputs)  # argtypes.py: 400 naming the path, before queueing
        return RouteStep(
            topic=servable_topic(record.owner, record.name, record.version),
            method=method,
            parameters=self._codec.encode_value(parameters),
            package=record.bundle_sha256,
            placement=placement_of(record.metadata),
        )

    async def prepare_run(
        self, caller: Caller, owner: str, name: str, version: int | None, body: RunRequest
    ) -> Submission:
        """Validate a run of ``owner/name`` (``check_may_run`` has passed) into a Submission."""
        record = await self._servables.runnable(caller, owner, name, version)
        if is_pipeline(record.metadata):
            return await self._prepare_published_pipeline(caller, record, body)
        step = self._step(record, body.method, body.parameters, "method", body.inputs)
        files = await resolve_file_inputs(self._settings, caller, record, body.method, body.inputs)
        memo_steps = [MemoStep(record, body.method, body.parameters)]
        return Submission(
            route=[step],
            inputs=self._codec.encode_value(files.inputs),
            timeout_s=self._timeout(body.timeout_s),
            servable=record.label,
            memo=self._memo_plan(memo_steps, body.inputs) if files.memoizable else None,
            memo_read=body.memoize,
            **_deprecations([record]),
        )

    async def prepare_pipeline(self, caller: Caller, body: PipelineRequest) -> Submission:
        """Validate an ad-hoc pipeline (``check_may_run`` has passed) into a Submission."""
        steps = [StepSpec(s.servable, s.method, s.parameters) for s in body.steps]
        expansion = await self._expand(caller, steps, body.inputs, "steps")
        first = expansion.records[0]
        files = await resolve_file_inputs(self._settings, caller, first, steps[0].method, body.inputs)
        return Submission(
            route=expansion.route,
            inputs=self._codec.encode_value(files.inputs),
            timeout_s=self._timeout(body.timeout_s),
            servable=",".join(r.label for r in expansion.records),
            memo=self._memo_plan(expansion.memo_steps, body.inputs) if files.memoizable else None,
            memo_read=body.memoize,
            **_deprecations(expansion.records),
        )

    async def _prepare_published_pipeline(
        self, caller: Caller, record: VersionRecord, body: RunRequest
    ) -> Submission:
        """A run of a published pipeline: its pinned steps expanded into one route, like /pipelines/run."""
        if body.method != "run":
            raise ValidationFailed(f"{record.label} is a pipeline; its only method is 'run'", field="method")
        if body.parameters:
            raise ValidationFailed(
                f"{record.label} is a pipeline; parameters are set on its steps when it is published",
                field="parameters",
            )
        steps = stored_steps(record.metadata)
        expansion = await self._expand(caller, steps, body.inputs, "servable.steps")
        files = await resolve_file_inputs(
            self._settings, caller, expansion.records[0], steps[0].method, body.inputs
        )
        deterministic = is_deterministic(record, "run") and files.memoizable
        return Submission(
            route=expansion.route,
            inputs=self._codec.encode_value(files.inputs),
            timeout_s=self._timeout(body.timeout_s),
            servable=record.label,
            memo=self._memo_plan(expansion.memo_steps, body.inputs) if deterministic else None,
            memo_read=body.memoize,
            **_deprecations([record, *expansion.records]),
        )

    async def _expand(self, caller: Caller, steps: Sequence[StepSpec], inputs: Any, field: str) -> _Expansion:
        """Resolve every step (as ``caller``) into the route; only the first step's inputs are checked."""
        check_step_count(len(steps), field)
        expansion = _Expansion()
        for index, step in enumerate(steps):
            step_field = f"{field}[{index}]"
            record = await resolve_step(
                self._servables, caller, step.servable, f"{step_field}.servable", index
            )
            if is_pipeline(record.metadata):
                raise ValidationFailed(
                    f"step {index} ({record.label}) is a pipeline; pipelines cannot be nested",
                    field=f"{step_field}.servable",
                )
            checked = inputs if index == 0 else UNCHECKED
            route_step = self._step(record, step.method, step.parameters, f"{step_field}.method", checked)
            expansion.route.append(route_step)
            expansion.records.append(record)
            expansion.memo_steps.append(MemoStep(record, step.method, step.parameters))
        return expansion

    def _memo_plan(self, steps: list[MemoStep], inputs: Any) -> MemoPlan | None:
        if self._memo is None or not self._memo.enabled:
            return None
        return MemoPlan(self._memo, steps, inputs)

    async def _memo_lookup(self, submission: Submission) -> bytes | None:
        if self._memo is None or submission.memo is None or not submission.memo_read:
            return None
        key = submission.memo.key()
        if key is None:
            return None
        cached = await self._memo.get(key)
        self._metrics.memo(cached is not None)
        return cached

    def _memo_store(self, key: bytes, output: bytes) -> None:
        if self._memo is not None:
            self._memo.put_local(key, output)
            if self._memo.shared:
                self._background.spawn(self._memo.put_shared(key, output), name="memo write")

    async def run_sync(self, submission: Submission) -> SyncOutcome:
        cached = await self._memo_lookup(submission)
        if cached is not None:
            self._metrics.outcome("sync", True)
            task_id = new_id()
            return SyncOutcome(
                task_id=task_id,
                result=Result(task_id=task_id, ok=True),
                servable=submission.servable,
                cached=True,
                output=cached,
                warnings=submission.warnings,
            )
        result = await self._bus.call(submission.route, submission.inputs, timeout_s=submission.timeout_s)
        self._metrics.outcome("sync", result.ok, result.error.code if result.error is not None else None)
        if not result.ok and (refused := refusal(result.error)) is not None:
            raise refused
        if result.ok and submission.memo is not None:
            # After the response is written when the key is still to be computed (a bypassed lookup).
            asyncio.get_running_loop().call_soon(self._memo_store_result, submission.memo, result)
        return SyncOutcome(
            task_id=result.task_id, result=result, servable=submission.servable, warnings=submission.warnings
        )

    def _memo_store_result(self, plan: MemoPlan, result: Result) -> None:
        """Memoize the worker's msgpack output as it came: no conversion on the request path, and a hit
        answers a msgpack request without any (a JSON one converts the usually small output)."""
        if self._memo is None or len(result.output) > self._memo.max_entry_bytes:
            return
        key = plan.key()
        if key is not None:
            self._memo_store(key, bytes(result.output))

    def sync_response_body(self, outcome: SyncOutcome, started: float, *, msgpack: bool = False) -> bytes:
        """Encode the 200 body as JSON or msgpack; ``request_ms`` is measured up to this point."""
        result = outcome.result
        output = msgspec.Raw(outcome.output) if outcome.output is not None else result.output
        answer = RunResult(
            task_id=outcome.task_id,
            state="completed" if result.ok else "failed",
            timings=Timings(
                inference_ms=result.timings.inference_ms,
                invocation_ms=result.timings.invocation_ms,
                queue_ms=result.timings.queue_ms,
                request_ms=0.0,
            ),
            servable=outcome.servable,
            cached=outcome.cached,
            warnings=list(outcome.warnings) if outcome.warnings else UNSET,
        )
        if not result.ok:
            answer.error = task_error(error_dict(result.error))
        elif msgpack:
            answer.output = output  # the worker's msgpack as it came, arrays as the extension type
        else:
            try:
                answer.output = msgspec.Raw(to_json(self._codec.decode_value(output)))
            except InvalidMessage as exc:
                answer.state = "failed"
                answer.error = TaskError(type=exc.code, message=exc.message)
        answer.timings.request_ms = (time.perf_counter() - started) * 1000.0
        return encode_body(answer) if msgpack else self._json.encode(answer)

    async def submit_async(self, caller: Caller, submission: Submission) -> TaskRecord:
        """Create the task and run it in the background once the broker accepted it (a refusal raises its
        503 error; the task record is then failed with it); a memo hit returns the task already completed."""
        started = time.perf_counter()
        cached = await self._memo_lookup(submission)
        task = await self._tasks.create(
            task_id=new_id(),
            kind="run",
            servable=submission.servable,
            submitter=caller.user,
            timeout_s=submission.timeout_s,
        )
        if cached is not None:
            self._metrics.outcome("async", True)
            request_ms = (time.perf_counter() - started) * 1000.0
            output = to_json(self._codec.decode_value(cached))
            timings = timings_dict(messages.Timings(), request_ms)
            return await self._tasks.complete(task, output=output, timings=timings)
        self._tasks.driving.add(task.task_id)
        accepted: asyncio.Future[ErrorInfo | None] = asyncio.get_running_loop().create_future()
        self._background.spawn(self._run_async(task, submission, accepted), name=f"run {task.task_id}")
        error = await accepted
        if (refused := refusal(error)) is not None:
            raise refused
        return task

    async def _run_async(
        self, task: TaskRecord, submission: Submission, accepted: asyncio.Future[ErrorInfo | None]
    ) -> None:
        try:
            await self._drive_async(task, submission, accepted)
        finally:
            self._tasks.driving.discard(task.task_id)
            if not accepted.done():  # cancelled before the broker answered: the submitter must not hang
                accepted.set_result(None)

    async def _drive_async(
        self, task: TaskRecord, submission: Submission, accepted: asyncio.Future[ErrorInfo | None]
    ) -> None:
        """Run the task; ``accepted`` is settled when the broker starts or queues it (None) or answers
        first with its final failure (that error)."""
        started = time.perf_counter()
        marking: list[asyncio.Task[TaskRecord]] = []

        def on_started(_: Started) -> None:
            if not accepted.done():
                accepted.set_result(None)
            marking.append(asyncio.ensure_future(self._tasks.mark_running(task)))

        def on_queued(_: Queued) -> None:
            if not accepted.done():
                accepted.set_result(None)

        result: Result | None = None
        try:
            # Durable: the broker keeps the result until it is acknowledged below, after the store write, so
            # a registry killed in between gets it again when it restarts (recovery.py).
            result = await self._bus.call(
                submission.route,
                submission.inputs,
                timeout_s=submission.timeout_s,
                task_id=task.task_id,
                on_started=on_started,
                on_queued=on_queued,
                durable=True,
            )
        except Exception as exc:
            code = getattr(exc, "code", "dlhub_error")
            log.warning("asynchronous run failed to submit", task_id=task.task_id, error_type=code)
            self._metrics.outcome("async", False, code)
            await asyncio.gather(*marking, return_exceptions=True)
            error = {"type": code, "message": str(exc) or type(exc).__name__}
            await self._tasks.fail(task, error=error, as_owner=True)
            return
        finally:
            if not accepted.done():  # no Started or Queued came first: the result is the broker's answer
                accepted.set_result(None if result is None or result.ok else result.error)
        # The "running" write must land before the final state (it would be refused after it anyway).
        await asyncio.gather(*marking, return_exceptions=True)
        request_ms = (time.perf_counter() - started) * 1000.0
        task = await self._tasks.finish_run(task, result, request_ms=request_ms, as_owner=True)
        if self._tasks.taken_over(task):  # its new owner gets the result from the broker, so no ack
            return
        self._bus.ack(task.task_id)
        self._metrics.outcome("async", result.ok, result.error.code if result.error is not None else None)
        if submission.memo is not None and task.state == "completed":
            self._memo_store_result(submission.memo, result)


def _deprecations(records: list[VersionRecord]) -> dict[str, Any]:
    """The ``warnings`` and ``deprecated_at_ms`` of a Submission routed through ``records``."""
    deprecated = [r for r in records if r.deprecated]
    if not deprecated:
        return {}
    seen: dict[str, None] = {}
    for record in deprecated:
        seen[deprecation_warning(record)] = None
    times = [r.deprecated_at_ms for r in deprecated if r.deprecated_at_ms]
    return {"warnings": tuple(seen), "deprecated_at_ms": min(times) if times else 0}
