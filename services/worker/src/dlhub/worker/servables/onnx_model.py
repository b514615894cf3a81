"""``onnx.ONNXServable`` (a DLHub extension, not in the original SDK): an ONNX model run with onnxruntime.

Metadata layout::

    "dlhub": {"files": {"model": "model.onnx"}, ...}          # default model.onnx
    "servable": {"type": "ONNX model", "shim": "onnx.ONNXServable",
                 "methods": {"run": {"input": ..., "output": ..., "parameters": {},
                                     "method_details": {"output_name": "y"}}}}

Inputs: a model with one input takes ``inputs`` directly (a nested list or an ndarray; a dict ``{name:
value}`` naming that input also works); a model with several inputs takes a dict mapping every input name to
its value. Each value is converted with ``numpy.asarray`` to the dtype the model declares for that input.

Outputs, per method (``method_details``): the model's first output by default, the output named
``output_name``, or every output as a dict ``{name: array}`` with ``all_outputs: true``. Several methods may
expose different outputs of the same model; the model is loaded once. Methods take no ``parameters``.

The session uses ``DLHUB_WORKER__ONNX_INTRA_OP_THREADS`` intra-op threads (default 1: each executor process
serves one task at a time and a worker runs several processes) and one inter-op thread, on the CPU provider.
"""

from __future__ import annotations

from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError
from dlhub.worker.servables.frameworks import positive_int_env

INTRA_OP_THREADS_ENV = "DLHUB_WORKER__ONNX_INTRA_OP_THREADS"
DEFAULT_INTRA_OP_THREADS = 1
DEFAULT_MODEL_FILE = "model.onnx"

# ONNX tensor element types (as onnxruntime names them) -> numpy dtype names.
TENSOR_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class OnnxRuntimeMissing(ServableLoadError):
    """onnxruntime is not installed where the executor runs."""


def intra_op_threads() -> int:
    return positive_int_env(INTRA_OP_THREADS_ENV, DEFAULT_INTRA_OP_THREADS)


class ONNXServable(Servable):
    shim = "onnx.ONNXServable"

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.input_names: list[str] = []
        self.input_dtypes: dict[str, str | None] = {}
        self.output_names: list[str] = []
        # method -> the output names it returns, and whether it returns them as a dict
        self._outputs: dict[str, tuple[list[str], bool]] = {}

    def _load(self) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise OnnxRuntimeMissing(
                "onnxruntime is not installed in this worker's environment; pip install dlhub[onnx]"
            ) from exc
        path = self.files_entry("model") or self.files_dir / DEFAULT_MODEL_FILE
        if not path.is_file():
            raise ServableLoadError(f"model file {path.name!r} not found in the servable's files") from (
                FileNotFoundError(str(path))
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ServableLoadError(
                f"cannot load ONNX model {path.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        for node in self.session.get_inputs():
            self.input_names.append(node.name)
            self.input_dtypes[node.name] = TENSOR_DTYPES.get(node.type)
        self.output_names = [node.name for node in self.session.get_outputs()]
        for method in self.methods:
            self._outputs[method] = self._method_outputs(method)

    def _method_outputs(self, method: str) -> tuple[list[str], bool]:
        details = self.method_details(method)
        field = f"servable.methods.{method}.method_details"
        if details.get("all_outputs"):
            return list(self.output_names), True
        name = details.get("output_name")
        if name is None:
            if not self.output_names:
                raise ServableLoadError("the ONNX model has no outputs")
            return [self.output_names[0]], False
        if name not in self.output_names:
            raise ValidationFailed(
                f"{field}.output_name {name!r} is not an output of the ONNX model; its outputs: "
                f"{', '.join(self.output_names)}",
                field=f"{field}.output_name",
            )
        return [name], False

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if parameters:
            raise ValidationFailed(
                f"method {method!r} of an ONNX model takes no parameters, "
                f"got: {', '.join(sorted(parameters))}",
                field="parameters",
            )
        feed = {name: self._tensor(name, value) for name, value in self._named_inputs(inputs).items()}
        names, as_dict = self._outputs[method]
        try:
            results = self.session.run(names, feed)
        except Exception as exc:
            if type(exc).__name__ in {"InvalidArgument", "InvalidShape"}:  # onnxruntime's input errors
                raise ValidationFailed(f"invalid inputs for the ONNX model: {exc}", field="inputs") from exc
            raise
        if as_dict:
            return dict(zip(names, results, strict=True))
        return results[0]

    def _named_inputs(self, inputs: Any) -> dict[str, Any]:
        expected = self.input_names
        if len(expected) == 1:
            (name,) = expected
            if isinstance(inputs, dict) and set(inputs) == {name}:
                return {name: inputs[name]}
            return {name: inputs}
        if not isinstance(inputs, dict):
            raise ValidationFailed(
                f"the ONNX model has {len(expected)} inputs and expects an object mapping each input name to "
                f"its value ({', '.join(expected)}), got {type(inputs).__name__}",
                field="inputs",
            )
        missing = [n for n in expected if n not in inputs]
        unknown = sorted(str(n) for n in inputs if n not in expected)
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown {', '.join(unknown)}")
            raise ValidationFailed(
                f"inputs of the ONNX model: {'; '.join(problems)} (expected: {', '.join(expected)})",
                field="inputs",
            )
        return {n: inputs[n] for n in expected}

    def _tensor(self, name: str, value: Any) -> Any:
        import numpy as np

        dtype = self.input_dtypes.get(name)
        try:
            return np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(
                f"input {name!r} cannot be converted to an array of {dtype}: {exc}", field="inputs"
            ) from exc
