"""Adaptive server-side batching: concurrent requests for one servable method become one model call.

A servable method is *batchable* when its metadata says so (``servable.methods.<m>.method_details.batchable:
true``) or, by default, when it is a scikit-learn method whose input is an ndarray of shape ``[null, ...]``
(``batchable: false`` turns that off). Requests for the same ``(servable version, method, parameters)`` -- the
parameters compared byte for byte -- are queued together:

- the first request of an empty queue opens a window of ``max_wait_ms``; the queue is flushed as one batch
  when its rows reach ``max_size`` or when the window closes;
- adaptive part: when the window closes while this key already has as many batches in flight as the pool
  has executor processes, sending the batch would only queue it behind them, so it keeps collecting (up to
  ``max_size`` rows) and is flushed the moment one of those batches completes. The batch size therefore
  grows with the load, and a lone request waits at most ``max_wait_ms``;
- a request whose own rows already reach ``max_size`` is sent at once, alone (a client batch).

A batch concatenates the requests' inputs along axis 0 (NumPy arrays with ``numpy.concatenate``, lists by
list concatenation) into one executor call, and splits the output back by each request's row count. A batch
of one request forwards its ``msgspec.Raw`` inputs untouched, so only merged batches are ever decoded. When
inputs cannot be merged (ragged shapes), each request runs on its own. A failure -- a servable exception, a
typed DLHub error, a lost executor -- fails every request of the batch with the same typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from dlhub.common.codec import EXT_NDARRAY, Codec
from dlhub.common.errors import DLHubError, TaskTimeout
from dlhub.common.logging import get_logger
from dlhub.common.messages import ErrorInfo
from dlhub.worker.metrics import BATCH_ROWS, BATCH_SIZE
from dlhub.worker.protocol import ExecReply

log = get_logger(__name__)

SKLEARN_SHIM = "sklearn.ScikitLearnServable"


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How one servable method is batched: at most ``max_size`` rows, waiting at most ``max_wait_s``."""

    max_size: int
    max_wait_s: float


class BatchKey(NamedTuple):
    """Requests merge only when all of these are equal."""

    servable: str
    version_dir: str
    method: str
    parameters: bytes


@dataclass(slots=True)
class BatchOutcome:
    """One request's share of a batch: its own reply, its own queue wait and the batch it ran in."""

    reply: ExecReply
    queue_ms: float
    batch_requests: int
    batch_rows: int


RunBatch = Callable[[BatchKey, msgspec.Raw, float | None], Awaitable[ExecReply]]
"""Run one executor call: ``(key, inputs, timeout_s) -> reply``; raises ``DLHubError`` (lost, timed out)."""


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _non_negative_float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def batch_policy(
    metadata: dict[str, Any], method: str, *, default_max_size: int, default_max_wait_ms: float
) -> BatchPolicy | None:
    """The batching policy of ``method``, or ``None`` when the method is not batchable.

    ``method_details.batchable`` decides when present; otherwise scikit-learn methods whose input is an
    ndarray with a leading ``null`` dimension are batchable. ``method_details.batch_max_size`` and
    ``batch_max_wait_ms`` override the worker's defaults.
    """
    servable = metadata.get("servable")
    if not isinstance(servable, dict):
        return None
    methods = servable.get("methods")
    spec = methods.get(method) if isinstance(methods, dict) else None
    if not isinstance(spec, dict):
        return None
    details = spec.get("method_details")
    details = details if isinstance(details, dict) else {}
    declared = details.get("batchable")
    if isinstance(declared, bool):
        batchable = declared
    else:
        batchable = servable.get("shim") == SKLEARN_SHIM and _leading_dimension_free(spec.get("input"))
    if not batchable:
        return None
    max_size = _positive_int(details.get("batch_max_size")) or default_max_size
    max_wait_ms = _non_negative_float(details.get("batch_max_wait_ms"))
    if max_wait_ms is None:
        max_wait_ms = default_max_wait_ms
    return BatchPolicy(max_size=max_size, max_wait_s=max_wait_ms / 1000.0)


def _leading_dimension_free(input_spec: Any) -> bool:
    if not isinstance(input_spec, dict) or input_spec.get("type") != "ndarray":
        return False
    shape = input_spec.get("shape")
    return isinstance(shape, list) and len(shape) >= 1 and shape[0] is None


def peek_rows(raw: msgspec.Raw | bytes) -> int | None:
    """The number of rows (length along axis 0) of an encoded value, read from its msgpack header only.

    Arrays give their length; NumPy arrays (the codec's ndarray extension) their first dimension. Anything
    else (a scalar, a map, a 0-d array, a malformed value) is ``None``: it cannot be batched.
    """
    data = memoryview(raw)
    if len(data) < 1:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    ext_offsets = {0xC7: 1, 0xC8: 2, 0xC9: 4}
    size_bytes = ext_offsets.get(first)
    if size_bytes is None:
        return None
    start = 1 + size_bytes + 1  # marker, length, type
    if len(data) < start + 4 or data[start - 1] != EXT_NDARRAY:
        return None
    header_len = int.from_bytes(data[start : start + 4], "little")
    try:
        _, shape = msgspec.msgpack.decode(data[start + 4 : start + 4 + header_len])
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
    if isinstance(shape, list) and shape and isinstance(shape[0], int):
        return shape[0]
    return None


def merge_inputs(values: list[Any]) -> Any:
    """Concatenate decoded inputs along axis 0; raises ``ValueError`` when they do not fit together."""
    if all(isinstance(v, list) for v in values):
        merged: list[Any] = []
        for value in values:
            merged.extend(value)
        return merged
    import numpy as np

    arrays = [np.asarray(v) for v in values]
    if any(a.ndim == 0 or a.dtype.hasobject for a in arrays):
        raise ValueError("inputs are not arrays of one numeric or string type")
    return np.concatenate(arrays, axis=0)


def split_output(output: Any, rows: list[int]) -> list[Any]:
    """Cut a batch's output back into one piece per request; raises ``ValueError`` on a length mismatch."""
    total = sum(rows)
    if not (isinstance(output, list | tuple) or getattr(output, "ndim", 0) >= 1):
        raise ValueError(f"the output ({type(output).__name__}) is not a sequence of rows")
    length = len(output)
    if length != total:
        raise ValueError(f"the output has {length} rows for {total} input rows")
    pieces = []
    offset = 0
    for n in rows:
        pieces.append(output[offset : offset + n])
        offset += n
    return pieces


@dataclass(slots=True, eq=False)
class _Request:
    inputs: msgspec.Raw
    rows: int
    enqueued: float
    deadline: float | None  # loop time
    future: asyncio.Future[BatchOutcome]
    queue_ms: float = 0.0


@dataclass(slots=True, eq=False)
class _Queue:
    policy: BatchPolicy
    pending: list[_Request] = field(default_factory=list)
    rows: int = 0
    in_flight: int = 0
    timer: asyncio.TimerHandle | None = None
    window_closed: bool = False


class Batcher:
    """Per-key queues that merge concurrent requests into batches (see the module docstring).

    ``slots`` is how many batches of one key may run at once before a closed window waits for a completion
    (the pool's process count). ``run`` performs one executor call.
    """

    def __init__(self, *, run: RunBatch, codec: Codec, slots: int) -> None:
        self._run = run
        self.codec = codec
        self.slots = max(1, slots)
        self._queues: dict[BatchKey, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.merged_batches = 0

    @property
    def keys(self) -> int:
        return len(self._queues)

    async def submit(
        self, key: BatchKey, policy: BatchPolicy, inputs: msgspec.Raw, rows: int, timeout_s: float | None
    ) -> BatchOutcome:
        """Queue one request and wait for its share of a batch (``TaskTimeout`` past ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        request = _Request(inputs, rows, time.perf_counter(), deadline, loop.create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(policy)
        if queue.pending and queue.rows + rows > queue.policy.max_size:
            self._flush(key, queue)  # this request would overflow the batch being collected
        queue.pending.append(request)
        queue.rows += rows
        if queue.rows >= queue.policy.max_size:
            self._flush(key, queue)
        elif queue.timer is None and not queue.window_closed:
            queue.timer = loop.call_later(queue.policy.max_wait_s, self._close_window, key, queue)
        try:
            async with asyncio.timeout_at(deadline):
                return await request.future
        except TimeoutError:
            waited = time.perf_counter() - request.enqueued
            raise TaskTimeout(f"the task passed its deadline after {waited:.3f} s in a batch") from None

    def _close_window(self, key: BatchKey, queue: _Queue) -> None:
        queue.timer = None
        if not queue.pending:
            return
        if queue.in_flight >= self.slots:
            queue.window_closed = True  # flushed as soon as a batch of this key completes
            return
        self._flush(key, queue)

    def _flush(self, key: BatchKey, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        queue.window_closed = False
        batch, queue.pending, queue.rows = queue.pending, [], 0
        batch = [r for r in batch if not r.future.done()]  # timed out or cancelled while queued
        if not batch:
            self._maybe_forget(key, queue)
            return
        queue.in_flight += 1
        BATCH_SIZE.observe(len(batch))
        BATCH_ROWS.observe(sum(r.rows for r in batch))
        task = asyncio.get_running_loop().create_task(self._execute(key, queue, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _maybe_forget(self, key: BatchKey, queue: _Queue) -> None:
        idle = not queue.pending and not queue.in_flight and queue.timer is None
        if idle and self._queues.get(key) is queue:
            del self._queues[key]

    async def _execute(self, key: BatchKey, queue: _Queue, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                await self._run_one(key, batch)
                return
            try:
                merged = merge_inputs([self.codec.decode_value(r.inputs) for r in batch])
                inputs = self.codec.encode_value(merged)
            except (DLHubError, ValueError, TypeError) as exc:
                log.info(
                    "inputs cannot be merged; running them one by one", servable=key.servable, error=str(exc)
                )
                await asyncio.gather(*(self._run_one(key, [r]) for r in batch))
                return
            await self._run_merged(key, batch, inputs)
        finally:
            queue.in_flight -= 1
            if queue.pending and (queue.window_closed or queue.rows >= queue.policy.max_size):
                self._flush(key, queue)
            self._maybe_forget(key, queue)

    def _timeout_s(self, batch: list[_Request]) -> float | None:
        """The batch runs until the latest deadline among its requests (each request keeps its own)."""
        if any(r.deadline is None for r in batch):
            return None
        latest = max(r.deadline for r in batch if r.deadline is not None)
        return max(0.0, latest - asyncio.get_running_loop().time())

    async def _call(self, key: BatchKey, batch: list[_Request], inputs: msgspec.Raw) -> ExecReply | None:
        started = time.perf_counter()
        for request in batch:
            request.queue_ms = (started - request.enqueued) * 1000.0
        self.batches += 1
        try:
            return await self._run(key, inputs, self._timeout_s(batch))
        except Exception as exc:  # typed (WorkerLost, TaskTimeout, ...) or not: the same error for all
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return None
        except BaseException:  # cancelled: the worker is stopping
            for request in batch:
                request.future.cancel()
            raise

    def _resolve(self, batch: list[_Request], replies: list[ExecReply]) -> None:
        rows = sum(r.rows for r in batch)
        for request, reply in zip(batch, replies, strict=True):
            if not request.future.done():
                request.future.set_result(BatchOutcome(reply, request.queue_ms, len(batch), rows))

    async def _run_one(self, key: BatchKey, batch: list[_Request]) -> None:
        reply = await self._call(key, batch, batch[0].inputs)
        if reply is not None:
            self._resolve(batch, [reply])

    async def _run_merged(self, key: BatchKey, batch: list[_Request], inputs: msgspec.Raw) -> None:
        self.merged_batches += 1
        reply = await self._call(key, batch, inputs)
        if reply is None:
            return
        if not reply.ok:
            self._resolve(batch, [reply] * len(batch))
            return
        try:
            pieces = split_output(self.codec.decode_value(reply.output), [r.rows for r in batch])
            raws = [self.codec.encode_value(piece) for piece in pieces]
        except (DLHubError, ValueError, TypeError) as exc:
            error = ErrorInfo(
                code="servable_error",
                message=f"the batched output of method {key.method!r} cannot be split per request: {exc}",
                exception_type=type(exc).__name__,
            )
            failed = msgspec.structs.replace(reply, ok=False, output=msgspec.Raw(b"\xc0"), error=error)
            self._resolve(batch, [failed] * len(batch))
            return
        self._resolve(batch, [msgspec.structs.replace(reply, output=raw) for raw in raws])

    async def close(self) -> None:
        """Cancel running batches (their requests are cancelled too) and queued timers."""
        for queue in self._queues.values():
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            for request in queue.pending:
                request.future.cancel()
            queue.pending = []
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queues.clear()
