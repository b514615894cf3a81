"""Running servables and pipelines through the broker.

Synchronous runs are the latency-critical path: cached version lookup, one msgspec decode of the body, one
``BusClient.call``, one JSON encode of the answer, and no database write. Asynchronous runs get a task record
that moves pending -> running (when the broker reports the start) -> completed | failed.

Results of deterministic servables are memoized (``memo.py``): a hit answers before the bus is touched
(``"cached": true``, inference and invocation time 0); ``"memoize": false`` skips the lookup but still
stores the fresh result.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from libs.common.codec import Codec
from libs.common.config import DLHubSettings
from libs.common.errors import BrokerUnavailable, InvalidMessage, Unauthorized, ValidationFailed
from libs.common.ids import new_id, servable_topic
from libs.common.logging import get_logger
from libs.common.messages import Result, RouteStep, Started, Timings
from services.registry.argtypes import UNCHECKED, check_run_inputs
from services.registry.auth import Caller
from services.registry.background import BackgroundTasks
from services.registry.memo import Memo, MemoStep
from services.registry.ports import Bus
from services.registry.servables import Servables, deprecation_warning, parse_servable_ref
from services.registry.store import TaskRecord, VersionRecord
from services.registry.tasks import TaskTable, error_dict, output_json, timings_dict

log = get_logger(__name__)

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
MAX_PIPELINE_STEPS = 64


class RunBody(msgspec.Struct, kw_only=True):
    inputs: Any = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    method: str = "run"
    asynchronous: bool = False
    timeout_s: PositiveFloat | None = None
    memoize: bool = True


class PipelineStepBody(msgspec.Struct, kw_only=True):
    servable: str
    method: str = "run"
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class PipelineBody(msgspec.Struct, kw_only=True):
    steps: list[PipelineStepBody]
    inputs: Any = None
    asynchronous: bool = False
    timeout_s: PositiveFloat | None = None
    memoize: bool = True


@dataclass(frozen=True, slots=True)
class Submission:
    """A resolved run: where it goes and what it carries, ready for the bus."""

    route: list[RouteStep]
    inputs: msgspec.Raw
    timeout_s: float
    servable: str
    memo_key: bytes | None = None
    """Key of the result in the memo (None: not memoizable); the result is stored under it on success."""
    memo_read: bool = True
    """Whether to answer from the memo (false: the request bypasses it, the fresh result is still stored)."""
    warnings: tuple[str, ...] = ()
    """Human-readable warnings for the caller (one per deprecated version on the route)."""
    deprecated_at_ms: int = 0
    """The earliest deprecation time among the route's versions (0: none is deprecated)."""


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    task_id: str
    result: Result
    servable: str
    cached: bool = False
    output: bytes | None = None
    """The output as JSON when already encoded (a memo hit, or a result just stored in the memo)."""
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
    ) -> None:
        self._settings = settings
        self._memo = memo
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
        )

    async def prepare_run(
        self, caller: Caller, owner: str, name: str, version: int | None, body: RunBody
    ) -> Submission:
        self.check_may_run(caller)
        record = await self._servables.runnable(caller, owner, name, version)
        step = self._step(record, body.method, body.parameters, "method", body.inputs)
        return Submission(
            route=[step],
            inputs=self._codec.encode_value(body.inputs),
            timeout_s=self._timeout(body.timeout_s),
            servable=record.label,
            memo_key=self._memo_key([MemoStep(record, body.method, body.parameters)], body.inputs),
            memo_read=body.memoize,
            **_deprecations([record]),
        )

    async def prepare_pipeline(self, caller: Caller, body: PipelineBody) -> Submission:
        self.check_may_run(caller)
        if not body.steps:
            raise ValidationFailed("a pipeline needs at least one step", field="steps")
        if len(body.steps) > MAX_PIPELINE_STEPS:
            raise ValidationFailed(f"a pipeline has at most {MAX_PIPELINE_STEPS} steps", field="steps")
        route: list[RouteStep] = []
        labels: list[str] = []
        records: list[VersionRecord] = []
        memo_steps: list[MemoStep] = []
        for index, step in enumerate(body.steps):
            owner, name, version = parse_servable_ref(step.servable, f"steps[{index}].servable")
            record = await self._servables.runnable(caller, owner, name, version)
            inputs = body.inputs if index == 0 else UNCHECKED
            route.append(self._step(record, step.method, step.parameters, f"steps[{index}].method", inputs))
            labels.append(record.label)
            records.append(record)
            memo_steps.append(MemoStep(record, step.method, step.parameters))
        return Submission(
            route=route,
            inputs=self._codec.encode_value(body.inputs),
            timeout_s=self._timeout(body.timeout_s),
            servable=",".join(labels),
            memo_key=self._memo_key(memo_steps, body.inputs),
            memo_read=body.memoize,
            **_deprecations(records),
        )

    def _memo_key(self, steps: list[MemoStep], inputs: Any) -> bytes | None:
        return None if self._memo is None else self._memo.key(steps, inputs)

    async def _memo_lookup(self, submission: Submission) -> bytes | None:
        if self._memo is None or submission.memo_key is None or not submission.memo_read:
            return None
        return await self._memo.get(submission.memo_key)

    def _memo_store(self, key: bytes, output: bytes) -> None:
        if self._memo is not None:
            self._memo.put_local(key, output)
            if self._memo.shared:
                self._background.spawn(self._memo.put_shared(key, output), name="memo write")

    async def run_sync(self, submission: Submission) -> SyncOutcome:
        key = submission.memo_key
        cached = await self._memo_lookup(submission)
        if cached is not None:
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
        if not result.ok and result.error is not None and result.error.code == BrokerUnavailable.code:
            raise BrokerUnavailable(result.error.message)
        output: bytes | None = None
        if result.ok and key is not None:
            try:
                output = output_json(self._codec, result)
            except InvalidMessage:
                output = None  # reported as a failure by sync_response_body; never memoized
            else:
                self._memo_store(key, output)
        return SyncOutcome(
            task_id=result.task_id,
            result=result,
            servable=submission.servable,
            output=output,
            warnings=submission.warnings,
        )

    def sync_response_body(self, outcome: SyncOutcome, started: float) -> bytes:
        """Encode the 200 body; ``request_ms`` is measured up to this point."""
        result = outcome.result
        body: dict[str, Any] = {"task_id": outcome.task_id}
        if outcome.output is not None:
            body["state"] = "completed"
            body["output"] = msgspec.Raw(outcome.output)
        elif result.ok:
            try:
                body["state"] = "completed"
                body["output"] = msgspec.Raw(output_json(self._codec, result))
            except InvalidMessage as exc:
                body["state"] = "failed"
                body["error"] = {"type": exc.code, "message": exc.message}
        else:
            body["state"] = "failed"
            body["error"] = error_dict(result.error)
        body["timings"] = timings_dict(result.timings, (time.perf_counter() - started) * 1000.0)
        body["servable"] = outcome.servable
        body["cached"] = outcome.cached
        if outcome.warnings:
            body["warnings"] = list(outcome.warnings)
        return self._json.encode(body)

    async def submit_async(self, caller: Caller, submission: Submission) -> TaskRecord:
        """Create the task and run it in the background; a memo hit returns the task already completed."""
        started = time.perf_counter()
        cached = await self._memo_lookup(submission)
        task = await self._tasks.create(
            task_id=new_id(), kind="run", servable=submission.servable, submitter=caller.user
        )
        if cached is not None:
            request_ms = (time.perf_counter() - started) * 1000.0
            return await self._tasks.complete(
                task, output=cached, timings=timings_dict(Timings(), request_ms)
            )
        self._background.spawn(self._run_async(task, submission), name=f"run {task.task_id}")
        return task

    async def _run_async(self, task: TaskRecord, submission: Submission) -> None:
        started = time.perf_counter()
        marking: list[asyncio.Task[TaskRecord]] = []

        def on_started(_: Started) -> None:
            marking.append(asyncio.ensure_future(self._tasks.mark_running(task)))

        try:
            result = await self._bus.call(
                submission.route,
                submission.inputs,
                timeout_s=submission.timeout_s,
                task_id=task.task_id,
                on_started=on_started,
            )
        except Exception as exc:
            code = getattr(exc, "code", "dlhub_error")
            log.warning("asynchronous run failed to submit", task_id=task.task_id, error_type=code)
            await asyncio.gather(*marking, return_exceptions=True)
            await self._tasks.fail(task, error={"type": code, "message": str(exc) or type(exc).__name__})
            return
        # The "running" write must land before the final state so it cannot overwrite it.
        await asyncio.gather(*marking, return_exceptions=True)
        task = await self._tasks.finish_run(task, result, request_ms=(time.perf_counter() - started) * 1000.0)
        if submission.memo_key is not None and task.state == "completed" and task.output_json is not None:
            self._memo_store(submission.memo_key, task.output_json)


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
