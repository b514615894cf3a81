"""Framework loading without a stack: a missing framework is a typed error, torch falls back to the CPU
(split from tests/stack/test_e2e_ml.py)."""

from __future__ import annotations

import pytest

from dlhub.worker.servables.base import ServableLoadError
from dlhub.worker.servables.frameworks import FrameworkMissing, require
from dlhub.worker.servables.torch_model import resolve_device
from tests.support.ml_servables import (
    TORCH_SHIM,
)


def test_missing_framework_is_a_typed_load_error() -> None:
    with pytest.raises(FrameworkMissing) as excinfo:
        require("dlhub_no_such_framework", "torch", TORCH_SHIM)
    assert "pip install 'dlhub[torch]'" in excinfo.value.message
    assert isinstance(excinfo.value.__cause__, ImportError)


def test_torch_device_falls_back_to_cpu_when_absent() -> None:
    import torch

    assert resolve_device(torch, "") == ("cpu", None)
    missing = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device, reason = resolve_device(torch, f"cuda:{missing}")
    assert device == "cpu" and reason is not None and f"cuda:{missing}" in reason
    with pytest.raises(ServableLoadError):
        resolve_device(torch, "not-a-device")
