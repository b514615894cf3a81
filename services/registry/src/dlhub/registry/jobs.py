"""Dataset jobs: a servable (or pipeline) applied to every row of a dataset's tabular file.

``POST .../apply`` checks the request (the dataset, the servable, the method, the file, the columns) and
answers 202 with a task of kind ``job``; a background coroutine then drives it:

- Rows are read forward from the stored package (``dataset_rows``) in chunks of ``batch_rows``; at most
  ``registry.job_max_inflight_batches`` chunks are awaited at once. Each call goes the normal way, the
  same route, type check and file handling as ``POST .../run`` (``Runs.prepare_run``), through the broker
  to a worker. A refusal (``queue_full``, ``shutting_down``, ``broker_unavailable``) is retried after
  ``RETRY_AFTER_S`` for up to ``registry.job_batch_timeout_s``, then ends the job with it.
- How a row becomes an input follows the method's declared input type (``input_mapping``): a call carries
  a batch of rows (a 2-D ndarray or a list of lists/dicts) or one row (a dict, a vector, or one value).
- A call that fails (the servable raised, a row of the wrong type, the wrong number of outputs) is split in
  two and each half sent again, down to the single row, whose failure is recorded (index, error type,
  message, exception type); every other row still gets its output.
- Results are appended in row order to ``<data_dir>/jobs/<task id>.jsonl`` (one line per row: ``index``,
  ``output``, ``error``) as chunks complete, so a cancelled or failed job keeps what it did
  (``GET /tasks/{id}/results``). Progress (``done``, ``total``, ``failed``) is written to the task every
  ``PROGRESS_INTERVAL_S``; each write also moves the task's deadline to ``job_batch_timeout_s`` plus the
  grace ahead, so the reaper ends the job of a registry that died (``recovery.py``).
- Done, the results file is published as a new dataset version owned by the caller, linked to both inputs
  (``dlhub.derived_from``: the dataset, ``IsDerivedFrom``; ``dlhub.generated_by``: the servable,
  ``IsCompiledBy``), through the normal publish and build path; the task completes once it is ready.

A registry that restarts does not resume its jobs: ``fail_orphans`` ends them ``registry_restarted``, their
results file kept. Cancelling (``cancel``) stops a job between calls and ends it ``failed`` with
``error.type`` ``cancelled``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import io
import tarfile
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal

import msgspec

from dlhub.common.codec import Codec, to_json
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import (
    BuildFailed,
    Conflict,
    DeadlineExceeded,
    DLHubError,
    InvalidMessage,
    NotFound,
    RegistryRestarted,
    TaskCancelled,
    Unauthorized,
    ValidationFailed,
)
from dlhub.common.ids import NAME_RE, new_id
from dlhub.common.logging import get_logger
from dlhub.common.messages import Result
from dlhub.registry.auth import Caller
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.dataset_rows import Row, RowReader, tabular_format
from dlhub.registry.datasets import is_dataset
from dlhub.registry.outcomes import error_dict
from dlhub.registry.package_files import FileEntry, IndexedPackage, PackageFiles
from dlhub.registry.pipelines import SERVABLE_REF_PATTERN, parse_servable_ref
from dlhub.registry.ports import Bus
from dlhub.registry.runs import RunRequest, Runs, refusal
from dlhub.registry.servables import Servables
from dlhub.registry.store import OPEN_TASK_STATES, TaskRecord, VersionRecord
from dlhub.registry.tasks import TaskTable

log = get_logger(__name__)

RESULTS_FILE: Final = "results.jsonl"
PROGRESS_INTERVAL_S: Final = 0.25
RETRY_AFTER_S: Final = 1.0
ROW_MODE_CONCURRENCY: Final = 32
"""Calls of one row each that one job awaits at once (row mode)."""
BUILD_POLL_S: Final = 0.25
DEFAULT_BATCH_ROWS: Final = 500

JobMode = Literal["batch", "row"]
RowShape = Literal["dict", "list", "value"]
_VECTOR_TYPES: Final = frozenset({"list", "ndarray", "tuple"})
_SCALAR_TYPES: Final = frozenset({"float", "integer", "number", "string", "boolean", "complex"})


class ApplyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST .../apply``: what to run over the dataset, and how."""

    servable: Annotated[
        str,
        msgspec.Meta(
            description="owner/name[@version] of a servable or pipeline",
            extra_json_schema={"pattern": SERVABLE_REF_PATTERN},
        ),
    ]
    method: str = "run"
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    file: Annotated[
        str | None,
        msgspec.Meta(description="the tabular file (CSV, TSV, JSON lines); default: the dataset's only one"),
    ] = None
    columns: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1)]],
            msgspec.Meta(max_length=1024, description="the columns each row passes, in order; default: all"),
        ]
        | None
    ) = None
    mode: Annotated[
        JobMode | None,
        msgspec.Meta(description="batch: a call takes a list of rows; row: one row. Default: by input type"),
    ] = None
    batch_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_BATCH_ROWS
    output_name: Annotated[
        str | None, msgspec.Meta(description="name of the output dataset; default <dataset>-<servable>")
    ] = None
    visible_to: Annotated[
        list[str] | None, msgspec.Meta(description="who may see the output dataset; default the caller only")
    ] = None


@dataclass(frozen=True, slots=True)
class Mapping:
    mode: JobMode
    shape: RowShape


def input_mapping(input_type: Any, requested: JobMode | None, columns: int) -> Mapping:
    """How rows become inputs for a method declaring ``input_type`` (docs/api.md, Dataset jobs)."""
    declared = input_type if isinstance(input_type, dict) else {}
    kind = str(declared.get("type", "")).strip().lower()
    item = declared.get("item_type")
    item_kind = str(item.get("type", "")).strip().lower() if isinstance(item, dict) else ""
    shape = declared.get("shape")
    matrix = kind == "ndarray" and isinstance(shape, list) and len(shape) == 2
    if matrix or (kind == "list" and item_kind in _VECTOR_TYPES):
        derived = Mapping("batch", "list")
    elif kind == "list" and item_kind == "dict":
        derived = Mapping("batch", "dict")
    elif kind in _VECTOR_TYPES:
        derived = Mapping("row", "list")
    elif kind == "dict":
        derived = Mapping("row", "dict")
    elif kind in _SCALAR_TYPES:
        if columns != 1:
            raise ValidationFailed(
                f"the method takes one {kind}: select exactly one column (got {columns})", field="columns"
            )
        derived = Mapping("row", "value")
    else:  # python object and undeclared types: any shape works, so the caller may pick the mode
        return Mapping(requested or "row", "dict")
    if requested is not None and requested != derived.mode:
        takes = "a batch of rows" if derived.mode == "batch" else "one row"
        raise ValidationFailed(f"the method's input type {kind!r} takes {takes} per call", field="mode")
    return derived


@dataclass(slots=True)
class JobPlan:
    caller: Caller
    dataset: VersionRecord
    servable: VersionRecord
    method: str
    parameters: dict[str, Any]
    package: IndexedPackage
    entry: FileEntry
    fmt: Literal["csv", "tsv", "jsonl"]
    columns: list[str]
    mapping: Mapping
    batch_rows: int
    output_name: str
    visible_to: list[str]
    calls: asyncio.Semaphore

    def shape(self, row: dict[str, Any]) -> Any:
        if self.mapping.shape == "dict":
            return {c: row.get(c) for c in self.columns}
        if self.mapping.shape == "list":
            return [row.get(c) for c in self.columns]
        return row.get(self.columns[0])

    def rows(self) -> Generator[bytes]:
        """The file's bytes in chunks (blocking: opened and read in the thread iterating it)."""
        stream = self.package.open(self.entry, 0, self.entry.size)
        try:
            yield from stream
        finally:
            stream.close()


@dataclass(slots=True)
class RowOutcome:
    index: int
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class JobState:
    task: TaskRecord
    total: int | None = None
    done: int = 0
    failed: int = 0
    results_bytes: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended_elsewhere: bool = False

    def progress(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "failed": self.failed, "bytes": self.results_bytes}


class DatasetJobs:
    def __init__(
        self,
        *,
        settings: DLHubSettings,
        bus: Bus,
        codec: Codec,
        runs: Runs,
        servables: Servables,
        tasks: TaskTable,
        files: PackageFiles,
        background: BackgroundTasks,
    ) -> None:
        self._settings = settings
        self._config = settings.registry
        self._bus = bus
        self._codec = codec
        self._runs = runs
        self._servables = servables
        self._tasks = tasks
        self._files = files
        self._background = background
        self.root = settings.data_dir / "jobs"
        self._running: dict[str, tuple[JobState, asyncio.Task[None]]] = {}

    def results_path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.jsonl"

    # -- accepting a job --------------------------------------------------------------------------------

    async def start(
        self, caller: Caller, owner: str, name: str, version: int | None, body: ApplyRequest
    ) -> tuple[TaskRecord, JobPlan]:
        """Check the request and start the job; its task is returned pending, with the plan."""
        plan = await self._plan(caller, owner, name, version, body)
        task = await self._tasks.create(
            task_id=new_id(),
            kind="job",
            servable=plan.servable.label,
            submitter=caller.user,
            timeout_s=self._config.job_batch_timeout_s,
            progress={"done": 0, "total": None, "failed": 0, "bytes": 0},
        )
        state = JobState(task)
        self._tasks.driving.add(task.task_id)
        driver = self._background.spawn(self._run(plan, state), name=f"job {task.task_id}")
        self._running[task.task_id] = (state, driver)
        log.info("dataset job accepted", task_id=task.task_id, dataset=plan.dataset.label)
        return task, plan

    async def _plan(
        self, caller: Caller, owner: str, name: str, version: int | None, body: ApplyRequest
    ) -> JobPlan:
        if caller.user is None:
            raise Unauthorized("a dataset job publishes its output as the caller's dataset: it needs a token")
        self._runs.check_may_run(caller)
        if body.batch_rows > self._config.job_max_batch_rows:
            raise ValidationFailed(
                f"batch_rows may be at most {self._config.job_max_batch_rows}", field="batch_rows"
            )
        dataset = await self._servables.runnable(caller, owner, name, version)
        if not is_dataset(dataset.metadata):
            raise ValidationFailed(f"{dataset.label} is not a dataset", field="dataset")
        s_owner, s_name, s_version = parse_servable_ref(body.servable, "servable")
        servable = await self._servables.runnable(caller, s_owner, s_name, s_version)
        if is_dataset(servable.metadata):
            raise ValidationFailed(f"{servable.label} is a dataset, not a servable", field="servable")
        methods = (servable.metadata.get("servable") or {}).get("methods") or {}
        if body.method not in methods:
            raise ValidationFailed(f"{servable.label} has no method {body.method!r}", field="method")
        output_name = body.output_name or f"{dataset.name}-{servable.name}"[:128]
        if not NAME_RE.fullmatch(output_name):
            raise ValidationFailed(f"invalid output_name {output_name!r}", field="output_name")
        if not dataset.package_sha256:
            raise ValidationFailed(f"{dataset.label} has no files", field="file")
        package = await self._files.indexed(dataset.package_sha256)
        entry = _pick_file(package, body.file)
        fmt = tabular_format(entry.path)
        assert fmt is not None  # _pick_file takes tabular files only
        header = await asyncio.to_thread(_header, package, entry, fmt)
        columns = _pick_columns(header, body.columns)
        mapping = input_mapping(methods[body.method].get("input"), body.mode, len(columns))
        batch = mapping.mode == "batch"
        concurrency = self._config.job_max_inflight_batches if batch else ROW_MODE_CONCURRENCY
        return JobPlan(
            caller=caller,
            dataset=dataset,
            servable=servable,
            method=body.method,
            parameters=body.parameters,
            package=package,
            entry=entry,
            fmt=fmt,
            columns=columns,
            mapping=mapping,
            batch_rows=body.batch_rows,
            output_name=output_name,
            visible_to=body.visible_to if body.visible_to is not None else [f"user:{caller.user}"],
            calls=asyncio.Semaphore(concurrency),
        )

    # -- driving a job ----------------------------------------------------------------------------------

    async def _run(self, plan: JobPlan, state: JobState) -> None:
        task_id = state.task.task_id
        error: dict[str, Any] | None = None
        output: bytes | None = None
        try:
            async with asyncio.timeout(self._config.job_timeout_s):
                output = await self._drive(plan, state)
        except TimeoutError:
            error = {"type": DeadlineExceeded.code, "message": "the job ran past registry.job_timeout_s"}
        except DLHubError as exc:
            error = {"type": exc.code, "message": exc.message}
        except Exception as exc:
            log.exception("dataset job failed", task_id=task_id)
            error = {"type": "internal_error", "message": f"the job failed: {type(exc).__name__}"}
        finally:
            self._tasks.driving.discard(task_id)
        task = dataclasses.replace(state.task, progress=state.progress())
        if state.stop.is_set() and error is None and output is None:
            error = {"type": TaskCancelled.code, "message": _partial_note("the job was cancelled", state)}
        if error is not None:
            if error["type"] != TaskCancelled.code:
                error["message"] = _partial_note(error["message"], state)
            state.task = await self._tasks.fail(task, error=error)
        elif output is not None:
            state.task = await self._tasks.complete(task, output=output)
        self._running.pop(task_id, None)
        log.info("dataset job ended", task_id=task_id, state=state.task.state, done=state.done)

    async def _drive(self, plan: JobPlan, state: JobState) -> bytes | None:
        """Run every row; publish the results; return the task output (None when stopped)."""
        state.total = await asyncio.to_thread(lambda: RowReader(plan.rows(), plan.fmt).count())
        state.task = await self._tasks.progress(
            state.task, state.progress(), timeout_s=self._config.job_batch_timeout_s
        )
        heartbeat = asyncio.create_task(self._heartbeat(state))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.results_path(state.task.task_id).open("wb") as out:
                await self._run_rows(plan, state, out)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        if state.stop.is_set():
            return None
        state.task = await self._tasks.progress(
            state.task, state.progress(), timeout_s=self._config.job_batch_timeout_s
        )
        return await self._publish(plan, state)

    async def _run_rows(self, plan: JobPlan, state: JobState, out: IO[bytes]) -> None:
        chunks = plan.rows()
        reader = await asyncio.to_thread(RowReader, chunks, plan.fmt)
        pending: collections.deque[asyncio.Task[list[RowOutcome]]] = collections.deque()
        limit = self._config.job_max_inflight_batches
        stop = asyncio.ensure_future(state.stop.wait())
        try:
            while not state.stop.is_set():
                rows = await asyncio.to_thread(reader.take, plan.batch_rows)
                if not rows:
                    break
                pending.append(asyncio.create_task(self._chunk(plan, rows)))
                while pending and (len(pending) >= limit or pending[0].done()):
                    await asyncio.wait([pending[0], stop], return_when=asyncio.FIRST_COMPLETED)
                    if state.stop.is_set():
                        break
                    await self._write(state, out, pending.popleft().result())
            while pending and not state.stop.is_set():
                await asyncio.wait([pending[0], stop], return_when=asyncio.FIRST_COMPLETED)
                if not state.stop.is_set():
                    await self._write(state, out, pending.popleft().result())
        finally:
            stop.cancel()
            for chunk in pending:
                chunk.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.to_thread(chunks.close)

    async def _chunk(self, plan: JobPlan, rows: list[Row]) -> list[RowOutcome]:
        """The outcome of each row, in order."""
        unreadable = {row.index: row.error for row in rows if row.cells is None}
        readable = [row for row in rows if row.cells is not None]
        if plan.mapping.mode == "batch":
            results = await self._call_rows(plan, readable) if readable else []
        else:
            parts = await asyncio.gather(*(self._call_rows(plan, [row]) for row in readable))
            results = [outcome for part in parts for outcome in part]
        for index, message in unreadable.items():
            results.append(RowOutcome(index, error={"type": ValidationFailed.code, "message": message}))
        results.sort(key=lambda outcome: outcome.index)
        return results

    async def _call_rows(self, plan: JobPlan, rows: list[Row]) -> list[RowOutcome]:
        """Outputs for ``rows`` (one call); a failed call is split in two, down to the single row."""
        batch = plan.mapping.mode == "batch"
        inputs = [plan.shape(r.cells or {}) for r in rows] if batch else plan.shape(rows[0].cells or {})
        outputs, error = await self._call(plan, inputs, len(rows) if batch else 0)
        if outputs is not None:
            return [RowOutcome(row.index, output) for row, output in zip(rows, outputs, strict=True)]
        if len(rows) > 1:
            middle = len(rows) // 2
            return await self._call_rows(plan, rows[:middle]) + await self._call_rows(plan, rows[middle:])
        return [RowOutcome(rows[0].index, error=error)]

    async def _call(
        self, plan: JobPlan, inputs: Any, batch_size: int
    ) -> tuple[list[Any] | None, dict[str, Any] | None]:
        """(the outputs, one per row) or (None, the error of the call); job-level failures raise."""
        try:
            result = await self._submit(plan, inputs)
        except ValidationFailed as exc:
            if not (exc.field or "").startswith("inputs"):
                raise  # the method or parameters: every call would fail alike
            return None, {"type": exc.code, "message": exc.message}
        if not result.ok:
            full = error_dict(result.error)
            kept = ("type", "message", "exception_type")
            return None, {k: full[k] for k in kept if k == "type" or full.get(k)}
        try:
            value = self._codec.decode_value(result.output)
        except InvalidMessage as exc:
            return None, {"type": exc.code, "message": exc.message}
        if not batch_size:
            return [value], None
        if not hasattr(value, "__len__") or isinstance(value, str | bytes | dict) or len(value) != batch_size:
            got = len(value) if hasattr(value, "__len__") and not isinstance(value, str | bytes) else 1
            message = f"the servable returned {got} outputs for a batch of {batch_size} rows"
            return None, {"type": ValidationFailed.code, "message": message}
        return list(value), None

    async def _submit(self, plan: JobPlan, inputs: Any) -> Result:
        """One call through the broker, as a run; refusals are retried for ``job_batch_timeout_s``."""
        timeout_s = self._config.job_batch_timeout_s
        body = RunRequest(inputs=inputs, parameters=plan.parameters, method=plan.method, timeout_s=timeout_s)
        give_up = time.monotonic() + timeout_s
        servable = plan.servable
        while True:
            submission = await self._runs.prepare_run(
                plan.caller, servable.owner, servable.name, servable.version, body
            )
            async with plan.calls:
                result = await self._bus.call(submission.route, submission.inputs, timeout_s=timeout_s)
            refused = refusal(result.error) if not result.ok else None
            if refused is None:
                return result
            if time.monotonic() >= give_up:
                raise refused
            await asyncio.sleep(RETRY_AFTER_S)

    async def _write(self, state: JobState, out: IO[bytes], outcomes: list[RowOutcome]) -> None:
        lines = []
        for outcome in outcomes:
            lines.append(to_json({"index": outcome.index, "output": outcome.output, "error": outcome.error}))
            if outcome.error is not None:
                state.failed += 1
                if len(state.failures) < self._config.job_max_failures_listed:
                    state.failures.append({"index": outcome.index, "error": outcome.error})
        data = b"\n".join(lines) + b"\n"
        await asyncio.to_thread(_append, out, data)
        state.results_bytes += len(data)
        state.done += len(outcomes)

    async def _heartbeat(self, state: JobState) -> None:
        """Write the progress (and a later deadline) every ``PROGRESS_INTERVAL_S``; stop the job when its
        task ended elsewhere (cancelled through another registry, or reaped)."""
        written = state.progress()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            progress = state.progress()
            if progress == written:
                continue
            stored = await self._tasks.progress(
                state.task, progress, timeout_s=self._config.job_batch_timeout_s
            )
            written = progress
            if stored.state not in OPEN_TASK_STATES:
                state.ended_elsewhere = True
                state.stop.set()
                return
            state.task = stored

    # -- the output dataset -----------------------------------------------------------------------------

    async def _publish(self, plan: JobPlan, state: JobState) -> bytes:
        package = await asyncio.to_thread(_package, self.results_path(state.task.task_id))
        assert plan.caller.user is not None
        record = await self._servables.publish(
            owner=plan.caller.user,
            document=_output_document(plan, state),
            package=package,
            package_format="tar",
            caller=plan.caller,
        )
        while True:
            build = await self._tasks.get(record.build_task_id)
            if build is None or build.state == "failed":
                reason = (build.error or {}).get("message", "") if build is not None else "the build vanished"
                raise BuildFailed(f"the output dataset {record.label} was not built: {reason}")
            if build.state == "completed":
                break
            await asyncio.sleep(BUILD_POLL_S)
        return to_json(
            {
                "dataset": record.label,
                "source": plan.dataset.label,
                "file": plan.entry.path,
                "servable": plan.servable.label,
                "rows": state.done,
                "succeeded": state.done - state.failed,
                "failed": state.failed,
                "failures": state.failures,
                "failures_truncated": state.failed > len(state.failures),
            }
        )

    # -- cancelling, restarts, clean-up -----------------------------------------------------------------

    async def cancel(self, caller: Caller, task_id: str) -> TaskRecord:
        """Stop a job (its submitter only; 404 otherwise) and end it ``cancelled``; 409 when it ended."""
        if caller.user is None:
            raise Unauthorized("cancelling a dataset job needs the token of its submitter")
        task = await self._tasks.get(task_id)
        if task is None or task.kind != "job" or task.submitter is None or task.submitter != caller.user:
            raise NotFound(f"dataset job {task_id} not found")
        if task.state not in OPEN_TASK_STATES:
            raise Conflict(f"task {task_id} has already ended ({task.state})")
        running = self._running.get(task_id)
        if running is not None:
            state, driver = running
            state.stop.set()
            await asyncio.wait([driver], timeout=self._config.job_batch_timeout_s)
            return state.task
        # Driven by another registry: it sees the final state at its next progress write and stops.
        error = {"type": TaskCancelled.code, "message": "the job was cancelled"}
        return await self._tasks.fail(task, error=error)

    async def fail_orphans(self) -> int:
        """End ``registry_restarted`` this registry's open jobs that no coroutine here drives (a previous
        process accepted them); their results files stay."""
        ended = 0
        for task in await self._tasks.open_tasks(owner=self._tasks.owner):
            if task.kind != "job" or task.task_id in self._tasks.driving:
                continue
            done = (task.progress or {}).get("done", 0)
            message = f"the registry restarted during the job; the {done} rows done are kept"
            failed = await self._tasks.fail(task, error={"type": RegistryRestarted.code, "message": message})
            ended += failed.state == "failed"
        if ended:
            log.info("dataset jobs of a previous process ended", count=ended)
        return ended

    async def sweep_forever(self, interval_s: float) -> None:
        """Remove results files older than the task results' lifetime."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self._sweep, time.time() - self._config.task_result_ttl_s)
            except OSError:
                log.exception("job results sweep failed")

    def _sweep(self, older_than_s: float) -> None:
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.jsonl"):
            if path.stat().st_mtime < older_than_s:
                path.unlink(missing_ok=True)


# -- helpers ----------------------------------------------------------------------------------------------


def _pick_file(package: IndexedPackage, requested: str | None) -> FileEntry:
    if requested is not None:
        entry = package.find(requested)
        if tabular_format(entry.path) is None:
            raise ValidationFailed(f"{requested!r} is not a CSV, TSV or JSON lines file", field="file")
        return entry
    tabular = [entry for entry in package.served() if tabular_format(entry.path) is not None]
    if len(tabular) != 1:
        found = ", ".join(entry.path for entry in tabular[:10]) or "none"
        raise ValidationFailed(
            f"name the file to read: the dataset has {len(tabular)} tabular files ({found})", field="file"
        )
    return tabular[0]


def _header(package: IndexedPackage, entry: FileEntry, fmt: Literal["csv", "tsv", "jsonl"]) -> list[str]:
    stream = package.open(entry, 0, entry.size)
    try:
        return RowReader(iter(stream), fmt).columns
    finally:
        stream.close()


def _pick_columns(header: list[str], requested: list[str] | None) -> list[str]:
    if requested is None:
        if not header:
            raise ValidationFailed("the file has no columns", field="file")
        return header
    known = set(header)
    for index, column in enumerate(requested):
        if column not in known:
            raise ValidationFailed(f"the file has no column {column!r}", field=f"columns[{index}]")
    return requested


def _append(out: IO[bytes], data: bytes) -> None:
    out.write(data)
    out.flush()


def _partial_note(message: str, state: JobState) -> str:
    return f"{message}; {state.done} of {state.total} rows done, kept in the task's results"


def _package(results: Path) -> bytes:
    """A tar.gz holding the results file as ``results.jsonl``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(results, arcname=RESULTS_FILE)
    return buffer.getvalue()


def _output_document(plan: JobPlan, state: JobState) -> dict[str, Any]:
    source, servable = plan.dataset.label, plan.servable.label
    description = (
        f"The outputs of {servable} (method {plan.method}) for each row of {plan.entry.path} in {source}: "
        f"one JSON line per row with index, output and error ({state.failed} of {state.done} rows failed)."
    )
    return {
        "datacite": {
            "identifier": {"identifier": "10.datacite/placeholder", "identifierType": "DOI"},
            "creators": [{"creatorName": plan.caller.user}],
            "titles": [{"title": f"{servable} applied to {source}"}],
            "publisher": "DLHub",
            "publicationYear": str(dt.date.today().year),
            "resourceType": {"resourceTypeGeneral": "Dataset"},
            "descriptions": [{"description": description, "descriptionType": "Abstract"}],
        },
        "dlhub": {
            "name": plan.output_name,
            "type": "dataset",
            "visible_to": plan.visible_to,
            "files": {"data": [RESULTS_FILE]},
            "derived_from": [source],
            "generated_by": [servable],
        },
    }
