"""Small real models for the class-method and ONNX servable tests, built in the test (no downloads)."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

CLASS_SHIM = "python.PythonClassMethodServable"
ONNX_SHIM = "onnx.ONNXServable"

# A module the package ships; its classes are pickled by the test and restored by the executor.
CLASS_MODULE = textwrap.dedent(
    """
    import os

    import numpy as np

    TAG = {tag!r}


    class Scaler:
        def __init__(self, factor=1, offset=0, weights=None):
            self.factor = factor
            self.offset = offset
            self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
            self.calls = 0

        def transform(self, x):
            self.calls += 1
            return [v * self.factor + self.offset for v in x]

        def scale(self, x, extra=0):
            return x * self.factor + extra

        def pair(self, a, b):
            return (a + b) * self.factor

        def project(self, x):
            return np.asarray(x, dtype=np.float32) @ self.weights

        def state(self, x):
            self.calls += 1
            return {{"calls": self.calls, "pid": os.getpid(), "tag": TAG, "module": __name__}}

        def fail(self, x):
            raise RuntimeError(f"cannot handle {{x!r}}")
    """
)

WEIGHTS = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]


def import_module_file(directory: Path, module_name: str, source: str) -> ModuleType:
    """Write ``<module_name>.py`` into ``directory`` and import it in this process (to pickle its objects or
    build and save its models)."""
    path = directory / f"{module_name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def import_class_module(directory: Path, module_name: str, tag: str = "A") -> ModuleType:
    return import_module_file(directory, module_name, CLASS_MODULE.format(tag=tag))


def pickled_scaler(module: ModuleType, **init: Any) -> bytes:
    return pickle.dumps(module.Scaler(**init))


def class_method(
    method_name: str,
    *,
    autobatch: bool = False,
    unpack: bool = False,
    parameters: dict[str, Any] | None = None,
    **details: Any,
) -> dict[str, Any]:
    return {
        "input": {"type": "python object", "python_type": "object"},
        "output": {"type": "python object", "python_type": "object"},
        "parameters": parameters or {},
        "method_details": {"method_name": method_name, "autobatch": autobatch, "unpack": unpack, **details},
    }


NDARRAY = {"type": "ndarray", "shape": [None, None], "item_type": {"type": "float"}}
# What a model with several inputs declares: an object mapping each input name to its array.
TWO_INPUTS = {"type": "dict", "properties": {"a": NDARRAY, "b": NDARRAY}}


def onnx_method(input: dict[str, Any] | None = None, **details: Any) -> dict[str, Any]:
    return {"input": input or NDARRAY, "output": NDARRAY, "parameters": {}, "method_details": details}


# -- ONNX graphs, built with onnx.helper ------------------------------------------------------------------

LINEAR_W = np.array([[1.0, -1.0], [2.0, 0.5], [-3.0, 1.0]], dtype=np.float32)
LINEAR_B = np.array([0.5, -1.0], dtype=np.float32)


def _save(graph: Any, path: Path) -> bytes:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="dlhub-tests")
    model.ir_version = 8
    checker.check_model(model)
    data: bytes = model.SerializeToString()
    path.write_bytes(data)
    return data


def linear_relu_model(path: Path) -> bytes:
    """``x`` (float, [N, 3]) -> ``linear`` = x @ W + b and ``relu`` = max(linear, 0)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["linear"]),
            helper.make_node("Relu", ["linear"], ["relu"]),
        ],
        "linear_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("linear", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, [None, 2]),
        ],
        initializer=[numpy_helper.from_array(LINEAR_W, "W"), numpy_helper.from_array(LINEAR_B, "b")],
    )
    return _save(graph, path)


def linear_relu_reference(x: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    linear = np.asarray(x, dtype=np.float32) @ LINEAR_W + LINEAR_B
    return linear, np.maximum(linear, 0)


def two_input_model(path: Path) -> bytes:
    """``a`` (float, [N, 2]) and ``b`` (double, [N, 2]) -> ``sum`` = a + float(b), ``count`` = int64 count."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["sum"]),
            helper.make_node("Shape", ["sum"], ["count"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None, 2]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("count", TensorProto.INT64, [2]),
        ],
    )
    return _save(graph, path)
