"""Servable loaders, one per ``servable.shim``, behind the ``Servable`` base.

The PyTorch, Keras and TensorFlow loaders import their framework only when they load a model, so a worker
without those libraries starts and serves every other type (and fails such a servable with a typed error
naming the extra to install).
"""

from __future__ import annotations

from pathlib import Path

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError, read_metadata, servable_section
from dlhub.worker.servables.keras_model import KerasServable
from dlhub.worker.servables.onnx_model import ONNXServable
from dlhub.worker.servables.python_class import PythonClassMethodServable
from dlhub.worker.servables.python_function import PythonStaticMethodServable
from dlhub.worker.servables.scikit_learn import ScikitLearnServable
from dlhub.worker.servables.tensorflow_model import TensorFlowServable
from dlhub.worker.servables.torch_model import TorchServable

SHIMS: dict[str, type[Servable]] = {
    cls.shim: cls
    for cls in (
        PythonStaticMethodServable,
        PythonClassMethodServable,
        ScikitLearnServable,
        ONNXServable,
        TorchServable,
        KerasServable,
        TensorFlowServable,
    )
}

__all__ = ["SHIMS", "Servable", "ServableLoadError", "load_servable"]


def load_servable(version_dir: Path) -> Servable:
    """Read ``metadata.json`` in ``version_dir`` and load the servable with the loader its shim names."""
    metadata = read_metadata(version_dir)
    shim = servable_section(metadata).get("shim")
    cls = SHIMS.get(shim) if isinstance(shim, str) else None
    if cls is None:
        raise ValidationFailed(
            f"unknown servable shim {shim!r}; this worker supports: {', '.join(sorted(SHIMS))}",
            field="servable.shim",
        )
    servable = cls()
    servable.load(version_dir, metadata)
    return servable
