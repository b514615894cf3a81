"""``torch.TorchServable``: a PyTorch model, a TorchScript archive or a state dict with its module class.

Metadata layout (what the DLHub SDK's ``TorchModel.create_model(path, input_shape, output_shape)`` writes)::

    "dlhub": {"files": {"model": "model.pt"}, ...}                  # default model.pt
    "servable": {"type": "Torch Model", "shim": "torch.TorchServable", "model_type": "Deep NN",
                 "methods": {"run": {"input": {"type": "ndarray", "shape": [null, 4],
                                               "item_type": {"type": "float"}},
                                     "output": {...}, "parameters": {},
                                     "method_details": {"method_name": "__call__"}}}}

The model file is a TorchScript archive (``torch.jit.save(torch.jit.script(model), path)``), or, a DLHub
extension, a state dict (``torch.save(model.state_dict(), path)``) loaded into the module class that the
package ships::

    "dlhub": {"files": {"model": "weights.pt", "other": ["netmod.py"]}}
    "servable": {"options": {"module_class": "netmod:Net", "init": {"hidden": 8}}}

``module_class`` is ``"module:Class"`` (or ``"module.Class"``), imported from the package (or installed);
the class is constructed with the keyword arguments ``init`` and receives the weights with
``load_state_dict`` (strict). A state dict is read with ``torch.load(weights_only=True)``: tensors only.
A whole pickled module (``torch.save(model)``, what the original SDK's ``TorchModel`` documents hold) is
loaded too, with ``torch.load(weights_only=False)`` and the package's files first on ``sys.path`` for its
classes: like a pickled scikit-learn estimator, it is a file of the publisher's package unpickled only
inside a worker process, never data from a request. TorchScript or a state dict is the safer choice.

Methods: ``method_details.method_name`` names what to call, ``__call__`` (``run``'s default, the module's
``forward``) or another method of the module (for TorchScript, one marked ``@torch.jit.export``); a method
other than ``run`` defaults to its own name. The model is in eval mode and runs under
``torch.inference_mode``. The request's ``parameters`` are keyword arguments.

Inputs follow the method's declared ``input``: an ``ndarray`` is one tensor; a ``tuple`` (``element_types``)
is a list of tensors passed positionally; a ``dict`` with ``properties`` is passed as keyword tensors. Each
value (ndarray or nested list) becomes a tensor of its declared ``item_type`` (``float`` is the model's own
float dtype, ``integer`` int64, ``boolean`` bool, or a NumPy name such as ``float64``); without a declared
item type, floating values take the model's float dtype. Outputs: tensors become ndarrays, tuples and lists
become lists, dicts stay dicts.

Device: ``DLHUB_WORKER__TORCH_DEVICE`` (default ``cpu``; e.g. ``cuda``, ``cuda:1``, ``mps``); when that
device is not present the model runs on the CPU (and the worker logs it). Threads:
``DLHUB_WORKER__TORCH_THREADS`` intra-op threads (default 1).
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError, servable_section
from dlhub.worker.servables.frameworks import (
    element_types,
    item_dtype,
    positive_int_env,
    require,
    to_numpy,
)
from dlhub.worker.servables.python_function import (
    first_on_sys_path,
    import_servable_module,
    module_roots,
    resolve_attribute,
)

# Plain logging: the executor process does not set up structlog, and its stderr is the worker's log.
log = logging.getLogger(__name__)

DEVICE_ENV = "DLHUB_WORKER__TORCH_DEVICE"
THREADS_ENV = "DLHUB_WORKER__TORCH_THREADS"
DEFAULT_MODEL_FILE = "model.pt"

_threads_configured = False


def resolve_device(torch: Any, requested: str) -> tuple[str, str | None]:
    """``(device, why it fell back)``: the requested device when this machine has it, else ``cpu``."""
    name = requested.strip() or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ServableLoadError(f"{DEVICE_ENV}={requested!r} is not a torch device: {exc}") from exc
    if device.type == "cpu":
        return "cpu", None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > (device.index or 0):
            return str(device), None
        return "cpu", f"{name} is not available ({count} CUDA devices)"
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is not None and backend.is_available():
            return str(device), None
        return "cpu", "mps is not available"
    return "cpu", f"device type {device.type!r} is not supported"


def _configure_threads(torch: Any) -> None:
    global _threads_configured
    if not _threads_configured:
        torch.set_num_threads(positive_int_env(THREADS_ENV))
        _threads_configured = True


class TorchServable(Servable):
    shim = "torch.TorchServable"

    def __init__(self) -> None:
        super().__init__()
        self.torch: Any = None
        self.model: Any = None
        self.device = "cpu"
        self.float_dtype: Any = None
        self._functions: dict[str, Callable[..., Any]] = {}

    def _load(self) -> None:
        torch = self.torch = require("torch", "torch", self.shim)
        _configure_threads(torch)
        self.device, fallback = resolve_device(torch, os.environ.get(DEVICE_ENV, ""))
        if fallback:
            log.warning("servable %s: %s, running on cpu", self.version_dir, fallback)
        path = self.files_entry("model") or self.files_dir / DEFAULT_MODEL_FILE
        if not path.is_file():
            raise ServableLoadError(f"model file {path.name!r} not found in the servable's files") from (
                FileNotFoundError(str(path))
            )
        options = servable_section(self.metadata).get("options") or {}
        module_class = options.get("module_class") if isinstance(options, dict) else None
        if module_class is not None:
            self.model = self._from_state_dict(path, module_class, options.get("init"))
        else:
            self.model = self._from_torchscript(path)
        self.model.eval()
        self.float_dtype = self._model_float_dtype()
        for method in self.methods:
            self._functions[method] = self._bound_method(method)

    # -- loading ---------------------------------------------------------------------------------------------

    def _from_torchscript(self, path: Path) -> Any:
        torch = self.torch
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in favour of torch.export, yet it is what publishers ship today.
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:
            if _is_torchscript_archive(path):
                reason = (str(exc).splitlines() or [""])[0].partition(". ")[0]
                raise ServableLoadError(
                    f"cannot load {path.name!r} as TorchScript ({type(exc).__name__}: {reason})"
                ) from exc
        return self._from_pickled_module(path)

    def _from_pickled_module(self, path: Path) -> Any:
        """A whole module saved with ``torch.save(model)`` (the original SDK's layout)."""
        torch = self.torch
        try:
            content = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            content = None  # pickled objects beyond tensors: a whole module, read below
        if isinstance(content, Mapping):
            raise ServableLoadError(
                f"{path.name!r} holds a state dict: name its class in servable.options.module_class"
            )
        try:
            with first_on_sys_path(self.files_dir), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.load(str(path), map_location=self.device, weights_only=False)
        except Exception as exc:
            raise ServableLoadError(
                f"cannot load {path.name!r} as TorchScript or as a pickled module "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(model, torch.nn.Module):
            raise ServableLoadError(f"{path.name!r} holds a {type(model).__name__}, not a torch.nn.Module")
        return model

    def _from_state_dict(self, path: Path, module_class: Any, init: Any) -> Any:
        field = "servable.options.module_class"
        if not isinstance(module_class, str) or not module_class.strip():
            raise ValidationFailed(f"{field} must be 'module:Class'", field=field)
        if ":" in module_class:
            module_name, _, class_name = module_class.partition(":")
        else:
            module_name, _, class_name = module_class.rpartition(".")
        if not module_name or not class_name:
            raise ValidationFailed(f"{field} must be 'module:Class', got {module_class!r}", field=field)
        init = {} if init is None else init
        if not isinstance(init, dict) or not all(isinstance(k, str) for k in init):
            raise ValidationFailed(
                "servable.options.init must be an object of keyword arguments", field="servable.options.init"
            )
        module = import_servable_module(module_name, module_roots(self.files_dir, self.metadata, module_name))
        cls = resolve_attribute(module, module_name, class_name)
        try:
            model = cls(**init)
        except (Exception, SystemExit) as exc:
            raise ServableLoadError(
                f"cannot construct {module_name}.{class_name}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            state = self.torch.load(str(path), map_location=self.device, weights_only=True)
        except Exception as exc:
            raise ServableLoadError(
                f"cannot read {path.name!r} as a state dict (torch.load with weights_only=True): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(state, Mapping):
            raise ServableLoadError(f"{path.name!r} holds a {type(state).__name__}, not a state dict")
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise ServableLoadError(
                f"the state dict in {path.name!r} does not fit {module_name}.{class_name}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return model.to(self.device)

    def _model_float_dtype(self) -> Any:
        for parameter in self.model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return self.torch.float32

    def _bound_method(self, method: str) -> Callable[..., Any]:
        name = self.method_details(method).get("method_name") or ("__call__" if method == "run" else method)
        if not isinstance(name, str):
            field = f"servable.methods.{method}.method_details.method_name"
            raise ValidationFailed(f"{field} must be a string", field=field)
        target = self.model if name in ("__call__", "forward") else getattr(self.model, name, None)
        if not callable(target):
            raise ServableLoadError(
                f"method {method!r}: the {type(self.model).__name__} model has no method {name!r}"
            )
        function: Callable[..., Any] = target
        return function

    # -- running ---------------------------------------------------------------------------------------------

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        declared = self.method_spec(method).get("input")
        elements = element_types(declared)
        if elements is not None:
            args = self._positional(method, inputs, elements)
            kwargs: dict[str, Any] = {}
        elif isinstance(declared, dict) and declared.get("type") == "dict" and isinstance(inputs, dict):
            properties = declared.get("properties") or {}
            args = []
            kwargs = {str(k): self._tensor(v, properties.get(k), f"inputs.{k}") for k, v in inputs.items()}
        else:
            args, kwargs = [self._tensor(inputs, declared, "inputs")], {}
        with self.torch.inference_mode():
            output = self._functions[method](*args, **kwargs, **parameters)
        return to_numpy(output)

    def _positional(self, method: str, inputs: Any, elements: list[Any]) -> list[Any]:
        if not isinstance(inputs, list | tuple) or len(inputs) != len(elements):
            got = f"{len(inputs)} values" if isinstance(inputs, list | tuple) else type(inputs).__name__
            raise ValidationFailed(
                f"method {method!r} takes a list of {len(elements)} tensors, got {got}", field="inputs"
            )
        return [
            self._tensor(v, e, f"inputs[{i}]") for i, (v, e) in enumerate(zip(inputs, elements, strict=True))
        ]

    def _tensor(self, value: Any, declared: Any, path: str) -> Any:
        import numpy as np

        dtype = item_dtype(declared)
        # Undeclared or plain "float" values take the model's own float dtype (float32, float64, bfloat16...).
        model_float = dtype is None or _declares_plain_float(declared)
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(
                f"{path} cannot be converted to an array of {dtype}: {exc}", field=path
            ) from exc
        if array.dtype.kind not in "biufc":
            raise ValidationFailed(f"{path}: expected numbers, got an array of {array.dtype}", field=path)
        tensor = self.torch.from_numpy(np.ascontiguousarray(array))
        if model_float and tensor.is_floating_point():
            tensor = tensor.to(self.float_dtype)
        return tensor.to(self.device)


def _declares_plain_float(declared: Any) -> bool:
    """Whether the item type is the DLHub name ``float`` (or ``number``), not an explicit width."""
    item = declared.get("item_type") if isinstance(declared, dict) else None
    name = item.get("type") if isinstance(item, dict) else item
    return name in ("float", "number")


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive: a zip with ``constants.pkl`` and ``code/`` (``torch.save``'s zips lack both)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
