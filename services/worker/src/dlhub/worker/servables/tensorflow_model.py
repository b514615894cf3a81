"""``tensorflow.TensorFlowServable``: a TensorFlow SavedModel, each of its signatures a method.

Metadata layout (what the DLHub SDK's ``TensorFlowModel.create_model(export_directory)`` writes)::

    "dlhub": {"files": {"other": ["saved_model.pb", "variables/variables.index",
                                  "variables/variables.data-00000-of-00001"]}, ...}
    "servable": {"type": "TensorFlow Model", "shim": "tensorflow.TensorFlowServable",
                 "methods": {"run": {"input": {"type": "ndarray", "shape": [null, 3],
                                               "item_type": {"type": "float"}}, "output": ..., ...},
                             "scalar_multiply": {"input": {"type": "tuple", "element_types": [
                                 {"type": "ndarray", "description": "x:0", ...},
                                 {"type": "ndarray", "description": "z:0", ...}]}, ...}}}

The SavedModel directory is the directory of the ``saved_model.pb`` listed in ``dlhub.files`` (as the SDK's
shim found it), or ``dlhub.files.model`` when that names a directory (a DLHub extension), else the files
directory itself. It is loaded once with ``tf.saved_model.load``.

Methods map to signatures: a method's signature is ``method_details.signature`` when given, else the
method's own name, and ``run`` falls back to ``serving_default`` (the SDK renames that signature to
``run``). TF1 SavedModels written by ``SavedModelBuilder`` load the same way (their
``method_details.input_nodes``/``output_nodes`` are not needed).

Inputs: a signature with one input takes the value directly (or a dict naming it); several inputs take a
dict ``{name: value}`` or, when the method declares a ``tuple``, a list in the declared order (element
``description`` names the input, as the SDK writes it, e.g. ``"x:0"``; otherwise the signature's own input
order). Each value becomes a tensor of the dtype the signature declares.

Outputs: a signature returns a dict of tensors. ``method_details.output_name`` picks one; otherwise a single
output is returned as an array, several as a dict ``{name: array}`` (or, when the method declares a
``tuple`` output, as a list ordered by name, as the SDK described them).

Threads: ``DLHUB_WORKER__TF_INTRA_OP_THREADS`` and ``DLHUB_WORKER__TF_INTER_OP_THREADS`` (default 1 each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError
from dlhub.worker.servables.frameworks import configure_tensorflow, element_types

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_TENSOR_SUFFIX = re.compile(r":\d+$")


@dataclass
class Signature:
    """One method: the concrete function, its inputs (name -> numpy dtype) in call order, its outputs."""

    key: str
    function: Any
    inputs: dict[str, Any]
    order: list[str]
    output: str | None
    as_list: bool


class TensorFlowServable(Servable):
    shim = "tensorflow.TensorFlowServable"

    def __init__(self) -> None:
        super().__init__()
        self.tf: Any = None
        self.model: Any = None
        self._signatures: dict[str, Signature] = {}

    def _load(self) -> None:
        tf = self.tf = configure_tensorflow(self.shim)
        directory = self._saved_model_dir()
        try:
            self.model = tf.saved_model.load(str(directory))
        except Exception as exc:
            raise ServableLoadError(
                f"cannot load the SavedModel in {self._relative(directory)!r}: {type(exc).__name__}: {exc}"
            ) from exc
        available = dict(self.model.signatures)
        for method in self.methods:
            self._signatures[method] = self._signature(method, available)

    # -- loading ---------------------------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.files_dir)) if path.is_relative_to(self.files_dir) else path.name

    def _saved_model_dir(self) -> Path:
        model = self.files_entry("model")
        if model is not None and model.is_dir():
            return model
        files = (self.metadata.get("dlhub") or {}).get("files") or {}
        entries: list[str] = []
        for value in files.values() if isinstance(files, dict) else ():
            entries.extend([value] if isinstance(value, str) else [v for v in value if isinstance(v, str)])
        for entry in entries:
            pure = PurePosixPath(entry)
            if pure.name in SAVED_MODEL_FILES:
                return self.files_dir.joinpath(*pure.parent.parts)
        if any((self.files_dir / name).is_file() for name in SAVED_MODEL_FILES):
            return self.files_dir
        raise ServableLoadError(
            "no SavedModel found: list its saved_model.pb in dlhub.files or name its directory in "
            "dlhub.files.model"
        ) from FileNotFoundError(str(self.files_dir / SAVED_MODEL_FILES[0]))

    def _signature(self, method: str, available: dict[str, Any]) -> Signature:
        details = self.method_details(method)
        key = details.get("signature") or method
        if key not in available and method == "run" and "signature" not in details:
            key = DEFAULT_SIGNATURE
        if key not in available:
            raise ServableLoadError(
                f"method {method!r}: the SavedModel has no signature {key!r}; its signatures: "
                f"{', '.join(sorted(available)) or 'none'}"
            )
        function = available[key]
        _, specs = function.structured_input_signature
        inputs = {name: spec.dtype.as_numpy_dtype for name, spec in specs.items()}
        spec = self.method_spec(method)
        outputs = sorted(function.structured_outputs)
        output = details.get("output_name")
        field = f"servable.methods.{method}.method_details.output_name"
        if output is not None and output not in outputs:
            raise ValidationFailed(
                f"{field} {output!r} is not an output of signature {key!r}; "
                f"its outputs: {', '.join(outputs)}",
                field=field,
            )
        if output is None and len(outputs) == 1:
            output = outputs[0]
        as_list = isinstance(spec.get("output"), dict) and spec["output"].get("type") == "tuple"
        return Signature(
            key, function, inputs, self._input_order(spec.get("input"), function, inputs), output, as_list
        )

    @staticmethod
    def _input_order(declared: Any, function: Any, inputs: dict[str, Any]) -> list[str]:
        """The order in which a list of inputs is matched to the signature's named inputs."""
        elements = element_types(declared)
        if elements:
            described = [
                _TENSOR_SUFFIX.sub("", str(e.get("description", ""))) if isinstance(e, dict) else ""
                for e in elements
            ]
            if sorted(described) == sorted(inputs):
                return described
        own = [_TENSOR_SUFFIX.sub("", t.name) for t in function.inputs]
        order = [name for name in own if name in inputs]
        return order if sorted(order) == sorted(inputs) else sorted(inputs)

    # -- running ---------------------------------------------------------------------------------------------

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if parameters:
            raise ValidationFailed(
                f"method {method!r} of a TensorFlow SavedModel takes no parameters, "
                f"got: {', '.join(sorted(parameters))}",
                field="parameters",
            )
        signature = self._signatures[method]
        feed = {
            name: self._tensor(signature, name, value)
            for name, value in self._named(signature, inputs).items()
        }
        results = signature.function(**feed)
        if signature.output is not None:
            return results[signature.output].numpy()
        if signature.as_list:
            return [results[name].numpy() for name in sorted(results)]
        return {name: tensor.numpy() for name, tensor in results.items()}

    @staticmethod
    def _named(signature: Signature, inputs: Any) -> dict[str, Any]:
        expected = signature.order
        if isinstance(inputs, dict) and (len(expected) > 1 or set(inputs) == set(expected)):
            missing = [n for n in expected if n not in inputs]
            unknown = sorted(str(n) for n in inputs if n not in expected)
            if missing or unknown:
                raise ValidationFailed(
                    f"inputs of signature {signature.key!r}: missing {', '.join(missing) or 'none'}; "
                    f"unknown {', '.join(unknown) or 'none'} (expected: {', '.join(expected)})",
                    field="inputs",
                )
            return {n: inputs[n] for n in expected}
        if len(expected) == 1:
            return {expected[0]: inputs}
        if isinstance(inputs, list | tuple) and len(inputs) == len(expected):
            return dict(zip(expected, inputs, strict=True))
        raise ValidationFailed(
            f"signature {signature.key!r} has {len(expected)} inputs ({', '.join(expected)}): send an object "
            f"keyed by input name or a list of {len(expected)} values in that order",
            field="inputs",
        )

    def _tensor(self, signature: Signature, name: str, value: Any) -> Any:
        import numpy as np

        dtype = signature.inputs[name]
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(
                f"input {name!r} cannot be converted to an array of {np.dtype(dtype).name}: {exc}",
                field=f"inputs.{name}",
            ) from exc
        return self.tf.constant(array)
