"""Figures 5 and 6 of the paper: makespan of N requests with and without batching.

- without batching: N sequential requests of one input each (one keep-alive connection), up to each
  servable's ``max_unbatched`` (the makespan is linear in N; 10,000 sequential random-forest requests alone
  would take minutes per repeat);
- with batching: one request carrying the N inputs (the servable is called once on all of them).
Makespan is the client's wall time for all N answers; the summed invocation time (what Figure 5 plots) is
kept too. Servables: noop (python function, ``autobatch``), the iris random forest (scikit-learn, one
``predict`` over the rows) and the CIFAR-10 CNN (one ``predict`` over the images, up to
``cifar_max_batch``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.common import KeepAliveClient
from loadtest.paper.config import PaperConfig
from loadtest.paper.measure import BenchError, post, ratio, run_body

InputsFor = Callable[[int], Any]
"""The inputs of a batch of n: a list, or an ndarray (sent as msgpack)."""


def _unbatched(client: KeepAliveClient, path: str, one_input: Any, n: int) -> dict[str, float]:
    body = run_body(one_input)
    invocation = 0.0
    started = time.perf_counter()
    for _ in range(n):
        _, record = post(client, path, body)
        invocation += float(record["timings"]["invocation_ms"])
    return {
        "makespan_ms": round((time.perf_counter() - started) * 1000, 3),
        "invocation_ms": round(invocation, 3),
    }


def _batched(client: KeepAliveClient, path: str, inputs: Any) -> dict[str, float]:
    started = time.perf_counter()
    _, record = post(client, path, run_body(inputs))
    makespan_ms = (time.perf_counter() - started) * 1000
    output = record["output"]
    if not isinstance(output, (list, np.ndarray)) or len(output) != len(inputs):
        raise BenchError(f"{path}: a batch of {len(inputs)} answered {str(output)[:100]}")
    return {"makespan_ms": round(makespan_ms, 3), "invocation_ms": float(record["timings"]["invocation_ms"])}


@dataclass(frozen=True)
class BatchServable:
    servable: str
    inputs_for: InputsFor
    """The inputs of a batch of n."""
    max_batched: int
    max_unbatched: int
    """N sequential requests take N times one request; past this N only the batched side is measured."""


def _point(client: KeepAliveClient, path: str, target: BatchServable, n: int) -> dict[str, Any]:
    point = {"batched": _batched(client, path, target.inputs_for(n))}
    if n <= target.max_unbatched:
        point["unbatched"] = _unbatched(client, path, target.inputs_for(1), n)
    return point


def measure_batching(
    url: str, token: str, servables: dict[str, BatchServable], cfg: PaperConfig
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    client = KeepAliveClient(url, token)
    try:
        for label, target in servables.items():
            path = f"/api/v1/servables/{target.servable}/run"
            _batched(client, path, target.inputs_for(1))  # loads the servable before anything is timed
            sizes = [n for n in cfg.batch_sizes if n <= target.max_batched]
            by_size = {str(n): _point(client, path, target, n) for n in sizes}
            both = max(n for n in sizes if n <= target.max_unbatched)
            pair = by_size[str(both)]
            results[label] = {
                "sizes": by_size,
                "max_batched": max(sizes),
                "max_unbatched": both,
                "speedup_at_max_unbatched": ratio(
                    pair["unbatched"]["makespan_ms"], pair["batched"]["makespan_ms"]
                ),
            }
    finally:
        client.close()
    return results
