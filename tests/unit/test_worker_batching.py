"""Adaptive batching at the worker: the batcher alone, the worker service in-process, then over the bus."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import numpy as np
import pytest

from dlhub.common.codec import Codec
from dlhub.common.errors import TaskTimeout, WorkerLost
from dlhub.common.messages import ErrorInfo
from dlhub.worker.batching import (
    Batcher,
    BatchKey,
    BatchPolicy,
    batch_policy,
    merge_inputs,
    peek_rows,
    split_output,
)
from dlhub.worker.protocol import ExecReply
from tests.support.polling import await_until
from tests.support.worker_servables import (
    PYTHON_SHIM,
)

CODEC = Codec()
KEY = BatchKey("alice/m@1", "/nowhere", "run", b"\x80")


def key(parameters: Any = None) -> BatchKey:
    return KEY._replace(parameters=bytes(CODEC.encode_value(parameters or {})))


class FakeExecutor:
    """Records every call's decoded inputs; answers ``inputs * 10`` (as an array) after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[Any] = []
        self.error: ErrorInfo | None = None

    async def __call__(self, key: BatchKey, inputs: msgspec.Raw, timeout_s: float | None) -> ExecReply:
        value = CODEC.decode_value(inputs)
        self.calls.append(value)
        await asyncio.sleep(self.delay_s)  # a slow executor is the condition under test
        if self.fail is not None:
            raise self.fail
        if self.error is not None:
            return ExecReply(seq=0, ok=False, error=self.error)
        output = CODEC.encode_value(np.asarray(value) * 10)
        return ExecReply(seq=0, ok=True, output=output, inference_ms=1.0)

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


def policy(max_size: int = 64, max_wait_ms: float = 20.0) -> BatchPolicy:
    return BatchPolicy(max_size=max_size, max_wait_s=max_wait_ms / 1000.0)


async def submit(batcher: Batcher, value: Any, *, k: BatchKey = KEY, p: BatchPolicy | None = None) -> Any:
    raw = CODEC.encode_value(value)
    rows = peek_rows(raw)
    assert rows is not None
    outcome = await batcher.submit(k, p or policy(), raw, rows, None)
    if not outcome.reply.ok:
        return outcome.reply.error
    return CODEC.decode_value(outcome.reply.output)


# -- helpers -----------------------------------------------------------------------------------------------


def test_peek_rows_reads_the_length_from_the_header_only() -> None:
    for n in (0, 1, 15, 16, 65535, 65536):
        assert peek_rows(CODEC.encode_value([[1.0, 2.0]] * n)) == n
    assert peek_rows(CODEC.encode_value(np.zeros((7, 4)))) == 7
    assert peek_rows(CODEC.encode_value(np.zeros((100_000,), dtype=np.int8))) == 100_000
    for scalar in (1, "abc", {"a": 1}, None, np.float64(1.0)):
        assert peek_rows(CODEC.encode_value(scalar)) is None
    assert peek_rows(b"") is None


def test_batch_policy_from_metadata() -> None:
    ndarray = {"type": "ndarray", "shape": [None, 4]}

    def metadata(shim: str, details: dict[str, Any], input_spec: Any = ndarray) -> dict[str, Any]:
        method = {"input": input_spec, "method_details": details}
        return {"servable": {"shim": shim, "methods": {"run": method}}}

    def get(meta: dict[str, Any], method: str = "run") -> BatchPolicy | None:
        return batch_policy(meta, method, default_max_size=64, default_max_wait_ms=2.0)

    sklearn = "sklearn.ScikitLearnServable"
    assert get(metadata(sklearn, {})) == BatchPolicy(64, 0.002)
    assert get(metadata(sklearn, {"batchable": False})) is None
    assert get(metadata(sklearn, {}, {"type": "ndarray", "shape": [4]})) is None
    assert get(metadata(sklearn, {}, {"type": "list"})) is None
    assert get(metadata(PYTHON_SHIM, {})) is None
    assert get(metadata(PYTHON_SHIM, {"batchable": True})) == BatchPolicy(64, 0.002)
    custom = {"batchable": True, "batch_max_size": 8, "batch_max_wait_ms": 0}
    assert get(metadata(PYTHON_SHIM, custom)) == BatchPolicy(8, 0.0)
    assert get(metadata(sklearn, {}), method="other") is None
    assert get({"servable": "nonsense"}) is None


def test_merge_and_split() -> None:
    assert merge_inputs([[1], [2, 3]]) == [1, 2, 3]
    merged = merge_inputs([np.ones((1, 2)), [[2.0, 2.0], [3.0, 3.0]]])
    assert merged.shape == (3, 2)
    with pytest.raises(ValueError):
        merge_inputs([np.ones((1, 2)), np.ones((1, 3))])
    with pytest.raises(ValueError):
        merge_inputs([np.float64(1.0), np.ones(2)])
    assert split_output([1, 2, 3], [1, 2]) == [[1], [2, 3]]
    pieces = split_output(np.arange(6).reshape(3, 2), [2, 0, 1])
    assert [p.shape for p in pieces] == [(2, 2), (0, 2), (1, 2)]
    with pytest.raises(ValueError):
        split_output([1, 2], [1, 2])
    with pytest.raises(ValueError):
        split_output(7, [1])


# -- the batcher -------------------------------------------------------------------------------------------


async def test_concurrent_requests_merge_into_one_call_and_split_by_rows() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    inputs = [[[1, 1]], [[2, 2], [3, 3]], [[4, 4], [5, 5], [6, 6]]]
    outputs = await asyncio.gather(*(submit(batcher, x) for x in inputs))
    assert executor.sizes == [6]
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, np.asarray(x) * 10)
    assert (batcher.batches, batcher.merged_batches, batcher.keys) == (1, 1, 0)


async def test_a_batch_never_exceeds_max_size() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=4)
    started = time.perf_counter()
    outputs = await asyncio.gather(*(submit(batcher, [[i]], p=policy(4, 5_000)) for i in range(10)))
    assert [o.tolist() for o in outputs] == [[[i * 10]] for i in range(10)]
    assert sorted(executor.sizes) == [2, 4, 4]
    assert time.perf_counter() - started > 4.0  # the last two waited for their window
    # A request that would overflow the batch being collected flushes it first.
    executor.calls.clear()
    await asyncio.gather(
        submit(batcher, [[1]] * 3, p=policy(4, 10)), submit(batcher, [[2]] * 3, p=policy(4, 10))
    )
    assert executor.sizes == [3, 3]


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    started = time.perf_counter()
    assert (await submit(batcher, [[1]], p=policy(64, 50))).tolist() == [[10]]
    elapsed = time.perf_counter() - started
    assert 0.045 <= elapsed < 0.5, elapsed
    started = time.perf_counter()
    await submit(batcher, [[1]], p=policy(64, 0))
    assert time.perf_counter() - started < 0.04
    # Requests arriving within the window join it.
    first = asyncio.create_task(submit(batcher, [[1]], p=policy(64, 100)))
    await asyncio.sleep(0.03)  # under test: the second request arrives 30 ms into the 100 ms window
    second = asyncio.create_task(submit(batcher, [[2]], p=policy(64, 100)))
    assert [(await first).tolist(), (await second).tolist()] == [[[10]], [[20]]]
    assert executor.sizes[-1] == 2


async def test_batches_keep_growing_while_the_executors_are_busy() -> None:
    executor = FakeExecutor(delay_s=0.2)
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    first = asyncio.create_task(submit(batcher, [[0]], p=policy(64, 1)))
    await await_until(lambda: executor.sizes == [1], timeout_s=5, message="the first batch to be running")
    rest = [asyncio.create_task(submit(batcher, [[i]], p=policy(64, 1))) for i in range(1, 6)]
    await asyncio.sleep(0.02)  # under test: 20 ms pass, far beyond the 1 ms window, and nothing may run
    assert executor.sizes == [1]  # the window closed, but the only slot is busy: still collecting
    await asyncio.gather(first, *rest)
    assert executor.sizes == [1, 5]
    assert [(await r).tolist() for r in rest] == [[[i * 10]] for i in range(1, 6)]


async def test_each_request_reports_its_own_queue_wait() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    p = policy(64, 100)

    async def one(value: int) -> float:
        raw = CODEC.encode_value([[value]])
        return (await batcher.submit(KEY, p, raw, 1, None)).queue_ms

    first = asyncio.create_task(one(1))
    await asyncio.sleep(0.05)  # under test: the second request arrives 50 ms later, so it waits 50 ms less
    second = asyncio.create_task(one(2))
    first_ms, second_ms = await first, await second
    assert executor.sizes == [2]
    assert 90 <= first_ms < 500 and 30 <= second_ms < 90, (first_ms, second_ms)


async def test_a_failure_fails_every_request_of_the_batch_with_the_same_error() -> None:
    executor = FakeExecutor(fail=WorkerLost("executor process 1 was killed by signal SIGKILL"))
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    results = await asyncio.gather(*(submit(batcher, [[i]]) for i in range(3)), return_exceptions=True)
    assert executor.sizes == [3]
    assert all(isinstance(r, WorkerLost) and "SIGKILL" in r.message for r in results)

    executor.fail = None
    executor.error = ErrorInfo(code="servable_error", message="boom", exception_type="ValueError")
    errors = await asyncio.gather(*(submit(batcher, [[i]]) for i in range(3)))
    assert errors == [executor.error] * 3
    assert executor.sizes == [3, 3]


async def test_an_unsplittable_output_fails_the_batch() -> None:
    async def scalar(key: BatchKey, inputs: msgspec.Raw, timeout_s: float | None) -> ExecReply:
        return ExecReply(seq=0, ok=True, output=CODEC.encode_value(42))

    batcher = Batcher(run=scalar, codec=CODEC, slots=1)
    errors = await asyncio.gather(submit(batcher, [[1]]), submit(batcher, [[2]]))
    assert all(isinstance(e, ErrorInfo) and e.code == "servable_error" for e in errors)
    assert "cannot be split" in errors[0].message
    assert await submit(batcher, [[1]]) == 42  # a batch of one is passed through untouched


async def test_different_parameters_or_methods_are_not_merged() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=2)
    await asyncio.gather(
        submit(batcher, [[1]], k=key({"a": 1})),
        submit(batcher, [[2]], k=key({"a": 2})),
        submit(batcher, [[3]], k=key({"a": 1})),
        submit(batcher, [[4]], k=key({"a": 1})._replace(method="other")),
    )
    assert sorted(executor.sizes) == [1, 1, 2]


async def test_ragged_inputs_run_one_by_one() -> None:
    executor = FakeExecutor()
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    a, b = await asyncio.gather(submit(batcher, np.ones((1, 2))), submit(batcher, np.ones((2, 3))))
    assert a.shape == (1, 2) and b.shape == (2, 3)
    assert sorted(executor.sizes) == [1, 2]


async def test_a_request_times_out_on_its_own_deadline() -> None:
    executor = FakeExecutor(delay_s=0.3)
    batcher = Batcher(run=executor, codec=CODEC, slots=1)
    raw = CODEC.encode_value([[1]])
    short = asyncio.create_task(batcher.submit(KEY, policy(64, 10), raw, 1, 0.1))
    long = asyncio.create_task(batcher.submit(KEY, policy(64, 10), raw, 1, 5.0))
    with pytest.raises(TaskTimeout):
        await short
    assert (await long).reply.ok
    await batcher.close()


def test_executor_decodes_rows_of_floats_straight_into_an_array() -> None:
    from dlhub.worker.executor import decode_float_rows

    for value in (np.random.default_rng(0).random((10_000, 4)), np.ones((1, 1)), np.ones((3, 20))):
        decoded = decode_float_rows(CODEC.encode_value(value.tolist()))
        assert decoded is not None and decoded.dtype == np.float64
        np.testing.assert_array_equal(decoded, value)
    others: list[Any] = [
        [[1, 2]],
        [[1.0, 2.0], [1.0]],
        [[1.0, 2.0], [3.0, 4]],
        [1.0, 2.0],
        [],
        [[]],
        [[[1.0]]],
        3.0,
    ]
    for other in others:
        assert decode_float_rows(CODEC.encode_value(other)) is None, other
