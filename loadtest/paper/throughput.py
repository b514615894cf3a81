"""Concurrent throughput: noop with 32 clients, single-row random-forest requests with adaptive batching
on and off, and the client batch (10,000 rows in one request against ``predict`` in-process)."""

from __future__ import annotations

import json
from typing import Any

from loadtest.batching import measure_client_batch, rows_for
from loadtest.paper.config import PaperConfig
from loadtest.paper.load import LoadSpec, run_load

DISTINCT_ROWS = 500


def headers(token: str | None) -> dict[str, str]:
    found = {"Content-Type": "application/json"}
    if token:
        found["Authorization"] = f"Bearer {token}"
    return found


def noop_spec(url: str, token: str | None, path: str, cfg: PaperConfig, clients: int) -> LoadSpec:
    body = json.dumps({"inputs": None, "memoize": False}).encode()
    return LoadSpec(url + path, headers(token), (body,), ("hello world",), clients, cfg.load_warmup_s,
                    cfg.load_duration_s)  # fmt: skip


def forest_spec(url: str, token: str | None, path: str, model: Any, cfg: PaperConfig) -> LoadSpec:
    """Single-row requests over ``DISTINCT_ROWS`` different rows, each with its expected prediction."""
    rows = rows_for(DISTINCT_ROWS)
    expected = tuple([int(v)] for v in model.predict(rows))
    bodies = tuple(json.dumps({"inputs": [row], "memoize": False}).encode() for row in rows.tolist())
    return LoadSpec(url + path, headers(token), bodies, expected, cfg.load_clients, cfg.load_warmup_s,
                    cfg.load_duration_s)  # fmt: skip


def measure_noop(url: str, token: str, servable: str, cfg: PaperConfig) -> dict[str, Any]:
    spec = noop_spec(url, token, f"/api/v1/servables/{servable}/run", cfg, cfg.load_clients)
    return run_load(spec, cfg.load_processes)


def measure_forest(url: str, token: str, servable: str, model: Any, cfg: PaperConfig) -> dict[str, Any]:
    spec = forest_spec(url, token, f"/api/v1/servables/{servable}/run", model, cfg)
    return run_load(spec, cfg.load_processes)


def measure_client_batch_rows(
    url: str, token: str, servable: str, model: Any, cfg: PaperConfig
) -> dict[str, Any]:
    """The 10,000-row batch as msgpack (the array as a raw buffer, what ``DLHubClient.run`` sends for NumPy
    inputs; the target applies to it) and as JSON nested lists (the REST contract's plain form)."""
    return {
        wire: measure_client_batch(
            url, token, servable, model, cfg.client_batch_rows, cfg.client_batch_repeats, wire
        )
        for wire in ("msgpack", "json")
    }
