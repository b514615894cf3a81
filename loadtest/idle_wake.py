"""What idle gaps cost on this machine: the same HTTP batch request back to back and with gaps between.

    python -m loadtest.idle_wake [--gap-ms 11] [--requests 60] [--repeats 3]

The floor server (``loadtest.paper.floor``, ``POST /rows``: no model, one label per row) answers a 10,000-row
msgpack batch (320 KB in, 80 KB out). Sent back to back, both processes stay busy; with ``--gap-ms`` of idle
time before each request (about a model call's duration), both go idle in between and must be woken. The
difference is the machine's wake-up cost for one HTTP hop; DLHub's path has several hops (client, registry,
broker, worker, executor, and ZeroMQ's I/O threads), each paying it after a model call. Results go to
``loadtest/results/idle_wake.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from dlhub.common.codec import encode_body
from loadtest.batching import rows_for
from loadtest.common import KeepAliveClient, summary_ms, write_results
from loadtest.paper.floor import floor_server, wait_up

WARMUP = 10


def _round_trips(client: KeepAliveClient, body: bytes, requests: int, gap_s: float) -> list[float]:
    samples = []
    for i in range(WARMUP + requests):
        if gap_s:
            time.sleep(gap_s)  # the idle time under test, not a wait for a condition
        started = time.perf_counter()
        status, _ = client.post("/rows", body)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            raise RuntimeError(f"POST /rows: HTTP {status}")
        if i >= WARMUP:
            samples.append(elapsed_ms)
    return samples


def measure(url: str, *, gap_ms: float, requests: int) -> dict[str, Any]:
    body = encode_body({"inputs": rows_for(10_000)})
    client = KeepAliveClient(url, None, headers={"Content-Type": "application/msgpack"})
    try:
        back_to_back = _round_trips(client, body, requests, 0.0)
        with_gaps = _round_trips(client, body, requests, gap_ms / 1000)
    finally:
        client.close()
    b2b, gaps = summary_ms(back_to_back), summary_ms(with_gaps)
    return {
        "back_to_back": b2b,
        "with_gaps": gaps,
        "gap_ms": gap_ms,
        "idle_cost_ms": round(gaps["p50_ms"] - b2b["p50_ms"], 4),
        "ratio_p50": round(gaps["p50_ms"] / b2b["p50_ms"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gap-ms", type=float, default=11.0)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with floor_server() as url:
        wait_up(url)
        for _ in range(args.repeats):
            run = measure(url, gap_ms=args.gap_ms, requests=args.requests)
            print(json.dumps(run))
            runs.append(run)
    summary = {
        "back_to_back_p50_ms": statistics.median(r["back_to_back"]["p50_ms"] for r in runs),
        "with_gaps_p50_ms": statistics.median(r["with_gaps"]["p50_ms"] for r in runs),
        "idle_cost_ms": statistics.median(r["idle_cost_ms"] for r in runs),
        "ratio_p50": statistics.median(r["ratio_p50"] for r in runs),
    }
    path = write_results(
        "idle_wake",
        {"benchmark": "HTTP batch request, back to back and with idle gaps", "runs": runs, **summary},
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
