"""The 10,000-row client batch on a stack of its own, with the path's fixed cost measured beside it.

The target compares one REST round trip of a 10,000-row batch with ``predict`` on the same rows in-process.
It runs on a fresh stack serving only the forest: in the main stack the same executor process also holds
TensorFlow, the CIFAR-10 CNN and Inception-v3, which slows ``predict`` itself (cache and allocator pressure)
and would charge that to the serving path.

Beside it, ``path_overhead`` sends a small request to ``burn`` calibrated to run as long as the batch's
model call: its round trip minus its inference is what the path costs at that duration with nothing to
carry (every process along it has been idle for the length of the call and must be woken again). The
batch's own round trip minus inference, less that, is what the 320 KB of rows and 80 KB of labels add.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from loadtest.common import KeepAliveClient, embedded_stack, summary_ms
from loadtest.paper.config import PaperConfig
from loadtest.paper.measure import post
from loadtest.paper.servables import publish_function
from loadtest.paper.throughput import measure_client_batch_rows

CALIBRATION_ITERATIONS = 100_000
WARMUP = 3


def _burn(client: KeepAliveClient, path: str, iterations: int) -> tuple[float, float]:
    """One burn request: (client round trip ms, inference ms)."""
    elapsed_ms, record = post(client, path, json.dumps({"inputs": iterations, "memoize": False}).encode())
    return elapsed_ms, float(record["timings"]["inference_ms"])


def measure_path_overhead(url: str, token: str, target_ms: float, requests: int) -> dict[str, Any]:
    """Round trip and inference of a small request whose model call lasts about ``target_ms``."""
    servable = publish_function(url, token, "burn", "burn")
    path = f"/api/v1/servables/{servable}/run"
    client = KeepAliveClient(url, token)
    try:
        for _ in range(WARMUP):
            _burn(client, path, CALIBRATION_ITERATIONS)
        per_iteration = statistics.median(_burn(client, path, CALIBRATION_ITERATIONS)[1] for _ in range(5))
        iterations = max(1, int(CALIBRATION_ITERATIONS * target_ms / max(per_iteration, 1e-6)))
        samples = [_burn(client, path, iterations) for _ in range(requests)]
    finally:
        client.close()
    return {
        "servable": f"burn({iterations})",
        "target_inference_ms": round(target_ms, 3),
        "client_round_trip": summary_ms([trip for trip, _ in samples]),
        "inference_time": summary_ms([model_ms for _, model_ms in samples]),
        "overhead_round_trip_minus_inference": summary_ms([trip - model_ms for trip, model_ms in samples]),
    }


def measure_client_batch_stack(cfg: PaperConfig, model: Any, env: dict[str, str]) -> dict[str, Any]:
    from loadtest.batching import publish_forest

    with embedded_stack(extra_env=env) as stack:
        forest = publish_forest(stack.url, stack.token, model)
        result = measure_client_batch_rows(stack.url, stack.token, forest, model, cfg)
        target_ms = result["msgpack"]["inference_time"]["p50_ms"]
        result["path_overhead"] = measure_path_overhead(
            stack.url, stack.token, target_ms, cfg.client_batch_repeats
        )
    return result
