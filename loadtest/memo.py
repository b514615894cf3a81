"""Memoized vs. non-memoized noop requests through REST, in the same run (issue 5: memoization).

    python -m loadtest.memo [--requests 1000] [--repeats 5]

Each repeat starts a fresh stack (`dlhub up`, one worker), publishes the noop servable and measures, on one
keep-alive connection, sequential requests after 200 warm-up requests of each kind:
- non-memoized: the same input with ``"memoize": false`` (every request goes through the broker and a worker),
- memoized: the same input with the memo on (after the first request every answer is ``"cached": true``).
The two kinds are interleaved in blocks so both see the same machine conditions. Reported per repeat and as
medians over repeats: registry request time (``timings.request_ms``) and client round trip, their p50/p99,
and the ratio non-memoized / memoized. Target (issue 5): memoized request p50 <= 0.5 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from loadtest.common import KeepAliveClient, embedded_stack, summary_ms, write_results
from loadtest.noop_rest import publish_noop

WARMUP_REQUESTS = 200
BLOCK = 100
TARGET_MEMO_REQUEST_P50_MS = 0.5


def _one(client: KeepAliveClient, path: str, body: bytes, cached: bool) -> tuple[float, float]:
    started = time.perf_counter()
    status, payload = client.post(path, body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
    record = json.loads(payload)
    if record["output"] != "hello world" or record["cached"] is not cached:
        raise RuntimeError(f"unexpected reply (expected cached={cached}): {record!r}")
    return elapsed_ms, float(record["timings"]["request_ms"])


def measure(url: str, token: str, servable: str, requests: int) -> dict[str, Any]:
    client = KeepAliveClient(url, token)
    path = f"/api/v1/servables/{servable}/run"
    bodies = {
        "memoized": json.dumps({"inputs": None}).encode(),
        "not_memoized": json.dumps({"inputs": None, "memoize": False}).encode(),
    }
    samples: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in bodies}
    try:
        client.post(path, bodies["memoized"])  # fills the memo
        for kind, body in bodies.items():
            for _ in range(WARMUP_REQUESTS):
                _one(client, path, body, cached=kind == "memoized")
        done = 0
        while done < requests:
            n = min(BLOCK, requests - done)
            for kind, body in bodies.items():
                round_trip, request = samples[kind]
                for _ in range(n):
                    rt, req = _one(client, path, body, cached=kind == "memoized")
                    round_trip.append(rt)
                    request.append(req)
            done += n
    finally:
        client.close()
    return {
        kind: {"request_time": summary_ms(request), "client_round_trip": summary_ms(round_trip)}
        for kind, (round_trip, request) in samples.items()
    }


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
            repeats.append(measure(stack.url, stack.token, servable, args.requests))

    def median(kind: str, metric: str, stat: str) -> float:
        return round(float(statistics.median(r[kind][metric][stat] for r in repeats)), 4)

    summary: dict[str, Any] = {}
    for kind in ("memoized", "not_memoized"):
        for metric, label in (("request_time", "request"), ("client_round_trip", "round_trip")):
            for stat in ("p50_ms", "p99_ms"):
                summary[f"{kind}_{label}_{stat}"] = median(kind, metric, stat)
    summary["request_p50_not_memoized_over_memoized"] = round(
        summary["not_memoized_request_p50_ms"] / max(summary["memoized_request_p50_ms"], 1e-6), 1
    )
    summary["round_trip_p50_not_memoized_over_memoized"] = round(
        summary["not_memoized_round_trip_p50_ms"] / max(summary["memoized_round_trip_p50_ms"], 1e-6), 1
    )
    summary["target_memoized_request_p50_ms"] = TARGET_MEMO_REQUEST_P50_MS
    summary["target_met"] = summary["memoized_request_p50_ms"] <= TARGET_MEMO_REQUEST_P50_MS
    result = {
        "benchmark": "noop through REST (sequential): memoized vs memoize=false",
        "requests_per_repeat": args.requests,
        "repeats": repeats,
        "median": summary,
    }
    path = write_results("memo", result)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
