"""Sequential requests on one keep-alive connection, the paper's timings, and medians over repeats."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlhub.common.codec import decode_body, encode_body
from loadtest.common import KeepAliveClient, summary_ms

TIMINGS = ("inference_ms", "invocation_ms", "request_ms")
Check = Callable[[Any], bool]


class BenchError(RuntimeError):
    """A benchmark request failed or answered something unexpected: the run stops and says which."""


MSGPACK_HEADERS = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


def post(client: KeepAliveClient, path: str, body: bytes) -> tuple[float, dict[str, Any]]:
    """One request; returns the client round trip (ms) and the decoded reply of a completed task.

    A body that is not a JSON object is msgpack (``run_body`` of NumPy inputs), answered in msgpack.
    """
    is_msgpack = not body.startswith(b"{")
    started = time.perf_counter()
    status, payload = client.post(path, body, headers=MSGPACK_HEADERS if is_msgpack else None)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise BenchError(f"POST {path}: HTTP {status}: {payload[:300]!r}")
    record: dict[str, Any] = decode_body(payload, dict[str, Any]) if is_msgpack else json.loads(payload)
    if record.get("state", "completed") != "completed":
        raise BenchError(f"POST {path}: task {record.get('state')}: {json.dumps(record.get('error'))[:300]}")
    return elapsed_ms, record


def run_body(inputs: Any, *, memoize: bool = False) -> bytes:
    """JSON, or msgpack with the array as a raw buffer for NumPy inputs (what ``DLHubClient.run`` sends)."""
    if isinstance(inputs, np.ndarray):
        return encode_body({"inputs": inputs, "memoize": memoize})
    return json.dumps({"inputs": inputs, "memoize": memoize}).encode()


def sequential(
    url: str,
    token: str | None,
    path: str,
    body: bytes,
    *,
    requests: int,
    warmup: int,
    check: Check,
    cached: bool | None = False,
) -> dict[str, Any]:
    """``requests`` sequential requests after ``warmup`` ones; summaries of round trip and the timings.

    ``cached`` (when not None) is what every measured reply's ``cached`` flag must be, so a memoized answer
    can never pass for a real invocation, nor the reverse.
    """
    client = KeepAliveClient(url, token)
    samples: dict[str, list[float]] = {"round_trip_ms": [], **{name: [] for name in TIMINGS}}
    try:
        for i in range(warmup + requests):
            elapsed_ms, record = post(client, path, body)
            if not check(record.get("output")):
                raise BenchError(f"POST {path}: unexpected output {str(record.get('output'))[:200]}")
            if i < warmup:
                continue
            if cached is not None and record.get("cached") is not cached:
                raise BenchError(f"POST {path}: expected cached={cached}, got {record.get('cached')}")
            samples["round_trip_ms"].append(elapsed_ms)
            for name in TIMINGS:
                samples[name].append(float(record.get("timings", {}).get(name, 0.0)))
    finally:
        client.close()
    return {name: summary_ms(values) for name, values in samples.items()}


def median_tree(trees: Sequence[Any]) -> Any:
    """The element-wise median of structurally equal trees (dicts of numbers); other leaves from the first."""
    first = trees[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(t, dict) and k in t for t in trees)]
        return {k: median_tree([t[k] for t in trees]) for k in keys}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    values = [t for t in trees if isinstance(t, int | float) and not isinstance(t, bool)]
    median = statistics.median(values)
    if all(isinstance(v, int) for v in values) and float(median).is_integer():
        return int(median)
    return round(float(median), 4)


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / max(denominator, 1e-9), 3)
