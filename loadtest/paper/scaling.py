"""Figure 7 of the paper: throughput against the number of worker replicas for a CPU-bound servable.

Each replica count gets a fresh ``dlhub up --workers N`` (one executor process per worker) with
``DLHUB_WORKER__BATCH_CAPACITY=0``, so that the broker hands a worker only as many tasks as it has executor
processes and the load spreads evenly over the replicas. The servable is ``burn``: pure-Python integer
arithmetic (``BURN_ITERATIONS`` iterations, ~20 ms) that holds the GIL, so only more processes add
throughput -- up to the machine's cores, which the stack and the load generator share.
"""

from __future__ import annotations

import json
from typing import Any

from loadtest.common import embedded_stack
from loadtest.paper.config import PaperConfig
from loadtest.paper.load import LoadSpec, run_load
from loadtest.paper.measure import run_body, sequential
from loadtest.paper.servables import BENCH_SOURCE, BURN_ITERATIONS, publish_function
from loadtest.paper.throughput import headers

SCALING_ENV = {"DLHUB_WORKER__BATCH_CAPACITY": "0"}


def expected_burn() -> int:
    namespace: dict[str, Any] = {}
    exec(BENCH_SOURCE, namespace)  # the benchmark's own constant source, not user input
    value: int = namespace["burn"](BURN_ITERATIONS)
    return value


def measure_replicas(replicas: int, cfg: PaperConfig, expected: int, env: dict[str, str]) -> dict[str, Any]:
    with embedded_stack(workers=replicas, extra_env={**env, **SCALING_ENV}) as stack:
        servable = publish_function(stack.url, stack.token, "burn", "burn")
        path = f"/api/v1/servables/{servable}/run"
        single = sequential(
            stack.url, stack.token, path, run_body(BURN_ITERATIONS), requests=5, warmup=2,
            check=lambda out: out == expected,
        )  # fmt: skip
        body = json.dumps({"inputs": BURN_ITERATIONS, "memoize": False}).encode()
        spec = LoadSpec(stack.url + path, headers(stack.token), (body,), (expected,), cfg.scaling_clients,
                        cfg.load_warmup_s, cfg.load_duration_s)  # fmt: skip
        load = run_load(spec, cfg.load_processes)
    load["inference_p50_ms"] = single["inference_ms"]["p50_ms"]
    load["replicas"] = replicas
    return load


def measure_scaling(cfg: PaperConfig, env: dict[str, str]) -> dict[str, Any]:
    expected = expected_burn()
    by_replicas = {str(r): measure_replicas(r, cfg, expected, env) for r in cfg.replicas}
    base = by_replicas[str(cfg.replicas[0])]["requests_per_s"]
    for run in by_replicas.values():
        run["speedup_vs_first"] = round(run["requests_per_s"] / base, 2)
    return {"servable": f"burn({BURN_ITERATIONS}) pure-Python", "replicas": by_replicas}
