"""The executor pool with real child processes: loading, calling conventions, errors and crashes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub.common.codec import Codec
from dlhub.common.errors import TaskTimeout
from dlhub.common.ids import new_id
from dlhub.worker.pool import ExecutorPool
from dlhub.worker.protocol import ExecReply
from tests.support.polling import await_until
from tests.support.worker_servables import (
    EXECUTOR_MAX_MESSAGE_BYTES,
    PYTHON_SHIM,
    function_method,
    load_count,
    train_iris_forest,
    write_function_servable,
    write_servable,
    write_sklearn_servable,
)

CODEC = Codec()
MAX_MESSAGE_BYTES = EXECUTOR_MAX_MESSAGE_BYTES


async def call(
    pool: ExecutorPool,
    directory: Path,
    inputs: Any = None,
    *,
    method: str = "run",
    parameters: dict[str, Any] | None = None,
    timeout_s: float | None = 30.0,
) -> ExecReply:
    return await pool.execute(
        task_id=new_id(),
        servable=f"alice/{directory.parent.name}@{directory.name}",
        version_dir=str(directory),
        method=method,
        inputs=CODEC.encode_value(inputs),
        parameters=CODEC.encode_value(parameters or {}),
        timeout_s=timeout_s,
    )


def output(reply: ExecReply) -> Any:
    assert reply.ok, reply.error
    return CODEC.decode_value(reply.output)


async def test_python_function_is_loaded_once_and_stays_warm(pool: ExecutorPool, tmp_path: Path) -> None:
    directory = write_function_servable(tmp_path, "adder")
    first = await call(pool, directory, 2)
    assert output(first) == 3
    assert first.load_ms > 0 and first.loads == 1
    for x in range(5):
        reply = await call(pool, directory, x)
        assert output(reply) == x + 1
        assert reply.load_ms == 0.0 and reply.loads == 1
        assert reply.pid == first.pid
        assert 0 < reply.inference_ms < 1000
    assert load_count(directory) == 1


async def test_parameters_merge_defaults_with_the_request(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {
        "run": function_method("add", parameters={"y": 10}),
        "echo": function_method("echo", parameters={"a": 1, "b": 2}),
    }
    directory = write_function_servable(tmp_path, "params", methods=methods)
    assert output(await call(pool, directory, 1)) == 11
    assert output(await call(pool, directory, 1, parameters={"y": 5})) == 6
    echoed = output(await call(pool, directory, "in", method="echo", parameters={"b": 3, "c": 4}))
    assert echoed == {"x": "in", "kwargs": {"a": 1, "b": 3, "c": 4}}


async def test_autobatch_and_unpack(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {
        "run": function_method("add", autobatch=True, parameters={"y": 100}),
        "mul": function_method("mul", unpack=True),
        "mul_batch": function_method("mul", autobatch=True, unpack=True, parameters={"scale": 10}),
    }
    directory = write_function_servable(tmp_path, "batch", methods=methods)
    assert output(await call(pool, directory, [1, 2, 3])) == [101, 102, 103]
    assert output(await call(pool, directory, [3, 4], method="mul", parameters={"scale": 2})) == 24
    assert output(await call(pool, directory, [[1, 2], [3, 4]], method="mul_batch")) == [20, 120]
    not_a_list = await call(pool, directory, 5)
    assert not not_a_list.ok and not_a_list.error is not None
    assert not_a_list.error.code == "validation_error"
    assert "list of inputs" in not_a_list.error.message


async def test_servable_exception_is_a_typed_error_and_the_process_survives(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    methods = {"run": function_method("fail"), "noop": function_method("noop")}
    directory = write_function_servable(tmp_path, "failing", methods=methods)
    reply = await call(pool, directory, 42)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "servable_error"
    assert reply.error.exception_type == "ValueError"
    assert reply.error.message == "bad input 42"
    assert "Traceback" in reply.error.traceback and "in fail" in reply.error.traceback
    again = await call(pool, directory, None, method="noop")
    assert output(again) == "hello world"
    assert again.pid == reply.pid and pool.respawns == 0


async def test_two_servables_shipping_the_same_module_name_do_not_collide(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    methods = {"run": function_method("whoami")}
    first = write_function_servable(tmp_path, "first", tag="A", methods=methods)
    second = write_function_servable(tmp_path, "second", tag="B", methods=methods)
    newer = write_function_servable(tmp_path, "first", version=2, tag="C", methods=methods)
    for _ in range(2):
        a, b, c = [output(await call(pool, d, None)) for d in (first, second, newer)]
        assert (a["tag"], b["tag"], c["tag"]) == ("A", "B", "C")
        assert a["pid"] == b["pid"] == c["pid"]
        assert len({a["module"], b["module"], c["module"]}) == 3
    assert [load_count(d) for d in (first, second, newer)] == [1, 1, 1]


async def test_module_in_a_package_subdirectory_and_installed_modules(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    package = {
        "src/pkgmod/__init__.py": "",
        "src/pkgmod/core.py": "from .helpers import twice\n\ndef run(x):\n    return twice(x)\n",
        "src/pkgmod/helpers.py": "def twice(x):\n    return 2 * x\n",
    }
    directory = write_servable(
        tmp_path,
        "alice",
        "pkg",
        1,
        shim=PYTHON_SHIM,
        methods={
            "run": function_method("run", module="pkgmod.core"),
            "sqrt": function_method("sqrt", module="math"),
        },
        files=dict(package),
        dlhub_files={"other": sorted(package)},
    )
    assert output(await call(pool, directory, 21)) == 42
    assert output(await call(pool, directory, 16.0, method="sqrt")) == 4.0


async def test_ndarray_output_round_trip(pool: ExecutorPool, tmp_path: Path) -> None:
    directory = write_function_servable(tmp_path, "arrays", methods={"run": function_method("double")})
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = output(await call(pool, directory, array))
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float32 and result.shape == (3, 4)
    np.testing.assert_array_equal(result, array * 2)


@pytest.mark.parametrize("serialization", ["pickle", "joblib"])
async def test_sklearn_servable(pool: ExecutorPool, tmp_path: Path, serialization: str) -> None:
    from sklearn.datasets import load_iris

    model = train_iris_forest()
    directory = write_sklearn_servable(tmp_path, f"iris_{serialization}", model, serialization=serialization)
    samples = load_iris().data[::10].tolist()
    predicted = output(await call(pool, directory, samples))
    np.testing.assert_array_equal(predicted, model.predict(np.asarray(samples)))
    probabilities = output(await call(pool, directory, samples, method="predict_proba"))
    assert probabilities.shape == (len(samples), 3)
    np.testing.assert_allclose(probabilities, model.predict_proba(np.asarray(samples)))


async def test_model_output_to_stdout_does_not_corrupt_the_pipe(pool: ExecutorPool, tmp_path: Path) -> None:
    directory = write_function_servable(tmp_path, "noisy", methods={"run": function_method("noisy")})
    for x in range(3):
        assert output(await call(pool, directory, x)) == x
    assert pool.respawns == 0


async def test_typed_errors_for_bad_servables(pool: ExecutorPool, tmp_path: Path) -> None:
    async def error_of(directory: Path, method: str = "run") -> tuple[str, str, str]:
        reply = await call(pool, directory, 1, method=method)
        assert not reply.ok and reply.error is not None
        return reply.error.code, reply.error.exception_type, reply.error.message

    adder = write_function_servable(tmp_path, "adder")
    code, _, message = await error_of(adder, "predict")
    assert (
        code == "validation_error"
        and "no method 'predict'" in message
        and "available methods: run" in message
    )

    unknown = write_servable(tmp_path, "alice", "caffe", 1, shim="caffe.CaffeServable", methods={"run": {}})
    code, _, message = await error_of(unknown)
    assert code == "validation_error" and "caffe.CaffeServable" in message
    assert "keras.KerasServable" in message  # the message lists the shims this worker supports

    no_model = write_servable(
        tmp_path, "alice", "nomodel", 1, shim="sklearn.ScikitLearnServable", methods={"run": {}},
        dlhub_files={"model": "model.pkl"},
    )  # fmt: skip
    code, exception_type, message = await error_of(no_model)
    assert (code, exception_type) == ("servable_error", "FileNotFoundError") and "model.pkl" in message

    bad_import = write_servable(
        tmp_path, "alice", "badimport", 1, shim=PYTHON_SHIM,
        methods={"run": function_method("f", module="broken")},
        files={"broken.py": "import no_such_module_anywhere\n"},
    )  # fmt: skip
    code, exception_type, message = await error_of(bad_import)
    assert (code, exception_type) == ("servable_error", "ModuleNotFoundError")
    assert "no_such_module_anywhere" in message

    missing_function = write_function_servable(
        tmp_path, "nofunc", methods={"run": function_method("does_not_exist")}
    )
    code, exception_type, message = await error_of(missing_function)
    assert (code, exception_type) == ("servable_error", "AttributeError") and "does_not_exist" in message

    unencodable = write_function_servable(
        tmp_path, "objects", methods={"run": function_method("unencodable")}
    )
    code, _, message = await error_of(unencodable)
    assert code == "servable_error" and "cannot be encoded" in message

    code, _, message = await error_of(tmp_path / "alice" / "ghost" / "1")
    assert code == "not_found"

    assert pool.respawns == 0


async def test_tasks_run_in_parallel_on_several_processes(tmp_path: Path) -> None:
    directory = write_function_servable(
        tmp_path, "parallel", methods={"run": function_method("sleep"), "who": function_method("whoami")}
    )
    executors = ExecutorPool(processes=2, max_message_bytes=MAX_MESSAGE_BYTES)
    await executors.start()
    try:
        assert len(executors.pids) == 2
        started = time.monotonic()
        replies = await asyncio.gather(*(call(executors, directory, 0.5) for _ in range(2)))
        elapsed = time.monotonic() - started
        assert {r.pid for r in replies} == set(executors.pids)
        assert elapsed < 0.95, f"two 0.5 s tasks on two processes took {elapsed:.2f} s"
    finally:
        await executors.close()
    assert executors.pids == []


async def test_requests_are_pipelined_and_replies_matched_by_sequence(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """Up to ``depth`` requests are written ahead to one process; each waiter gets its own reply."""
    methods = {"run": function_method("add"), "sleep": function_method("sleep")}
    directory = write_function_servable(tmp_path, "piped", methods=methods)
    slow = asyncio.create_task(call(pool, directory, 0.3, method="sleep"))
    await await_until(
        lambda: sum(len(p.inflight) for p in _live(pool)) == 1,
        timeout_s=10,
        message="the slow task in flight",
    )
    quick = [asyncio.create_task(call(pool, directory, i)) for i in range(pool.depth - 1)]
    await await_until(
        lambda: sum(len(p.inflight) for p in _live(pool)) == pool.depth, timeout_s=10, message="a full pipe"
    )
    assert [output(r) for r in await asyncio.gather(*quick)] == [i + 1 for i in range(pool.depth - 1)]
    assert output(await slow) == 0.3


async def test_a_queued_task_past_its_deadline_fails_alone_and_never_runs(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """The process running a slow task is not killed for a task waiting behind it, and the executor skips the
    expired request instead of running it late."""
    methods = {"run": function_method("sleep_with_pidfile"), "touch": function_method("touch")}
    directory = write_function_servable(tmp_path, "queued_deadline", methods=methods)
    pidfile = tmp_path / "slow.pid"
    marker = tmp_path / "late.marker"
    slow = asyncio.create_task(call(pool, directory, {"pidfile": str(pidfile), "seconds": 1.0}))
    await await_until(pidfile.exists, timeout_s=10, message="the slow task to start")
    with pytest.raises(TaskTimeout, match="while queued"):
        await call(pool, directory, str(marker), method="touch", timeout_s=0.2)
    assert output(await slow) == "finished"
    assert output(await call(pool, directory, str(tmp_path / "after.marker"), method="touch")) == "touched"
    assert not marker.exists(), "the expired request ran"
    assert pool.respawns == 0 and pool.pids == [int(pidfile.read_text())]


def _live(pool: ExecutorPool) -> list[Any]:
    return [p for p in pool._slots if p is not None and not p.retired]
