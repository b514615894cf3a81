"""Noop servable through the full REST path vs. the same function called in-process (the floor).

    python -m loadtest.noop_rest [--requests 1000] [--repeats 5]

Each repeat starts from a warm stack: 200 warm-up requests, then ``--requests`` sequential requests on one
keep-alive connection. Reported per repeat and as the median over repeats:
- request time at the registry (``timings.request_ms``, the paper's "request time"),
- client round trip (what a caller sees, including HTTP on loopback),
- invocation time (worker) and inference time (servable),
- the floor: the same ``noop`` called directly in-process, and the ratio of request time to it,
- ``dlhub up`` to healthy (seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import KeepAliveClient, embedded_stack, summary_ms, write_results

NOOP_SOURCE = 'def noop(x):\n    return "hello world"\n'
WARMUP_REQUESTS = 200


def publish_noop(url: str, token: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_noop.py").write_text(NOOP_SOURCE)
        doc = python_function_document(
            name="noop", module="bench_noop", function="noop", files=["bench_noop.py"],
            title="noop", authors=["Bench, Mark"],
        )  # fmt: skip
        with DLHubClient(url, token) as client:
            reply = client.publish(doc, base_dir=tmp)
    return str(reply["shorthand_name"])


def measure_rest(url: str, token: str, servable: str, requests: int) -> dict[str, Any]:
    client = KeepAliveClient(url, token)
    path = f"/api/v1/servables/{servable}/run"
    # Bypass the result cache: this benchmark measures the serving path itself (loadtest.memo covers hits).
    body = json.dumps({"inputs": None, "memoize": False}).encode()
    round_trip, request, invocation, inference = [], [], [], []
    try:
        for i in range(WARMUP_REQUESTS + requests):
            started = time.perf_counter()
            status, payload = client.post(path, body)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
            if i < WARMUP_REQUESTS:
                continue
            record = json.loads(payload)
            if record["output"] != "hello world":
                raise RuntimeError(f"unexpected output {record!r}")
            round_trip.append(elapsed_ms)
            timings = record["timings"]
            request.append(timings["request_ms"])
            invocation.append(timings["invocation_ms"])
            inference.append(timings["inference_ms"])
    finally:
        client.close()
    return {
        "client_round_trip": summary_ms(round_trip),
        "request_time": summary_ms(request),
        "invocation_time": summary_ms(invocation),
        "inference_time": summary_ms(inference),
    }


def measure_in_process(requests: int) -> dict[str, float]:
    namespace: dict[str, Any] = {}
    exec(NOOP_SOURCE, namespace)  # the benchmark's own constant source, not user input
    noop = namespace["noop"]
    samples = []
    for _ in range(WARMUP_REQUESTS + requests):
        started = time.perf_counter()
        noop(None)
        samples.append((time.perf_counter() - started) * 1000)
    return summary_ms(samples[WARMUP_REQUESTS:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    repeats: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        with embedded_stack(workers=1) as stack:
            servable = publish_noop(stack.url, stack.token)
            rest = measure_rest(stack.url, stack.token, servable, args.requests)
            floor = measure_in_process(args.requests)
            repeats.append({"startup_s": round(stack.startup_s, 3), **rest, "in_process": floor})

    def median(path: tuple[str, str]) -> float:
        return round(float(statistics.median(r[path[0]][path[1]] for r in repeats)), 4)

    result = {
        "benchmark": "noop through REST (sequential)",
        "requests_per_repeat": args.requests,
        "repeats": repeats,
        "median": {
            "startup_s": round(statistics.median(r["startup_s"] for r in repeats), 3),
            "request_p50_ms": median(("request_time", "p50_ms")),
            "request_p99_ms": median(("request_time", "p99_ms")),
            "round_trip_p50_ms": median(("client_round_trip", "p50_ms")),
            "round_trip_p99_ms": median(("client_round_trip", "p99_ms")),
            "invocation_p50_ms": median(("invocation_time", "p50_ms")),
            "inference_p50_ms": median(("inference_time", "p50_ms")),
            "in_process_p50_ms": median(("in_process", "p50_ms")),
        },
    }
    m = result["median"]
    m["request_p50_over_in_process"] = round(m["request_p50_ms"] / max(m["in_process_p50_ms"], 1e-6), 1)
    m["round_trip_p50_over_in_process"] = round(m["round_trip_p50_ms"] / max(m["in_process_p50_ms"], 1e-6), 1)
    path = write_results("noop_rest", result)
    print(json.dumps(result["median"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
