"""CPU time per noop request in each service, under 32 concurrent clients (wrk), memo off and on.

    python -m loadtest.cpu_per_request [--clients 32] [--duration-s 6] [--repeats 3] [--metrics on|off|both]
        [--curve on|off|both]

Where the throughput of the serving path goes: for each process of a fresh `dlhub up` (registry, broker,
worker, executor) the CPU seconds of each of its threads (the Python main thread, ZeroMQ's I/O thread)
during a wrk run, divided by the requests served. On 2 cores, 2 s / (sum of CPU per request) bounds the
throughput. Needs wrk (Debian package ``wrk``). Results go to ``loadtest/results/cpu_per_request.json``.

``--metrics off`` runs the stack with ``DLHUB_METRICS__ENABLED=false``; ``--metrics both`` starts a stack
with metrics and one without side by side, alternates their measurements (in the same run) and reports the
overhead of the metrics as ``1 - requests_per_s(on) / requests_per_s(off)`` of the medians; its results go to
``loadtest/results/cpu_per_request_metrics.json``. ``--curve`` does the same for the bus keys (CurveZMQ,
docs/security.md; on by default, as under ``dlhub up``): ``--curve both`` reports ``curve_overhead`` and
``curve_cpu_us_per_request`` in ``loadtest/results/cpu_per_request_curve.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import RunningStack, embedded_stack, write_results
from loadtest.noop_rest import publish_noop
from loadtest.paper import wrk

SERVICES = ("dlhub.broker", "dlhub.registry", "dlhub.worker.executor", "dlhub.worker")


def stack_processes(stack: RunningStack) -> dict[str, psutil.Process]:
    """The stack's service processes by module name (the environment carries the stack's own home)."""
    home = str(Path(stack.data_dir).parent)
    found: dict[str, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        try:
            if not process.environ().get("DLHUB_HOME", "").startswith(home):
                continue
        except psutil.Error:
            continue
        service = next((s for s in SERVICES if s in command), None)
        if service is not None:
            found.setdefault(service, process)
    return found


def thread_cpu_s(processes: dict[str, psutil.Process]) -> dict[str, dict[int, float]]:
    return {
        name: {t.id: t.user_time + t.system_time for t in process.threads()}
        for name, process in processes.items()
    }


def measure(
    stack: RunningStack, servable: str, *, memoize: bool, clients: int, duration_s: float
) -> dict[str, Any]:
    path = f"/api/v1/servables/{servable}/run"
    processes = stack_processes(stack)
    wrk.measure(stack.url, stack.token, path, memoize=memoize, clients=clients, duration_s=1.0)  # warm-up
    before = thread_cpu_s(processes)
    run = wrk.measure(
        stack.url, stack.token, path, memoize=memoize, clients=clients, duration_s=duration_s, warmup=False
    )
    after = thread_cpu_s(processes)
    requests = max(1, run["requests"])
    per_service: dict[str, Any] = {}
    for name in processes:
        threads = sorted(
            ((after[name][tid] - before[name].get(tid, 0.0)) * 1e6 / requests for tid in after[name]),
            reverse=True,
        )
        per_service[name] = {
            "total_us": round(sum(threads), 1),
            "threads_us": [round(t, 1) for t in threads if t >= 0.5],
        }
    total = sum(s["total_us"] for s in per_service.values())
    return {"throughput": run, "cpu_us_per_request": per_service, "total_us": round(total, 1)}


def variants_of(metrics: str, curve: str) -> dict[str, dict[str, str]]:
    """The stacks to compare: result-key suffix -> extra environment; the first is the reference ("")."""
    if metrics == "both" and curve == "both":
        raise SystemExit("--metrics both and --curve both: compare one thing at a time")
    base = {
        "DLHUB_METRICS__ENABLED": "true" if metrics != "off" else "false",
        "DLHUB_BUS__CURVE_ENABLED": "true" if curve != "off" else "false",
    }
    variants = {"": base}
    if metrics == "both":
        variants["_metrics_off"] = base | {"DLHUB_METRICS__ENABLED": "false"}
    if curve == "both":
        variants["_curve_off"] = base | {"DLHUB_BUS__CURVE_ENABLED": "false"}
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", choices=("on", "off", "both"), default="on")
    parser.add_argument("--curve", choices=("on", "off", "both"), default="on")
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    variants = variants_of(args.metrics, args.curve)
    order = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as started:
        # With "both", both stacks are up for the whole run (an idle stack costs next to nothing) and their
        # measurements alternate, so that a slower phase of the machine hits both alike.
        stacks = {
            suffix: started.enter_context(embedded_stack(extra_env=env)) for suffix, env in variants.items()
        }
        servables = {suffix: publish_noop(stack.url, stack.token) for suffix, stack in stacks.items()}
        for repeat in range(args.repeats):
            for suffix in order if repeat % 2 == 0 else list(reversed(order)):
                for key, memoize in (("memo_off", False), ("memo_on", True)):
                    run = measure(
                        stacks[suffix],
                        servables[suffix],
                        memoize=memoize,
                        clients=args.clients,
                        duration_s=args.duration_s,
                    )
                    print(key + suffix, json.dumps(run))
                    runs.setdefault(key + suffix, []).append(run)
    summary: dict[str, Any] = {
        key: {
            "requests_per_s": statistics.median(r["throughput"]["requests_per_s"] for r in rs),
            "total_us": statistics.median(r["total_us"] for r in rs),
            "per_service_us": {
                name: statistics.median(r["cpu_us_per_request"][name]["total_us"] for r in rs)
                for name in rs[0]["cpu_us_per_request"]
            },
        }
        for key, rs in runs.items()
    }
    for suffix in order[1:]:
        # The cost of what the reference has and the other stack has not: metrics, or the bus keys.
        what = suffix.removesuffix("_off").removeprefix("_")
        summary[f"{what}_overhead"] = {
            key: round(1 - summary[key]["requests_per_s"] / summary[key + suffix]["requests_per_s"], 4)
            for key in ("memo_off", "memo_on")
        }
        summary[f"{what}_cpu_us_per_request"] = {
            key: round(summary[key]["total_us"] - summary[key + suffix]["total_us"], 1)
            for key in ("memo_off", "memo_on")
        }
    name = {"_metrics_off": "cpu_per_request_metrics", "_curve_off": "cpu_per_request_curve"}.get(
        order[-1], "cpu_per_request"
    )
    header = {"benchmark": "CPU per noop request (wrk)", "metrics": args.metrics, "curve": args.curve}
    path = write_results(name, {**header, "runs": runs, **summary})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
