"""What the PyTorch, Keras and TensorFlow loaders share: importing the framework (a missing one is a typed
error naming the extra to install), thread settings from the environment, DLHub item types as dtypes, and
turning framework tensors into NumPy arrays for the codec.

Thread settings default to one thread per executor process: a worker runs several executor processes, each
serving one task at a time, so more threads per process only compete for the same cores.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

from dlhub.worker.servables.base import ServableLoadError

TF_INTRA_OP_THREADS_ENV = "DLHUB_WORKER__TF_INTRA_OP_THREADS"
TF_INTER_OP_THREADS_ENV = "DLHUB_WORKER__TF_INTER_OP_THREADS"
DEFAULT_THREADS = 1

# DLHub argument item types (``{"type": "float"}``) -> NumPy dtype names. "float" is the framework's default
# float width (what the DLHub SDK's shims used: ``torch.float``, Keras' float32), not Python's float64.
ITEM_DTYPES = {
    "float": "float32",
    "number": "float32",
    "integer": "int64",
    "boolean": "bool",
    "complex": "complex64",
}

_tensorflow_configured = False


class FrameworkMissing(ServableLoadError):
    """The library a servable type needs is not installed where the executor runs."""


def require(module: str, extra: str, shim: str) -> ModuleType:
    """Import ``module`` or raise ``FrameworkMissing`` naming the DLHub extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FrameworkMissing(
            f"{shim} servables need {module}, which is not installed in this worker's environment; "
            f"pip install 'dlhub[{extra}]'"
        ) from exc


def positive_int_env(name: str, default: int = DEFAULT_THREADS) -> int:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ServableLoadError(f"{name} must be a positive integer, got {raw!r}")
    return value


def configure_tensorflow(shim: str) -> ModuleType:
    """Import TensorFlow quietly and apply the thread settings, once per process.

    TensorFlow accepts thread settings only before its runtime starts; when something already started it
    (a model loaded earlier by other means), the runtime keeps its settings rather than failing the load.
    """
    global _tensorflow_configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ info logs out of the worker's log
    tf = require("tensorflow", "tensorflow", shim)
    if not _tensorflow_configured:
        # Keras retraces predict for each new batch size and TensorFlow warns about it on every request.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        intra = positive_int_env(TF_INTRA_OP_THREADS_ENV)
        inter = positive_int_env(TF_INTER_OP_THREADS_ENV)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:
            pass
        _tensorflow_configured = True
    return tf


def item_dtype(description: Any, default: str | None = None) -> str | None:
    """The NumPy dtype name of an argument type's ``item_type`` (``{"type": "float"}``, ``"float"`` or a
    NumPy name such as ``"float64"``), else ``default``."""
    if not isinstance(description, dict):
        return default
    item = description.get("item_type")
    name = item.get("type") if isinstance(item, dict) else item
    if not isinstance(name, str):
        return default
    if name in ITEM_DTYPES:
        return ITEM_DTYPES[name]
    import numpy as np

    try:
        return np.dtype(name).name
    except TypeError:
        return default


def element_types(description: Any) -> list[Any] | None:
    """The element descriptions of a ``tuple`` (or a ``list`` declared with several item types, as the DLHub
    SDK's TF1 builder wrote), else ``None``: the method takes one argument."""
    if not isinstance(description, dict):
        return None
    kind = description.get("type")
    if kind == "tuple" and isinstance(description.get("element_types"), list):
        return list(description["element_types"])
    if kind == "list" and isinstance(description.get("item_type"), list):
        return list(description["item_type"])
    return None


def to_numpy(value: Any) -> Any:
    """Framework tensors (PyTorch, TensorFlow) in ``value`` become NumPy arrays; tuples become lists."""
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_numpy(item) for item in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    if hasattr(value, "numpy") and callable(value.numpy):  # tf.Tensor
        return value.numpy()
    return value
