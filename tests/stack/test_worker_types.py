"""Class-method and ONNX servables in the executor pool, with real child processes and real models."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from dlhub.common.errors import ServableError
from dlhub.worker.pool import ExecutorPool
from dlhub.worker.protocol import ExecReply
from dlhub.worker.servables import load_servable
from dlhub.worker.servables.onnx_model import OnnxRuntimeMissing
from tests.stack.test_worker_pool import call, output
from tests.support.type_servables import (
    CLASS_SHIM,
    ONNX_SHIM,
    TWO_INPUTS,
    WEIGHTS,
    class_method,
    import_class_module,
    linear_relu_model,
    linear_relu_reference,
    onnx_method,
    pickled_scaler,
    two_input_model,
)
from tests.support.worker_servables import write_servable


def unique_module() -> str:
    return f"clsmod_{uuid.uuid4().hex[:8]}"


def error_of(reply: ExecReply) -> tuple[str, str, str]:
    assert not reply.ok and reply.error is not None
    return reply.error.code, reply.error.exception_type, reply.error.message


# -- python.PythonClassMethodServable -----------------------------------------------------------------------


def write_pickled_class_servable(
    root: Path,
    name: str,
    methods: dict[str, dict[str, Any]],
    *,
    tag: str = "A",
    module_name: str | None = None,
    serialization: str = "pickle",
    **init: Any,
) -> Path:
    """The SDK layout: ``files.pickle`` is the object, ``files.other`` the module defining its class."""
    module_name = module_name or unique_module()
    source_dir = root / "src" / name
    source_dir.mkdir(parents=True, exist_ok=True)
    module = import_class_module(source_dir, module_name, tag)
    try:
        if serialization == "joblib":
            buffer = io.BytesIO()
            joblib.dump(module.Scaler(**init), buffer)
            filename, content = "object.joblib", buffer.getvalue()
        else:
            filename, content = "object.pkl", pickled_scaler(module, **init)
    finally:
        del sys.modules[module_name]  # the executor must find the class in the package, not here
    source = (source_dir / f"{module_name}.py").read_text()
    for details in (m["method_details"] for m in methods.values()):
        details.setdefault("class_name", f"{module_name}.Scaler")
    return write_servable(
        root,
        "alice",
        name,
        1,
        shim=CLASS_SHIM,
        methods=methods,
        files={filename: content, f"{module_name}.py": source},
        dlhub_files={"pickle": filename, "other": [f"{module_name}.py"]},
        options={"serialization_method": serialization},
    )


async def test_pickled_object_serves_several_methods(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {
        "run": class_method("transform"),
        "scale": class_method("scale", parameters={"extra": 1}),
        "pair": class_method("pair", unpack=True),
        "scale_each": class_method("scale", autobatch=True),
        "state": class_method("state"),
        "project": class_method("project"),
    }
    directory = write_pickled_class_servable(tmp_path, "scaler", methods, factor=2, offset=1, weights=WEIGHTS)
    first = await call(pool, directory, [1, 2, 3])
    assert output(first) == [3, 5, 7] and first.loads == 1
    assert output(await call(pool, directory, 10, method="scale")) == 21
    assert output(await call(pool, directory, 10, method="scale", parameters={"extra": 5})) == 25
    assert output(await call(pool, directory, [3, 4], method="pair")) == 14
    assert output(await call(pool, directory, [1, 2], method="scale_each")) == [2, 4]

    # One object per process, restored once: its state persists across calls of every method.
    state = output(await call(pool, directory, None, method="state"))
    assert state["calls"] == 2 and state["pid"] == first.pid
    again = await call(pool, directory, None, method="state")
    assert output(again)["calls"] == 3 and again.loads == 1 and again.load_ms == 0.0

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    projected = output(await call(pool, directory, array, method="project"))
    assert isinstance(projected, np.ndarray) and projected.dtype == np.float32 and projected.shape == (2, 2)
    np.testing.assert_array_equal(projected, array @ np.asarray(WEIGHTS, dtype=np.float32))


async def test_joblib_object(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {"run": class_method("scale")}
    directory = write_pickled_class_servable(tmp_path, "jl", methods, serialization="joblib", factor=3)
    assert output(await call(pool, directory, np.array([1.0, 2.0]))).tolist() == [3.0, 6.0]


async def test_pickled_objects_of_same_named_modules_do_not_collide(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    module_name = unique_module()
    methods = {"run": class_method("state")}
    first = write_pickled_class_servable(tmp_path, "first", methods, tag="A", module_name=module_name)
    second = write_pickled_class_servable(
        tmp_path, "second", {"run": class_method("state")}, tag="B", module_name=module_name
    )
    a, b = output(await call(pool, first, None)), output(await call(pool, second, None))
    assert (a["tag"], b["tag"]) == ("A", "B") and a["pid"] == b["pid"]
    assert a["module"] != b["module"]


async def test_class_from_a_module_with_init_kwargs(pool: ExecutorPool, tmp_path: Path) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    module_name = unique_module()
    import_class_module(source_dir, module_name)
    del sys.modules[module_name]
    init = {"factor": 3, "offset": -1}
    methods = {
        "run": class_method("transform", module=module_name, class_name="Scaler", init=init),
        "scale": class_method("scale"),
        "pair": class_method("pair", unpack=True, module=module_name),  # repeats run's setting: allowed
    }
    directory = write_servable(
        tmp_path, "alice", "constructed", 1, shim=CLASS_SHIM, methods=methods,
        files={f"{module_name}.py": (source_dir / f"{module_name}.py").read_text()},
    )  # fmt: skip
    assert output(await call(pool, directory, [1, 2])) == [2, 5]
    assert output(await call(pool, directory, 2, method="scale")) == 6
    assert output(await call(pool, directory, [1, 1], method="pair")) == 6

    # An installed class, module-qualified in class_name, constructed with init from servable.options.
    installed = write_servable(
        tmp_path, "alice", "timedelta", 1, shim=CLASS_SHIM,
        methods={"run": class_method("total_seconds", unpack=True, class_name="datetime.timedelta")},
        options={"init": {"days": 1, "hours": 2}},
    )  # fmt: skip
    assert output(await call(pool, installed, [])) == 93600.0


async def test_class_method_errors(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {"run": class_method("transform"), "fail": class_method("fail")}
    directory = write_pickled_class_servable(tmp_path, "errs", methods)
    code, exception_type, message = error_of(await call(pool, directory, 7, method="fail"))
    assert (code, exception_type, message) == ("servable_error", "RuntimeError", "cannot handle 7")
    assert output(await call(pool, directory, [1])) == [1]

    no_method = write_pickled_class_servable(tmp_path, "nomethod", {"run": class_method("predict")})
    code, _, message = error_of(await call(pool, no_method, 1))
    assert code == "servable_error" and "no method 'predict'" in message and "transform" in message

    wrong_class = write_pickled_class_servable(
        tmp_path, "wrongclass", {"run": class_method("transform", class_name="sklearn.svm.SVC")}
    )
    code, _, message = error_of(await call(pool, wrong_class, 1))
    assert code == "servable_error" and "holds a Scaler" in message and "SVC" in message

    nothing = write_servable(
        tmp_path, "alice", "nothing", 1, shim=CLASS_SHIM, methods={"run": class_method("transform")}
    )
    code, _, message = error_of(await call(pool, nothing, 1))
    assert code == "validation_error" and "class_name" in message

    contradicting = write_servable(
        tmp_path, "alice", "contra", 1, shim=CLASS_SHIM,
        methods={
            "run": class_method("limit_denominator", class_name="fractions.Fraction"),
            "other": class_method("limit_denominator", class_name="decimal.Decimal"),
        },
    )  # fmt: skip
    code, _, message = error_of(await call(pool, contradicting, 1))
    assert code == "validation_error" and "same object" in message

    bad_init = write_servable(
        tmp_path, "alice", "badinit", 1, shim=CLASS_SHIM,
        methods={"run": class_method("limit_denominator", class_name="fractions.Fraction",
                                     init={"no_such_argument": 1})},
    )  # fmt: skip
    code, exception_type, message = error_of(await call(pool, bad_init, 1))
    assert (code, exception_type) == ("servable_error", "TypeError") and "cannot construct" in message
    assert pool.respawns == 0


# -- onnx.ONNXServable --------------------------------------------------------------------------------------


def write_onnx_servable(root: Path, name: str, model: str, methods: dict[str, dict[str, Any]]) -> Path:
    build = linear_relu_model if model == "linear" else two_input_model
    directory = write_servable(
        root, "alice", name, 1, shim=ONNX_SHIM, methods=methods, files={}, dlhub_files={"model": "net.onnx"}
    )
    build(directory / "files" / "net.onnx")
    return directory


async def test_onnx_single_input_outputs(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {
        "run": onnx_method(),
        "relu": onnx_method(output_name="relu"),
        "all": onnx_method(all_outputs=True),
    }
    directory = write_onnx_servable(tmp_path, "linear", "linear", methods)
    rows = [[1, 2, 3], [-1, 0.5, 2]]  # ints and floats in a list: converted to the model's float32
    linear, relu = linear_relu_reference(rows)
    first = await call(pool, directory, rows)
    result = output(first)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32 and result.shape == (2, 2)
    np.testing.assert_allclose(result, linear, rtol=1e-6)
    np.testing.assert_allclose(output(await call(pool, directory, rows, method="relu")), relu, rtol=1e-6)
    both = output(await call(pool, directory, np.asarray(rows, dtype=np.float64), method="all"))
    assert sorted(both) == ["linear", "relu"]
    np.testing.assert_allclose(both["relu"], relu, rtol=1e-6)
    # A single-input model also takes {input name: value}.
    again = await call(pool, directory, {"x": rows})
    np.testing.assert_allclose(output(again), linear, rtol=1e-6)
    assert again.loads == 1 and again.pid == first.pid

    code, _, message = error_of(await call(pool, directory, [[1, 2]]))
    assert code == "validation_error" and "invalid inputs" in message
    code, _, message = error_of(await call(pool, directory, rows, parameters={"k": 1}))
    assert code == "validation_error" and "no parameters" in message
    code, _, message = error_of(await call(pool, directory, [["a", "b", "c"]]))
    assert code == "validation_error" and "float32" in message


async def test_onnx_multi_input(pool: ExecutorPool, tmp_path: Path) -> None:
    methods = {
        "run": onnx_method(TWO_INPUTS, output_name="sum"),
        "count": onnx_method(TWO_INPUTS, output_name="count"),
    }
    directory = write_onnx_servable(tmp_path, "twoin", "two", methods)
    a, b = [[1, 2], [3, 4], [5, 6]], np.array([[0.5, 0.5], [1, 1], [2, 2]], dtype=np.float64)
    summed = output(await call(pool, directory, {"a": a, "b": b}))
    assert summed.dtype == np.float32
    np.testing.assert_allclose(summed, np.asarray(a, dtype=np.float32) + b.astype(np.float32))
    count = output(await call(pool, directory, {"b": b, "a": a}, method="count"))
    assert count.dtype == np.int64 and count.tolist() == [3, 2]

    code, _, message = error_of(await call(pool, directory, a))
    assert code == "validation_error" and "2 inputs" in message and "a, b" in message
    code, _, message = error_of(await call(pool, directory, {"a": a, "c": a}))
    assert code == "validation_error" and "missing b" in message and "unknown c" in message


async def test_onnx_bad_output_name_and_bad_model(pool: ExecutorPool, tmp_path: Path) -> None:
    directory = write_onnx_servable(
        tmp_path, "badout", "linear", {"run": onnx_method(), "nope": onnx_method(output_name="logits")}
    )
    code, _, message = error_of(await call(pool, directory, [[1, 2, 3]]))
    assert code == "validation_error"
    assert "output_name 'logits'" in message and "its outputs: linear, relu" in message

    missing = write_servable(
        tmp_path, "alice", "nomodel", 1, shim=ONNX_SHIM, methods={"run": onnx_method()},
        dlhub_files={"model": "model.onnx"},
    )  # fmt: skip
    code, exception_type, message = error_of(await call(pool, missing, [[1, 2, 3]]))
    assert (code, exception_type) == ("servable_error", "FileNotFoundError") and "model.onnx" in message

    garbage = write_servable(
        tmp_path, "alice", "garbage", 1, shim=ONNX_SHIM, methods={"run": onnx_method()},
        files={"model.onnx": b"not an onnx model"}, dlhub_files={"model": "model.onnx"},
    )  # fmt: skip
    code, _, message = error_of(await call(pool, garbage, [[1, 2, 3]]))
    assert code == "servable_error" and "cannot load ONNX model 'model.onnx'" in message
    assert pool.respawns == 0


def test_missing_onnxruntime_is_a_clear_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_onnx_servable(tmp_path, "noort", "linear", {"run": onnx_method()})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(OnnxRuntimeMissing) as caught:
        load_servable(directory)
    assert isinstance(caught.value, ServableError) and caught.value.code == "servable_error"
    assert "pip install dlhub[onnx]" in caught.value.message
    assert isinstance(caught.value.__cause__, ImportError)


def test_onnx_intra_op_threads_knob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dlhub.worker.servables.onnx_model import INTRA_OP_THREADS_ENV

    directory = write_onnx_servable(tmp_path, "threads", "linear", {"run": onnx_method()})
    servable: Any = load_servable(directory)
    assert servable.session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv(INTRA_OP_THREADS_ENV, "2")
    servable = load_servable(directory)
    assert servable.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv(INTRA_OP_THREADS_ENV, "zero")
    with pytest.raises(ServableError, match="positive integer"):
        load_servable(directory)
