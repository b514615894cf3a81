"""The issue's performance targets, checked against the medians of the run, as a markdown table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    unit: str
    op: str  # "<=" or ">="
    threshold: float
    measured: Callable[[dict[str, Any]], float]


TARGETS = (
    Target("noop request time p50 (registry, memo off)", "ms", "<=", 1.5,
           lambda r: r["servable_performance"]["noop"]["request_p50_ms"]),
    Target("memoized noop request time p50", "ms", "<=", 0.5,
           lambda r: r["memoization"]["noop"]["memo_on"]["request_p50_ms"]),
    Target("noop throughput, 32 clients (memo off; wrk if installed)", "requests/s", ">=", 3000.0,
           lambda r: _noop_throughput(r["throughput"])),
    Target("10,000-row scikit-learn batch (msgpack body): round trip / predict in-process", "x", "<=", 1.3,
           lambda r: r["client_batch"]["msgpack"]["ratio_round_trip_to_in_process"]),
    Target("random forest single-row, 32 clients, adaptive batching", "requests/s", ">=", 1000.0,
           lambda r: r["throughput"]["forest_32_clients_batching_on"]["requests_per_s"]),
    Target("3-step pipeline: client-side calls / server-side pipeline (p50)", "x", ">=", 1.5,
           lambda r: r["pipeline"]["speedup_p50"]),
)  # fmt: skip


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for target in TARGETS:
        value = float(target.measured(results))
        passed = value <= target.threshold if target.op == "<=" else value >= target.threshold
        rows.append({
            "target": target.name, "unit": target.unit, "op": target.op, "threshold": target.threshold,
            "measured": round(value, 3), "passed": passed,
        })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]], repeats: int) -> str:
    lines = [
        f"| target | goal | measured (median of {repeats}) | result |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        goal = f"{row['op']} {row['threshold']:g} {row['unit']}"
        measured = f"{row['measured']:g} {row['unit']}"
        lines.append(f"| {row['target']} | {goal} | {measured} | {'pass' if row['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def _noop_throughput(throughput: dict[str, Any]) -> float:
    """wrk's figure when it ran (the Python load generator takes a large share of the 2 cores itself)."""
    run = throughput.get("noop_32_clients_wrk") or throughput["noop_32_clients"]
    return float(run["requests_per_s"])
