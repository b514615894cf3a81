"""A servable under test: where to send it, what to send, and how to recognise a right answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    label: str
    """The name in figures and in paper.json (the paper's: noop, cifar10, inception, matminer_util ...)."""
    servable: str
    inputs: Any
    check: Callable[[Any], bool]
    warmup: int | None = None
    """Warm-up requests before measuring, when fewer than the run's default will do (slow models)."""

    @property
    def path(self) -> str:
        return run_path(self.servable)


def run_path(servable: str) -> str:
    """The run endpoint of ``owner/name`` (latest ready version) or ``owner/name@version`` (pinned)."""
    name, _, version = servable.partition("@")
    if version:
        return f"/api/v1/servables/{name}/versions/{version}/run"
    return f"/api/v1/servables/{name}/run"


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``n`` random float32 images (sent as msgpack raw buffers, as ``DLHubClient.run`` sends arrays)."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def probabilities_of(rows: int, classes: int) -> Callable[[Any], bool]:
    def check(output: Any) -> bool:
        return (
            isinstance(output, (list, np.ndarray))
            and len(output) == rows
            and all(len(r) == classes for r in output)
        )

    return check


def equals(expected: Any) -> Callable[[Any], bool]:
    return lambda output: bool(output == expected)


def any_output(output: Any) -> bool:
    return output is not None
