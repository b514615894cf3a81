"""Figures 3 and 4 of the paper: inference / invocation / request time per servable, memoization on/off.

The paper's protocol: 100 sequential requests with fixed input per servable, memoization disabled (here
``"memoize": false``) and batch size one. Memoization: the same requests with the memo on (the registry
answers from its cache: no invocation), against the memo-off numbers of the same stack.
"""

from __future__ import annotations

from typing import Any

from loadtest.paper.cases import Case
from loadtest.paper.config import PaperConfig
from loadtest.paper.measure import run_body, sequential

METRICS = ("inference_ms", "invocation_ms", "request_ms", "round_trip_ms")


def _flatten(summary: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for metric in METRICS:
        name = metric.removesuffix("_ms")
        flat[f"{name}_p50_ms"] = summary[metric]["p50_ms"]
        flat[f"{name}_p99_ms"] = summary[metric]["p99_ms"]
        flat[f"{name}_mean_ms"] = summary[metric]["mean_ms"]
    flat["requests"] = summary["round_trip_ms"]["n"]
    return flat


def measure_performance(url: str, token: str, cases: list[Case], cfg: PaperConfig) -> dict[str, Any]:
    results = {}
    for case in cases:
        summary = sequential(
            url, token, case.path, run_body(case.inputs), requests=cfg.sequential_requests,
            warmup=case.warmup or cfg.warmup_requests, check=case.check, cached=False,
        )  # fmt: skip
        results[case.label] = _flatten(summary)
    return results


def measure_memoization(
    url: str, token: str, cases: list[Case], cfg: PaperConfig, memo_off: dict[str, Any]
) -> dict[str, Any]:
    """Memo-on requests (the first one fills the cache) next to the memo-off numbers of the same stack."""
    results = {}
    for case in cases:
        summary = sequential(
            url, token, case.path, run_body(case.inputs, memoize=True), requests=cfg.sequential_requests,
            warmup=1, check=case.check, cached=True,
        )  # fmt: skip
        on, off = _flatten(summary), memo_off[case.label]
        results[case.label] = {
            "memo_on": on,
            "memo_off": off,
            "request_reduction_pct": round(100 * (1 - on["request_p50_ms"] / off["request_p50_ms"]), 1),
            "round_trip_reduction_pct": round(
                100 * (1 - on["round_trip_p50_ms"] / off["round_trip_p50_ms"]), 1
            ),
            "invocation_reduction_pct": round(
                100 * (1 - on["invocation_p50_ms"] / max(off["invocation_p50_ms"], 1e-9)), 1
            ),
        }
    return results
