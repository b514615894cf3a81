"""Noop servable through the full REST path vs. the same function called in-process (the floor).

    python -m loadtest.noop_rest [--requests 1000] [--repeats 5] [--curve on|off|both]

Each repeat starts from a warm stack: 200 warm-up requests, then ``--requests`` sequential requests on one
keep-alive connection. Reported per repeat and as the median over repeats:
- request time at the registry (``timings.request_ms``, the paper's "request time"),
- client round trip (what a caller sees, including HTTP on loopback),
- invocation time (worker) and inference time (servable),
- the floor: the same ``noop`` called directly in-process, and the ratio of request time to it,
- ``dlhub up`` to healthy (seconds).

``--curve`` chooses the bus: ``on`` (the default of ``dlhub up``: CurveZMQ keys, docs/security.md), ``off``
(``DLHUB_BUS__CURVE_ENABLED=false``), or ``both``: each repeat runs a stack of each kind, in alternating
order, and the medians of both are reported with the cost of the keys (``curve_cost``); results then go to
``loadtest/results/noop_rest_curve.json``.
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
    parser.add_argument("--curve", choices=("on", "off", "both"), default="on")
    args = parser.parse_args()
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.curve]
    repeats: dict[bool, list[dict[str, Any]]] = {curve: [] for curve in variants}
    for repeat in range(args.repeats):
        # Alternating order: a slower phase of the machine hits both variants alike.
        for curve in variants if repeat % 2 == 0 else list(reversed(variants)):
            env = {"DLHUB_BUS__CURVE_ENABLED": "true" if curve else "false"}
            with embedded_stack(workers=1, extra_env=env) as stack:
                servable = publish_noop(stack.url, stack.token)
                rest = measure_rest(stack.url, stack.token, servable, args.requests)
                floor = measure_in_process(args.requests)
                repeats[curve].append({"startup_s": round(stack.startup_s, 3), **rest, "in_process": floor})
    result: dict[str, Any] = {
        "benchmark": "noop through REST (sequential)",
        "requests_per_repeat": args.requests,
        "curve": args.curve,
        "repeats": repeats[variants[0]],
        "median": medians(repeats[variants[0]]),
    }
    if args.curve == "both":
        result["repeats_curve_off"] = repeats[False]
        result["median_curve_off"] = off = medians(repeats[False])
        on = result["median"]
        result["curve_cost"] = {
            key: round(on[key] - off[key], 4)
            for key in ("request_p50_ms", "round_trip_p50_ms", "round_trip_p99_ms")
        }
    name = "noop_rest_curve" if args.curve == "both" else "noop_rest"
    path = write_results(name, result)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("median", "curve"))}, indent=2))
    print(f"wrote {path}")


def medians(repeats: list[dict[str, Any]]) -> dict[str, float]:
    def median(path: tuple[str, str]) -> float:
        return round(float(statistics.median(r[path[0]][path[1]] for r in repeats)), 4)

    m = {
        "startup_s": round(statistics.median(r["startup_s"] for r in repeats), 3),
        "request_p50_ms": median(("request_time", "p50_ms")),
        "request_p99_ms": median(("request_time", "p99_ms")),
        "round_trip_p50_ms": median(("client_round_trip", "p50_ms")),
        "round_trip_p99_ms": median(("client_round_trip", "p99_ms")),
        "invocation_p50_ms": median(("invocation_time", "p50_ms")),
        "inference_p50_ms": median(("inference_time", "p50_ms")),
        "in_process_p50_ms": median(("in_process", "p50_ms")),
    }
    m["request_p50_over_in_process"] = round(m["request_p50_ms"] / max(m["in_process_p50_ms"], 1e-6), 1)
    m["round_trip_p50_over_in_process"] = round(m["round_trip_p50_ms"] / max(m["in_process_p50_ms"], 1e-6), 1)
    return m


if __name__ == "__main__":
    main()
