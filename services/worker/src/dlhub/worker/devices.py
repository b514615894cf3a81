"""The devices a Task Manager offers its servables (``Register.devices``), named ``kind:id`` (``gpu:0``).

Configured (``worker.devices``, ``--device``), the list is taken as it is; unset, GPUs are looked for:
``CUDA_VISIBLE_DEVICES`` when it is set (the operator's choice of GPUs for this process), else
``nvidia-smi``'s list of GPU indexes when it is installed. Neither answers on a machine without NVIDIA GPUs,
which then offers no device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from dlhub.common.logging import get_logger

log = get_logger(__name__)

NVIDIA_SMI_TIMEOUT_S = 10.0


def gpus_from_cuda_visible(value: str) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` as devices: ``"0,1"`` -> ``["gpu:0", "gpu:1"]``; ``""`` or ``"-1"`` (no
    GPU visible) -> ``[]``; a UUID (``GPU-...``) is kept as the id."""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids or ids[0] in ("-1", "NoDevFiles"):
        return []
    return [f"gpu:{gpu_id}" for gpu_id in ids]


def gpus_from_nvidia_smi() -> list[str]:
    """The GPUs ``nvidia-smi`` lists (``gpu:<index>``); none when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        completed = subprocess.run(
            [binary, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi failed; no GPU offered", error=str(exc))
        return []
    if completed.returncode != 0:
        log.warning("nvidia-smi failed; no GPU offered", returncode=completed.returncode)
        return []
    return [f"gpu:{line.strip()}" for line in completed.stdout.splitlines() if line.strip().isdigit()]


def detect_devices(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this machine offers this process (see the module's docstring)."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return gpus_from_cuda_visible(visible)
    return gpus_from_nvidia_smi()


def offered_devices(configured: list[str] | None) -> list[str]:
    """``worker.devices`` when set (``[]``: none, without looking), else what ``detect_devices`` finds."""
    return list(configured) if configured is not None else detect_devices()
