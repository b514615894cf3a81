"""A three-step server-side pipeline (``POST /api/v1/pipelines/run``) against the same three steps called
one after the other by the client, each output sent back as the next input (sequential, round trips)."""

from __future__ import annotations

import json
import time
from typing import Any

from loadtest.common import KeepAliveClient, summary_ms
from loadtest.paper.measure import BenchError, post, ratio, run_body

PIPELINE_INPUT = [1, 2, 3]
PIPELINE_OUTPUT = 18  # total(double(add_one([1, 2, 3])))


def _server_side(client: KeepAliveClient, steps: list[str]) -> float:
    body = json.dumps(
        {"steps": [{"servable": s} for s in steps], "inputs": PIPELINE_INPUT, "memoize": False}
    ).encode()
    elapsed_ms, record = post(client, "/api/v1/pipelines/run", body)
    if record["output"] != PIPELINE_OUTPUT:
        raise BenchError(f"pipeline answered {record['output']!r}, expected {PIPELINE_OUTPUT}")
    return elapsed_ms


def _client_side(client: KeepAliveClient, steps: list[str]) -> float:
    value: Any = PIPELINE_INPUT
    started = time.perf_counter()
    for step in steps:
        _, record = post(client, f"/api/v1/servables/{step}/run", run_body(value))
        value = record["output"]
    if value != PIPELINE_OUTPUT:
        raise BenchError(f"client-side chain answered {value!r}, expected {PIPELINE_OUTPUT}")
    return (time.perf_counter() - started) * 1000


def measure_pipeline(url: str, token: str, steps: list[str], requests: int, warmup: int) -> dict[str, Any]:
    client = KeepAliveClient(url, token)
    server: list[float] = []
    chained: list[float] = []
    try:
        for i in range(warmup + requests):
            # interleaved, so both see the same machine conditions
            s, c = _server_side(client, steps), _client_side(client, steps)
            if i >= warmup:
                server.append(s)
                chained.append(c)
    finally:
        client.close()
    server_summary, client_summary = summary_ms(server), summary_ms(chained)
    return {
        "steps": len(steps),
        "server_side": server_summary,
        "client_side": client_summary,
        "speedup_p50": ratio(client_summary["p50_ms"], server_summary["p50_ms"]),
    }
