"""Reproduce the DLHub paper's experiments on this machine: JSON results, PNG plots, a targets table.

    python -m loadtest.paper [--quick] [--repeats N] [--out loadtest/results/paper] [--skip-inception]

Every repeat starts fresh stacks (``dlhub up``): one for the sequential experiments and the throughput at
default settings, one with adaptive batching off, one per replica count for scaling, plus the floor server.
Medians over the repeats go to ``paper.json`` (raw repeats included), ``targets.md`` and the PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.batching import publish_forest, rows_for, train
from loadtest.common import RunningStack, embedded_stack
from loadtest.paper import matminer, plots, targets, wrk
from loadtest.paper.batching import BatchServable, measure_batching
from loadtest.paper.cases import Case, equals, images, probabilities_of, run_path
from loadtest.paper.client_batch import measure_client_batch_stack
from loadtest.paper.comparison import compare, measure_dlhub_sequential, measure_floor
from loadtest.paper.config import DEFAULT_OUT, PaperConfig, make_config
from loadtest.paper.floor import floor_server
from loadtest.paper.machine import describe_machine
from loadtest.paper.measure import median_tree, ratio
from loadtest.paper.models import (
    CIFAR_FILE,
    CIFAR_SHAPE,
    INCEPTION_FILE,
    INCEPTION_SHAPE,
    build_in_subprocess,
)
from loadtest.paper.performance import measure_memoization, measure_performance
from loadtest.paper.pipeline import measure_pipeline
from loadtest.paper.scaling import measure_scaling
from loadtest.paper.servables import BURN_ITERATIONS, PIPELINE_STEPS, publish_function, publish_keras
from loadtest.paper.throughput import measure_forest, measure_noop

MiB = 1024 * 1024
# Inception-v3's .keras file is ~96 MB, above the default 100 MiB upload limit once packaged.
MAIN_ENV = {
    "DLHUB_REGISTRY__MAX_UPLOAD_BYTES": str(512 * MiB),
    "DLHUB_BUILDER__MAX_PACKAGE_BYTES": str(512 * MiB),
}
NOTES = {
    "models": "cifar10 and inception are the paper's architectures with random (seeded) weights, not trained "
    "networks: compute and data sizes match, outputs are meaningless. cifar10: 3 conv + 2 dense layers "
    "(TensorFlow tutorial CNN); inception: keras.applications.InceptionV3(weights=None). TensorFlow runs "
    "with the worker's default threads (DLHUB_WORKER__TF_INTRA_OP_THREADS / _INTER_OP_THREADS, 1 each).",
    "scaling_servable": f"burn({BURN_ITERATIONS}): pure-Python integer loop (holds the GIL).",
    "load_generator": "separate spawn processes (load_processes), asyncio + aiohttp, one keep-alive "
    "connection per concurrent client; client_cpu_share = their CPU seconds / (window x usable cores).",
    "memo": "all requests send memoize=false except the memo-on half of the memoization experiment.",
    "timings": "inference = servable call (executor), invocation = at the worker incl. executor IPC and "
    "(de)serialisation, request = at the registry from receipt to result, round_trip = at the client.",
    "batching": "unbatched = N sequential requests of one input; batched = one request with N inputs; the "
    "CIFAR-10 CNN stops at cifar_max_batch (a 10,000-image batch is ~200 MB of JSON); unbatched points stop "
    "at unbatched_max (forest) and cifar_unbatched_max (CNN); noop has both sides at every size "
    "(sequential requests take N x one request).",
}


@dataclass(frozen=True)
class Shared:
    """What every repeat reuses: the model files, the fitted forest, whether optional parts run."""

    models_dir: Path
    models_built: Future[dict[str, int]]
    """The Keras models are built in a subprocess while the first stack starts (both are slow)."""
    forest: Any
    matminer: bool


@dataclass(frozen=True)
class Published:
    cases: list[Case]
    batch_servables: dict[str, BatchServable]
    noop: str
    forest: str
    pipeline_steps: list[str]


class Phases:
    """Wall time of each phase of a repeat, printed as it goes (the run is long) and kept in the results."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 2)
        print(f"  {name}: {self.seconds[name]} s", flush=True)


def _publish_main(stack: RunningStack, cfg: PaperConfig, shared: Shared) -> Published:
    url, token = stack.url, stack.token
    noop = publish_function(url, token, "noop", "noop")
    shared.models_built.result()
    cifar = publish_keras(url, token, "cifar10", shared.models_dir / CIFAR_FILE, CIFAR_SHAPE, 10)
    cases = [
        Case("noop", noop, None, equals("hello world")),
        Case("cifar10", cifar, images(1, CIFAR_SHAPE), probabilities_of(1, 10)),
    ]
    if cfg.inception:
        inception = publish_keras(url, token, "inception_v3", shared.models_dir / INCEPTION_FILE,
                                  INCEPTION_SHAPE, 1000)  # fmt: skip
        cases.append(
            Case("inception", inception, images(1, INCEPTION_SHAPE), probabilities_of(1, 1000), warmup=3)
        )
    if shared.matminer:
        cases.extend(matminer.publish_matminer(url, token))
    forest = publish_forest(url, token, shared.forest)
    noop_batch = publish_function(url, token, "noop_batch", "noop", autobatch=True)
    largest = max(cfg.batch_sizes)
    batch_servables = {
        "noop": BatchServable(noop_batch, lambda n: [None] * n, largest, largest),
        "sklearn_forest": BatchServable(forest, rows_for, largest, cfg.unbatched_max),
        "cifar10": BatchServable(
            cifar, lambda n: images(n, CIFAR_SHAPE), cfg.cifar_max_batch, cfg.cifar_unbatched_max
        ),
    }
    steps = [publish_function(url, token, f"step_{name}", name) for name in PIPELINE_STEPS]
    return Published(cases, batch_servables, noop, forest, steps)


def _main_stack(cfg: PaperConfig, shared: Shared, phase: Phases) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with phase("main stack (total)"), embedded_stack(extra_env=MAIN_ENV) as stack:
        url, token = stack.url, stack.token
        with phase("publish"):
            pub = _publish_main(stack, cfg, shared)
        with phase("servable_performance"):
            out["servable_performance"] = measure_performance(url, token, pub.cases, cfg)
        with phase("memoization"):
            out["memoization"] = measure_memoization(url, token, pub.cases, cfg, out["servable_performance"])
        with phase("batching"):
            out["batching"] = measure_batching(url, token, pub.batch_servables, cfg)
        with phase("pipeline"):
            out["pipeline"] = measure_pipeline(
                url, token, pub.pipeline_steps, cfg.pipeline_requests, cfg.warmup_requests
            )
        with phase("throughput"):
            out["dlhub_sequential"] = measure_dlhub_sequential(
                url, token, pub.noop, pub.forest, shared.forest, cfg
            )
            out["throughput"] = {
                "noop_32_clients": measure_noop(url, token, pub.noop, cfg),
                "forest_32_clients_batching_on": measure_forest(url, token, pub.forest, shared.forest, cfg),
            }
            if wrk.available():
                path = run_path(pub.noop)
                for memoize, key in ((False, "noop_32_clients_wrk"), (True, "noop_32_clients_wrk_memo_on")):
                    out["throughput"][key] = wrk.measure(
                        url,
                        token,
                        path,
                        memoize=memoize,
                        clients=cfg.load_clients,
                        duration_s=cfg.load_duration_s,
                    )
    return out


def _batching_off(cfg: PaperConfig, shared: Shared) -> dict[str, Any]:
    with embedded_stack(extra_env={**MAIN_ENV, "DLHUB_WORKER__BATCH_ENABLED": "false"}) as stack:
        forest = publish_forest(stack.url, stack.token, shared.forest)
        return measure_forest(stack.url, stack.token, forest, shared.forest, cfg)


def run_repeat(cfg: PaperConfig, shared: Shared) -> dict[str, Any]:
    phase = Phases()
    # The floor server starts (imports, trains its forest) while the main stack starts; it idles until used.
    with floor_server() as floor_url:
        out = _main_stack(cfg, shared, phase)
        throughput = out["throughput"]
        with phase("throughput, batching off"):
            throughput["forest_32_clients_batching_off"] = _batching_off(cfg, shared)
        with phase("client_batch"):
            out["client_batch"] = measure_client_batch_stack(cfg, shared.forest, MAIN_ENV)
        with phase("floor"):
            floor = measure_floor(floor_url, shared.forest, cfg)
    throughput["adaptive_batching_speedup"] = ratio(
        throughput["forest_32_clients_batching_on"]["requests_per_s"],
        throughput["forest_32_clients_batching_off"]["requests_per_s"],
    )
    dlhub = {
        **out.pop("dlhub_sequential"),
        "noop_throughput": throughput["noop_32_clients"],
        "sklearn_throughput": throughput["forest_32_clients_batching_on"],
    }
    out["comparison"] = compare(dlhub, floor)
    with phase("scaling"):
        out["scaling"] = measure_scaling(cfg, MAIN_ENV)
    out["phase_s"] = phase.seconds
    return out


def _skipped(cfg: PaperConfig, matminer_reason: str | None) -> list[dict[str, str]]:
    skipped = []
    if not cfg.inception:
        why = "--quick (Inception-v3 is ~96 MB and ~0.3 s per request)" if cfg.quick else "--skip-inception"
        skipped.append({"what": "inception", "reason": why})
    if matminer_reason:
        skipped.append(
            {"what": "matminer_util, matminer_featurize, matminer_model", "reason": matminer_reason}
        )
    return skipped


def run(cfg: PaperConfig) -> dict[str, Any]:
    started = time.monotonic()
    machine = describe_machine()
    matminer_reason = matminer.unavailable_reason()
    with (
        tempfile.TemporaryDirectory(prefix="dlhub-paper-models-") as tmp,
        ThreadPoolExecutor(max_workers=1) as background,
    ):
        built = background.submit(build_in_subprocess, Path(tmp), cfg.inception)
        shared = Shared(Path(tmp), built, train(), matminer_reason is None)
        repeats = []
        for i in range(cfg.repeats):
            print(f"repeat {i + 1}/{cfg.repeats} ...", flush=True)
            repeats.append(run_repeat(cfg, shared))
        params = built.result()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {
        "benchmark": "DLHub paper experiments (loadtest.paper)",
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model_parameters": params,
        "notes": NOTES,
        "skipped": _skipped(cfg, matminer_reason),
        **median_tree(repeats),
        "repeats": repeats,
        "wall_time_s": 0.0,
    }
    results["targets"] = targets.evaluate(results)
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    return results


def write(results: dict[str, Any], out: Path, repeats: int) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.json").write_text(json.dumps(results, indent=2) + "\n")
    table = targets.markdown(results["targets"], repeats)
    (out / "targets.md").write_text(table)
    plots.draw_all(results, out)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, small sizes, no Inception")
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per experiment (default 3, quick 1)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for paper.json and the PNGs")
    parser.add_argument("--skip-inception", action="store_true", help="leave Inception-v3 out (recorded)")
    args = parser.parse_args()
    cfg = make_config(
        quick=args.quick, repeats=args.repeats, out=args.out, skip_inception=args.skip_inception
    )
    results = run(cfg)
    table = write(results, cfg.out, cfg.repeats)
    for entry in results["skipped"]:
        print(f"SKIPPED {entry['what']}: {entry['reason']}")
    print(table)
    print(f"wrote {cfg.out / 'paper.json'} and {len(plots.FIGURES)} PNGs in {results['wall_time_s']} s")


if __name__ == "__main__":
    main()
