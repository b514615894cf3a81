"""Sizes of one run: the default reproduces the paper's request counts, ``--quick`` is a smoke run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "paper"


@dataclass(frozen=True)
class PaperConfig:
    quick: bool
    repeats: int
    out: Path
    inception: bool
    sequential_requests: int
    """Requests per servable in the performance and memoization experiments (the paper: 100)."""
    warmup_requests: int
    batch_sizes: tuple[int, ...]
    cifar_max_batch: int
    """A 10,000-image CIFAR batch is ~200 MB of JSON; the CNN stops at this size (documented)."""
    unbatched_max: int
    """Largest N sent as N sequential requests for the random forest (noop: every size)."""
    cifar_unbatched_max: int
    """The same for the CNN, whose Keras ``predict`` costs ~0.1 s per call even for one image."""
    replicas: tuple[int, ...]
    scaling_clients: int
    load_clients: int
    load_processes: int
    load_warmup_s: float
    load_duration_s: float
    client_batch_rows: int
    client_batch_repeats: int
    pipeline_requests: int
    comparison_requests: int


def make_config(*, quick: bool, repeats: int | None, out: Path, skip_inception: bool) -> PaperConfig:
    if quick:
        return PaperConfig(
            quick=True, repeats=repeats or 1, out=out, inception=False, sequential_requests=10,
            warmup_requests=3, batch_sizes=(1, 10, 100), cifar_max_batch=10, unbatched_max=100,
            cifar_unbatched_max=10, replicas=(1, 2), scaling_clients=4, load_clients=32, load_processes=2,
            load_warmup_s=0.5, load_duration_s=1.0, client_batch_rows=10_000, client_batch_repeats=3,
            pipeline_requests=10, comparison_requests=20,
        )  # fmt: skip
    return PaperConfig(
        quick=False, repeats=repeats or 3, out=out, inception=not skip_inception, sequential_requests=100,
        warmup_requests=20, batch_sizes=(1, 2, 5, 10, 20, 50, 100, 1000, 10_000), cifar_max_batch=1000,
        unbatched_max=1000, cifar_unbatched_max=100, replicas=(1, 2, 4), scaling_clients=8, load_clients=32,
        load_processes=2, load_warmup_s=1.0, load_duration_s=5.0, client_batch_rows=10_000,
        client_batch_repeats=20, pipeline_requests=100, comparison_requests=1000,
    )  # fmt: skip
