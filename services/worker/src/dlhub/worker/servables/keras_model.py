"""``keras.KerasServable``: a Keras 3 model, from a ``.keras`` file or a legacy HDF5 file Keras can read.

Metadata layout (what the DLHub SDK's ``KerasModel.create_model(model_path, output_names, arch_path,
custom_objects)`` writes)::

    "dlhub": {"files": {"model": "model.keras", "arch": "arch.json"}, ...}   # arch optional
    "servable": {"type": "Keras Model", "shim": "keras.KerasServable", "model_type": "Deep NN",
                 "options": {"custom_objects": {"MyLayer": "layers_mod.MyLayer"}},   # optional
                 "methods": {"run": {"input": {"type": "ndarray", "shape": [null, 4]}, "output": ...,
                                     "parameters": {},
                                     "method_details": {"method_name": "predict", "classes": ["y"]}}}}

``dlhub.files.model`` is a ``.keras`` archive or an HDF5 file (``.h5``, ``.hdf5``, or the SDK's ``.hd5``),
loaded with ``keras.saving.load_model(compile=False)`` in safe mode. With ``dlhub.files.arch`` the model file
holds only the weights: the architecture comes from a JSON file (``model.to_json()``) or another model file,
and the weights are loaded into it (YAML architectures are gone from Keras 3). ``options.custom_objects``
maps names to ``module.Class`` paths, imported from the package (or installed) and handed to Keras.

Methods: ``method_details.method_name`` is ``predict`` (the default; ``method_details.batch_size``, default
Keras' 32; inputs that fit in one batch go to ``predict_on_batch``, the same computation without the
per-call data pipeline of ``predict``), ``__call__`` (the model called with ``training=False``) or another
method of the model, called with the inputs and the request's ``parameters``.
``method_details.output_name`` (a name in ``model.output_names``) or ``output_index`` selects one output of
a multi-output model, so several methods can expose different outputs of one loaded model. ``classes``
(from the SDK) is descriptive only.

Inputs: one array for a single-input model; a list (one array per input, in ``model.inputs`` order) or a dict
keyed by input name for several inputs. Values become arrays of each input's dtype. Outputs: an ndarray, a
list of ndarrays for several outputs (a dict for a model with dict outputs).

With the TensorFlow backend, ``DLHUB_WORKER__TF_INTRA_OP_THREADS`` / ``DLHUB_WORKER__TF_INTER_OP_THREADS``
set its threads (default 1 each).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError, servable_section
from dlhub.worker.servables.frameworks import configure_tensorflow, require, to_numpy
from dlhub.worker.servables.python_function import import_servable_module, module_roots, resolve_attribute

DEFAULT_MODEL_FILE = "model.keras"
# Keras' own default batch size of predict().
KERAS_PREDICT_BATCH = 32
HDF5_SUFFIXES = (".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class KerasServable(Servable):
    shim = "keras.KerasServable"

    def __init__(self) -> None:
        super().__init__()
        self.keras: Any = None
        self.model: Any = None
        self.input_names: list[str] = []
        self.input_dtypes: list[str | None] = []
        self._functions: dict[str, Callable[[Any, dict[str, Any]], Any]] = {}

    def _load(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        keras = self.keras = require("keras", "keras", self.shim)
        if keras.backend.backend() == "tensorflow":
            configure_tensorflow(self.shim)
        path = self.files_entry("model") or self.files_dir / DEFAULT_MODEL_FILE
        if not path.is_file():
            raise ServableLoadError(f"model file {path.name!r} not found in the servable's files") from (
                FileNotFoundError(str(path))
            )
        custom_objects = self._custom_objects()
        arch = self.files_entry("arch")
        try:
            self.model = self._read(path, arch, custom_objects)
        except ServableLoadError:
            raise
        except Exception as exc:
            raise ServableLoadError(
                f"cannot load Keras model {path.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.input_names = [str(getattr(t, "name", "")) for t in self.model.inputs]
        self.input_dtypes = [getattr(t, "dtype", None) for t in self.model.inputs]
        for method in self.methods:
            self._functions[method] = self._method(method)

    # -- loading ---------------------------------------------------------------------------------------------

    def _custom_objects(self) -> dict[str, Any]:
        options = servable_section(self.metadata).get("options") or {}
        declared = options.get("custom_objects") if isinstance(options, dict) else None
        if not declared:
            return {}
        field = "servable.options.custom_objects"
        if not isinstance(declared, dict):
            raise ValidationFailed(f"{field} must map names to 'module.Class' paths", field=field)
        objects: dict[str, Any] = {}
        for name, target in declared.items():
            module_name, _, attribute = str(target).rpartition(".")
            if not module_name or not attribute:
                raise ValidationFailed(f"{field}.{name} must be 'module.Class', got {target!r}", field=field)
            roots = module_roots(self.files_dir, self.metadata, module_name)
            objects[str(name)] = resolve_attribute(
                import_servable_module(module_name, roots), module_name, attribute
            )
        return objects

    def _read(self, path: Path, arch: Path | None, custom_objects: dict[str, Any]) -> Any:
        keras = self.keras
        if arch is None:
            with _keras_readable(path) as readable:
                return keras.saving.load_model(readable, custom_objects=custom_objects, compile=False)
        if not arch.is_file():
            raise ServableLoadError(
                f"architecture file {arch.name!r} not found in the servable's files"
            ) from (FileNotFoundError(str(arch)))
        if arch.suffix == ".json":
            model = keras.models.model_from_json(arch.read_text(), custom_objects=custom_objects)
        elif arch.suffix in (".yml", ".yaml"):
            raise ServableLoadError(
                f"architecture file {arch.name!r}: Keras 3 cannot read YAML architectures; publish "
                "model.to_json() or a .keras file"
            )
        else:
            with _keras_readable(arch) as readable:
                model = keras.saving.load_model(readable, custom_objects=custom_objects, compile=False)
        with _keras_readable(path) as readable:
            model.load_weights(readable)
        return model

    def _method(self, method: str) -> Callable[[Any, dict[str, Any]], Any]:
        details = self.method_details(method)
        field = f"servable.methods.{method}.method_details"
        name = details.get("method_name") or "predict"
        pick = self._output_selector(method, details)
        if name == "predict":
            batch_size = details.get("batch_size")
            if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
                raise ValidationFailed(
                    f"{field}.batch_size must be a positive integer", field=f"{field}.batch_size"
                )
            return self._predictor(batch_size, pick)
        if name == "__call__":
            model = self.model
            return lambda x, params: pick(to_numpy(model(x, training=False, **params)))
        function = getattr(self.model, str(name), None)
        if not callable(function):
            raise ServableLoadError(f"method {method!r}: the Keras model has no method {name!r}")
        return lambda x, params: pick(to_numpy(function(x, **params)))

    def _predictor(
        self, batch_size: int | None, pick: Callable[[Any], Any]
    ) -> Callable[[Any, dict[str, Any]], Any]:
        """``predict``, except that inputs that fit in one of its batches go to ``predict_on_batch``: the
        same computation without the data pipeline ``predict`` builds on every call (~90 ms on a CPU)."""
        model = self.model
        one_batch = batch_size or KERAS_PREDICT_BATCH

        def run(x: Any, params: dict[str, Any]) -> Any:
            if not params and _rows(x) <= one_batch:
                return pick(to_numpy(model.predict_on_batch(x)))
            return pick(model.predict(x, **{"batch_size": batch_size, "verbose": 0, **params}))

        return run

    def _output_selector(self, method: str, details: dict[str, Any]) -> Callable[[Any], Any]:
        field = f"servable.methods.{method}.method_details"
        names = [str(n) for n in getattr(self.model, "output_names", None) or []]
        if "output_name" in details:
            name = details["output_name"]
            if name not in names:
                raise ValidationFailed(
                    f"{field}.output_name {name!r} is not an output of the Keras model; its outputs: "
                    f"{', '.join(names) or 'none'}",
                    field=f"{field}.output_name",
                )
            index = names.index(name)
            return lambda out: out[name] if isinstance(out, dict) else out[index]
        if "output_index" in details:
            index = details["output_index"]
            if not isinstance(index, int) or not 0 <= index < len(self.model.outputs):
                raise ValidationFailed(
                    f"{field}.output_index must be an integer below {len(self.model.outputs)}",
                    field=f"{field}.output_index",
                )
            return lambda out: out[index]
        return lambda out: out

    # -- running ---------------------------------------------------------------------------------------------

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        return self._functions[method](self._arrays(inputs), parameters)

    def _arrays(self, inputs: Any) -> Any:
        count = len(self.input_names)
        if count > 1 and isinstance(inputs, dict):
            unknown = sorted(str(k) for k in inputs if k not in self.input_names)
            missing = [n for n in self.input_names if n not in inputs]
            if unknown or missing:
                raise ValidationFailed(
                    f"inputs of the Keras model: missing {', '.join(missing) or 'none'}; unknown "
                    f"{', '.join(unknown) or 'none'} (expected: {', '.join(self.input_names)})",
                    field="inputs",
                )
            return {
                n: _array(inputs[n], d, f"inputs.{n}")
                for n, d in zip(self.input_names, self.input_dtypes, strict=True)
            }
        if count > 1:
            if not isinstance(inputs, list | tuple) or len(inputs) != count:
                raise ValidationFailed(
                    f"the Keras model has {count} inputs ({', '.join(self.input_names)}): send a list of "
                    f"{count} arrays or an object keyed by input name",
                    field="inputs",
                )
            return [
                _array(v, d, f"inputs[{i}]")
                for i, (v, d) in enumerate(zip(inputs, self.input_dtypes, strict=True))
            ]
        return _array(inputs, self.input_dtypes[0] if self.input_dtypes else None, "inputs")


def _array(value: Any, dtype: str | None, path: str) -> Any:
    import numpy as np

    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(
            f"{path} cannot be converted to an array of {dtype}: {exc}", field=path
        ) from exc


@contextmanager
def _keras_readable(path: Path) -> Iterator[str]:
    """``path``, or for an HDF5 file with a suffix Keras 3 does not recognise (the DLHub SDK's ``.hd5``), a
    link to it named ``.h5``: Keras picks the reader from the file name."""
    if path.suffix in (".keras", *HDF5_SUFFIXES) or not _is_hdf5(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="dlhub-keras-") as tmp:
        link = Path(tmp) / (path.stem + ".h5")
        link.symlink_to(path.resolve())
        yield str(link)


def _is_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def _rows(x: Any) -> int:
    """The batch size of a model input: rows of the array, or of the first array of a list or dict."""
    if isinstance(x, dict):
        x = next(iter(x.values()), None)
    elif isinstance(x, (list, tuple)) and x and hasattr(x[0], "shape"):
        x = x[0]
    shape = getattr(x, "shape", None)
    if shape:
        return int(shape[0])
    return len(x) if isinstance(x, (list, tuple)) else 1
