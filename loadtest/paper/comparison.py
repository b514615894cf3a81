"""Figure 8, re-framed for one machine: DLHub against the floor (``floor.py``: a bare aiohttp server calling
the model in-process) for the noop and the scikit-learn servables, with the same clients and request counts
in the same run. Ratios are DLHub / floor (latency: > 1 means slower; throughput: < 1 means fewer
requests/s)."""

from __future__ import annotations

import json
from typing import Any

from loadtest.batching import rows_for
from loadtest.paper.cases import equals
from loadtest.paper.config import PaperConfig
from loadtest.paper.floor import wait_up
from loadtest.paper.load import run_load
from loadtest.paper.measure import ratio, sequential
from loadtest.paper.throughput import forest_spec, noop_spec

WARMUP = 20


def _sequential_pair(
    url: str, token: str | None, noop_path: str, forest_path: str, model: Any, cfg: PaperConfig
) -> dict[str, Any]:
    row = rows_for(1)
    expected = [int(model.predict(row)[0])]
    bodies = {
        "noop": (noop_path, json.dumps({"inputs": None, "memoize": False}), equals("hello world")),
        "sklearn": (forest_path, json.dumps({"inputs": row.tolist(), "memoize": False}), equals(expected)),
    }
    result = {}
    for kind, (path, body, check) in bodies.items():
        summary = sequential(
            url, token, path, body.encode(), requests=cfg.comparison_requests, warmup=WARMUP, check=check,
            cached=None,
        )  # fmt: skip
        result[f"{kind}_round_trip"] = summary["round_trip_ms"]
    return result


def measure_dlhub_sequential(
    url: str, token: str, noop: str, forest: str, model: Any, cfg: PaperConfig
) -> dict[str, Any]:
    return _sequential_pair(
        url, token, f"/api/v1/servables/{noop}/run", f"/api/v1/servables/{forest}/run", model, cfg
    )


def measure_floor(url: str, model: Any, cfg: PaperConfig) -> dict[str, Any]:
    wait_up(url)
    result = _sequential_pair(url, None, "/noop", "/sklearn", model, cfg)
    result["noop_throughput"] = run_load(
        noop_spec(url, None, "/noop", cfg, cfg.load_clients), cfg.load_processes
    )
    result["sklearn_throughput"] = run_load(
        forest_spec(url, None, "/sklearn", model, cfg), cfg.load_processes
    )
    return result


def compare(dlhub: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``dlhub`` and ``floor`` have the same keys: *_round_trip summaries and *_throughput load results."""
    ratios = {
        f"{kind}_round_trip_p50": ratio(
            dlhub[f"{kind}_round_trip"]["p50_ms"], floor[f"{kind}_round_trip"]["p50_ms"]
        )
        for kind in ("noop", "sklearn")
    }
    for kind in ("noop", "sklearn"):
        ratios[f"{kind}_throughput"] = ratio(
            dlhub[f"{kind}_throughput"]["requests_per_s"], floor[f"{kind}_throughput"]["requests_per_s"]
        )
    return {"dlhub": dlhub, "floor": floor, "dlhub_over_floor": ratios}
