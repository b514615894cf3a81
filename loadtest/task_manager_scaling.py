"""Throughput of a CPU-bound servable on 1, 2 and 4 Task Managers (issue 16), against the same function in
1, 2 and 4 plain processes measured in the same run (the ideal curve of this machine), and what the bundle
fetch adds to the first call of a fresh Task Manager.

    python -m loadtest.task_manager_scaling [--managers 1,2,4] [--repeats 3] [--clients 8] [--warmup-s 1]
        [--duration-s 8] [--rounds 2] [--load-processes 1] [--out loadtest/results]

One ``dlhub up --workers 0`` (registry, broker, builder; no worker of its own) with a bus key pair per Task
Manager created before its broker starts. The servable is ``burn`` of ``loadtest.paper.servables``:
pure-Python integer arithmetic (~20 ms on an idle core) that holds the GIL, so only more processes add
throughput. Each repeat, for each N (the order rotates between repeats so that the machine's drift does not
always hit the same N):

1. N ``dlhub worker`` processes start, each in a fresh data directory of its own (empty bundle cache) with
   its own key pair, one executor process and no queue of its own (``DLHUB_WORKER__PROCESSES=1``,
   ``DLHUB_WORKER__BATCH_CAPACITY=0``: capacity 1, so the broker holds the waiting tasks and hands each Task
   Manager one at a time; N Task Managers run at most N tasks at once, as N plain processes do);
2. the first call (one request, nothing else running) is timed: bundle fetch, check and unpack, executor
   start, module load. For N = 1 the Task Manager is then restarted on the same data directory and the first
   call timed again (its bundle cached: executor start and load only); the difference is the fetch's cost,
   and each Task Manager's log gives the fetch and unpack times alone;
3. ``--clients`` closed-loop keep-alive clients (``loadtest.paper.load``: asyncio + aiohttp in
   ``--load-processes`` processes) POST ``/run`` with ``"memoize": false`` for ``--warmup-s`` uncounted,
   then ``--duration-s / --rounds`` counted seconds: requests/s and round-trip p50/p99;
4. the same function then runs in N processes (multiprocessing, fork) in a closed loop for the same warm-up
   and window, the Task Managers idle: calls/s of the ideal. Steps 3 and 4 alternate ``--rounds`` times
   (drift and other jobs hit both alike), then the Task Managers stop; DLHub / ideal for this N and repeat.

Medians over the repeats (ratios: the median of the per-repeat ratios). The 2 cores are shared by the stack,
the Task Managers, the load generator and other jobs on the machine: the load average is recorded at each
step. Results: ``<out>/task_manager_scaling.json`` and ``.png``; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.common import RunningStack, embedded_stack, summary_ms
from loadtest.paper.load import LoadSpec, run_load
from loadtest.paper.machine import describe_machine
from loadtest.paper.scaling import expected_burn
from loadtest.paper.servables import BENCH_SOURCE, BURN_ITERATIONS, publish_function
from loadtest.task_manager_first_call import bundle_logs, stack_broker_port, start_task_manager

RESULTS_DIR = Path(__file__).parent / "results"
NAME = "task_manager_scaling"
# One executor process and no tasks waiting on the Task Manager itself: the broker spreads the load evenly
# and N Task Managers are N processes running the function, as in the ideal.
MANAGER_ENV = {
    "DLHUB_WORKER__PROCESSES": "1",
    "DLHUB_WORKER__TASKS_PER_PROCESS": "1",
    "DLHUB_WORKER__BATCH_CAPACITY": "0",
}
REGISTER_TIMEOUT_S = 120.0
FIRST_CALL_TIMEOUT_S = 300.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the ideal: the function in N plain processes ----------------------------------------------------------


def _burn_loop(iterations: int, start: float, end: float) -> list[float]:
    """Call ``burn`` back to back until ``end``; the durations (ms) of the calls that ended in the window."""
    namespace: dict[str, Any] = {}
    exec(BENCH_SOURCE, namespace)  # the benchmark's own constant source, not user input
    burn = namespace["burn"]
    latencies: list[float] = []
    while (now := time.monotonic()) < end:
        burn(iterations)
        finished = time.monotonic()
        if finished >= start and finished <= end:
            latencies.append((finished - now) * 1000.0)
    return latencies


def ideal_slice(processes: int, iterations: int, warmup_s: float, duration_s: float) -> list[float]:
    """The call durations (ms) of ``processes`` processes each calling the function in a closed loop, in one
    window (time.monotonic is system-wide on Linux, so one window serves every process)."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(abs, range(processes))  # the processes exist before the clock starts
        start = time.monotonic() + warmup_s
        parts = pool.starmap(_burn_loop, [(iterations, start, start + duration_s)] * processes)
    return [x for part in parts for x in part]


# -- Task Managers -----------------------------------------------------------------------------------------


def handler_count(stack: RunningStack) -> int:
    health = httpx.get(
        stack.url + "/api/v1/health", headers={"Authorization": f"Bearer {stack.token}"}, timeout=10
    ).json()
    return int(health["broker"]["handler_counts"].get("worker", 0))


def wait_count(stack: RunningStack, count: int, managers: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while handler_count(stack) != count:
        if any(m.poll() is not None for m in managers):
            raise RuntimeError("a Task Manager exited before it registered (see its log)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} registered Task Managers, have {handler_count(stack)}")
        time.sleep(0.05)


def start_managers(
    stack: RunningStack, base: Path, labels: list[str], keys: list[str]
) -> list[subprocess.Popen[bytes]]:
    broker_url = f"tcp://127.0.0.1:{stack_broker_port(stack.pid)}"
    managers = []
    for label, key in zip(labels, keys, strict=True):
        manager = start_task_manager(
            stack.url, broker_url, stack.data_dir, base, label=label, key_name=key, serves="*",
            extra_env=MANAGER_ENV,
        )  # fmt: skip
        managers.append(manager)
    wait_count(stack, len(managers), managers)
    return managers


def stop_managers(stack: RunningStack, managers: list[subprocess.Popen[bytes]]) -> None:
    for manager in managers:
        manager.send_signal(signal.SIGTERM)
    for manager in managers:
        manager.wait(timeout=60)
    wait_count(stack, 0, [])  # unregistered: the next N starts from an empty broker


def first_call_ms(stack: RunningStack, path: str, body: bytes, expected: int) -> float:
    started = time.perf_counter()
    response = httpx.post(
        stack.url + path, content=body, timeout=FIRST_CALL_TIMEOUT_S,
        headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"},
    )  # fmt: skip
    elapsed = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200 or response.json().get("output") != expected:
        raise RuntimeError(f"first call failed: HTTP {response.status_code}: {response.text[:300]}")
    return round(elapsed, 3)


# The worker's bundle download (dlhub.worker.bundles) makes its httpx.AsyncClient on the first fetch and then
# streams a GET; this does the same in a fresh interpreter, as a fresh Task Manager is.
CLIENT_PROBE = """
import asyncio, json, sys, time
import httpx


async def main(url):
    t0 = time.perf_counter()
    client = httpx.AsyncClient(timeout=60, follow_redirects=False)
    t1 = time.perf_counter()
    (await client.get(url)).raise_for_status()
    t2 = time.perf_counter()
    (await client.get(url)).raise_for_status()
    t3 = time.perf_counter()
    await client.aclose()
    ms = lambda a, b: round((b - a) * 1000, 3)
    print(json.dumps({"new_client_ms": ms(t0, t1), "first_get_ms": ms(t1, t2), "warm_get_ms": ms(t2, t3)}))


asyncio.run(main(sys.argv[1]))
"""


def http_client_setup(stack: RunningStack) -> dict[str, float]:
    """What a fresh Task Manager's first bundle fetch pays besides moving the bytes: making its HTTP client
    (httpx builds its TLS context then) and the first request on it, against the same bundle URL."""
    digests = sorted(p.stem for p in (stack.data_dir / "bundles").glob("*.bin"))
    url = f"{stack.url}/internal/v1/bundles/{digests[0]}" if digests else f"{stack.url}/api/v1/health"
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_PROBE, url], check=True, capture_output=True, text=True, timeout=120
    )
    probe: dict[str, float] = json.loads(done.stdout)
    return probe


# -- one N, one repeat -------------------------------------------------------------------------------------


class Run:
    """What every measurement of the run shares: the stack, the servable, the request, the options."""

    def __init__(self, stack: RunningStack, servable: str, args: argparse.Namespace, base: Path) -> None:
        self.stack, self.args, self.base = stack, args, base
        self.path = f"/api/v1/servables/{servable}/run"
        self.body = f'{{"inputs": {args.iterations}, "memoize": false}}'.encode()
        self.expected = expected_burn() if args.iterations == BURN_ITERATIONS else burn_of(args.iterations)

    def first_call(self) -> float:
        return first_call_ms(self.stack, self.path, self.body, self.expected)

    def load(self, duration_s: float) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.stack.token}", "Content-Type": "application/json"}
        spec = LoadSpec(
            self.stack.url + self.path, headers, (self.body,), (self.expected,), self.args.clients,
            self.args.warmup_s, duration_s,
        )  # fmt: skip
        return run_load(spec, self.args.load_processes)


def burn_of(iterations: int) -> int:
    return sum(i * i % 7 for i in range(iterations))


def interleaved(run: Run, n: int) -> dict[str, Any]:
    """``--rounds`` slices of the load on DLHub and of the ideal in turn (the Task Managers idle during the
    ideal's), so that the machine's drift and other jobs hit both alike; pooled per side."""
    slice_s = run.args.duration_s / run.args.rounds
    loads: list[dict[str, Any]] = []
    ideal_ms: list[float] = []
    for _ in range(run.args.rounds):
        loads.append(run.load(slice_s))
        ideal_ms += ideal_slice(n, run.args.iterations, run.args.warmup_s, slice_s)
    total_s = slice_s * run.args.rounds
    return {
        "requests_per_s": round(sum(load["requests"] for load in loads) / total_s, 2),
        # run_load keeps no raw latencies: the median over the slices of each slice's percentile
        "round_trip_p50_ms": med([load["client_round_trip"]["p50_ms"] for load in loads]),
        "round_trip_p99_ms": med([load["client_round_trip"]["p99_ms"] for load in loads]),
        "errors": sum(load["errors"] for load in loads),
        "client_cpu_share": med([load["client_cpu_share"] for load in loads]),
        "slices_requests_per_s": [load["requests_per_s"] for load in loads],
        "ideal": {
            "processes": n,
            "requests_per_s": round(len(ideal_ms) / total_s, 2),
            "call": summary_ms(ideal_ms),
        },
    }


def measure_managers(run: Run, n: int, repeat: int) -> dict[str, Any]:
    """N fresh Task Managers: their first call, then the load interleaved with the ideal; then stopped."""
    labels = [f"r{repeat}-n{n}-tm{i}" for i in range(1, n + 1)]
    keys = [f"worker-tm{i}" for i in range(1, n + 1)]
    row: dict[str, Any] = {"managers": n, "load_average_before": load_average()}
    managers = start_managers(run.stack, run.base, labels, keys)
    try:
        row["first_call_fresh_ms"] = run.first_call()
        if n == 1:  # the same data directory again: the bundle is cached, the executor starts anew
            stop_managers(run.stack, managers)
            managers = start_managers(run.stack, run.base, labels, keys)
            row["first_call_cached_ms"] = run.first_call()
            row["fetch_extra_ms"] = round(row["first_call_fresh_ms"] - row["first_call_cached_ms"], 3)
        row |= interleaved(run, n)
        row["load_average_after"] = load_average()
    finally:
        stop_managers(run.stack, managers)
    installs = [line for label in labels for line in bundle_logs(run.base / f"{label}.log")]
    row["bundle_fetch_ms"] = [line["fetch_ms"] for line in installs]
    row["bundle_unpack_ms"] = [line["unpack_ms"] for line in installs]
    row["bundle_bytes"] = installs[0]["size_bytes"] if installs else None
    row["over_ideal"] = round(row["requests_per_s"] / row["ideal"]["requests_per_s"], 3)
    return row


def run_repeat(run: Run, repeat: int) -> dict[str, Any]:
    counts = run.args.managers
    shift = repeat % len(counts)
    order = counts[shift:] + counts[:shift]  # rotated: no N always runs first (or on a fresher machine)
    rows: dict[str, Any] = {}
    client = http_client_setup(run.stack)
    for n in order:
        row = rows[str(n)] = measure_managers(run, n, repeat)
        print(
            f"repeat {repeat} N={n}: DLHub {row['requests_per_s']:.1f} req/s, ideal "
            f"{row['ideal']['requests_per_s']:.1f} calls/s, ratio {row['over_ideal']:.2f}, "
            f"load average {row['load_average_before'][0]}",
            flush=True,
        )
    return {"order": order, "rows": rows, "http_client": client, "load_average_after": load_average()}


# -- summary, figure, table --------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(repeats: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for n in counts:
        rows = [r["rows"][str(n)] for r in repeats]
        fetch = [x for row in rows for x in row["bundle_fetch_ms"]]
        unpack = [x for row in rows for x in row["bundle_unpack_ms"]]
        summary[str(n)] = {
            "requests_per_s": med([row["requests_per_s"] for row in rows]),
            "requests_per_s_range": [
                min(r["requests_per_s"] for r in rows),
                max(r["requests_per_s"] for r in rows),
            ],
            "round_trip_p50_ms": med([row["round_trip_p50_ms"] for row in rows]),
            "round_trip_p99_ms": med([row["round_trip_p99_ms"] for row in rows]),
            "ideal_requests_per_s": med([row["ideal"]["requests_per_s"] for row in rows]),
            "ideal_requests_per_s_range": [
                min(r["ideal"]["requests_per_s"] for r in rows),
                max(r["ideal"]["requests_per_s"] for r in rows),
            ],
            "ideal_call_p50_ms": med([row["ideal"]["call"]["p50_ms"] for row in rows]),
            "over_ideal": med([row["over_ideal"] for row in rows]),
            "errors": sum(row["errors"] for row in rows),
            "first_call_fresh_ms": med([row["first_call_fresh_ms"] for row in rows]),
            "first_call_cached_ms": med(
                [row["first_call_cached_ms"] for row in rows if "first_call_cached_ms" in row]
            ),
            "fetch_extra_ms": med([row["fetch_extra_ms"] for row in rows if "fetch_extra_ms" in row]),
            "bundle_fetch_ms": med(fetch),
            "bundle_unpack_ms": med(unpack),
            "load_average_1min": med([row["load_average_before"][0] for row in rows]),
        }
    first = summary[str(counts[0])]
    for row in summary.values():
        row["speedup"] = round(row["requests_per_s"] / first["requests_per_s"], 2)
        row["ideal_speedup"] = round(row["ideal_requests_per_s"] / first["ideal_requests_per_s"], 2)
    return summary


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [3, 2, 3]})
    plot_throughput(axes[0], result)
    plot_latency(axes[1], result)
    plot_first_call(axes[2], result)
    machine = result["machine"]
    fig.suptitle(
        f"{machine['usable_cpus']}-core machine shared with other jobs; load average "
        f"{machine['load_average_at_start'][0]} at start, {result['load_average_at_end'][0]} at end",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(ax: Any, result: dict[str, Any]) -> None:
    counts = result["config"]["managers"]
    rows = [result["median"][str(n)] for n in counts]
    cores = result["machine"]["usable_cpus"]
    for key, label, style in (("ideal_requests_per_s", "ideal: N plain processes", "s--"),
                              ("requests_per_s", "DLHub: N Task Managers", "o-")):  # fmt: skip
        values = [row[key] for row in rows]
        spread = [[v - row[key + "_range"][0] for v, row in zip(values, rows, strict=True)],
                  [row[key + "_range"][1] - v for v, row in zip(values, rows, strict=True)]]  # fmt: skip
        ax.errorbar(counts, values, yerr=spread, fmt=style, capsize=4, label=label)
    linear = [rows[0]["ideal_requests_per_s"] * min(n, cores) / counts[0] for n in counts]
    ax.plot(counts, linear, ":", color="grey", label="ideal at N=1 x min(N, cores)")
    ax.axvline(cores, color="k", lw=1, ls="-.", label=f"{cores} cores")
    for n, row in zip(counts, rows, strict=True):
        ax.annotate(f"{row['over_ideal']:.2f}x ideal", (n, row["requests_per_s"]), textcoords="offset points",
                    xytext=(6, -14), fontsize=8)  # fmt: skip
    ax.set_xticks(counts)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("N (Task Managers / processes)")
    ax.set_ylabel("requests/s (median; bars: min-max of repeats)")
    ax.set_title(f"burn({result['config']['iterations']}), {result['config']['clients']} closed-loop clients")
    ax.legend(fontsize=8)


def plot_latency(ax: Any, result: dict[str, Any]) -> None:
    counts = result["config"]["managers"]
    rows = [result["median"][str(n)] for n in counts]
    ax.plot(counts, [r["round_trip_p50_ms"] for r in rows], "o-", label="DLHub round trip p50")
    ax.plot(counts, [r["round_trip_p99_ms"] for r in rows], "o:", label="DLHub round trip p99")
    ax.plot(counts, [r["ideal_call_p50_ms"] for r in rows], "s--", label="ideal: one call p50")
    ax.axvline(result["machine"]["usable_cpus"], color="k", lw=1, ls="-.")
    ax.set_xticks(counts)
    ax.set_yscale("log")
    ax.set_xlabel("N")
    ax.set_ylabel("ms (median of repeats)")
    ax.set_title(f"latency under load ({result['config']['clients']} clients queue for N)")
    ax.legend(fontsize=8)


def plot_first_call(ax: Any, result: dict[str, Any]) -> None:
    one = result["median"][str(result["config"]["managers"][0])]
    client = result["median_http_client"]
    bars = {
        "first call\nfresh TM": one["first_call_fresh_ms"],
        "first call\nbundle cached": one["first_call_cached_ms"],
        "bundle fetch\n(TM log)": one["bundle_fetch_ms"],
        "unpack\n(TM log)": one["bundle_unpack_ms"],
        "new HTTP client\n+ first GET": client["new_client_ms"] + client["first_get_ms"],
        "one call\n(ideal)": one["ideal_call_p50_ms"],
    }
    colors = ["tab:red", "tab:green", "tab:orange", "tab:olive", "tab:purple", "tab:blue"]
    ax.bar(list(bars), [v or 0 for v in bars.values()], color=colors)
    for i, value in enumerate(bars.values()):
        ax.annotate(f"{value or 0:.0f}", (i, value or 0), ha="center", textcoords="offset points",
                    xytext=(0, 2), fontsize=8)  # fmt: skip
    ax.set_ylabel("ms (median of repeats)")
    ax.set_title("first call on one Task Manager (N=1)")
    ax.tick_params(axis="x", labelsize=7)


def print_table(result: dict[str, Any], json_path: Path) -> None:
    columns = ("N", "req/s", "ideal", "ratio", "p50 ms", "p99 ms", "first ms", "load1")
    print(" ".join(f"{c:>8}" for c in columns))
    keys = ("requests_per_s", "ideal_requests_per_s", "over_ideal", "round_trip_p50_ms", "round_trip_p99_ms",
            "first_call_fresh_ms", "load_average_1min")  # fmt: skip
    for n, row in result["median"].items():
        print(f"{n:>8} " + " ".join(f"{row[key]:>8.2f}" for key in keys))
    one = result["median"][str(result["config"]["managers"][0])]
    print(
        f"first call N=1: fresh {one['first_call_fresh_ms']} ms, bundle cached "
        f"{one['first_call_cached_ms']} ms, extra {one['fetch_extra_ms']} ms "
        f"(fetch {one['bundle_fetch_ms']} + unpack {one['bundle_unpack_ms']} ms)"
    )
    client = result["median_http_client"]
    print(
        f"a fresh process's HTTP client: new client {client['new_client_ms']} ms, first GET "
        f"{client['first_get_ms']} ms, warm GET {client['warm_get_ms']} ms"
    )
    print(f"(medians of {result['config']['repeats']} repeats; results in {json_path})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=BURN_ITERATIONS)
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if 1 not in args.managers:
        parser.error("--managers must include 1 (the first-call comparison and the speedups start there)")
    args.managers = sorted(set(args.managers))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result: dict[str, Any] = {"machine": describe_machine(), "config": vars(args) | {"out": str(args.out)}}
    result["config"]["task_manager_env"] = MANAGER_ENV
    started = time.perf_counter()
    keys = [f"worker-tm{i}" for i in range(1, max(args.managers) + 1)]
    with (
        tempfile.TemporaryDirectory(prefix="dlhub-tm-scaling-") as tmp,
        embedded_stack(workers=0, worker_keys=keys) as stack,
    ):
        servable = publish_function(stack.url, stack.token, "burn", "burn")
        run = Run(stack, servable, args, Path(tmp))
        result["repeats"] = [run_repeat(run, r) for r in range(args.repeats)]
    result["median"] = summarize(result["repeats"], args.managers)
    result["median_http_client"] = {
        key: med([r["http_client"][key] for r in result["repeats"]])
        for key in ("new_client_ms", "first_get_ms", "warm_get_ms")
    }
    result["load_average_at_end"] = load_average()
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["notes"] = NOTES
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{NAME}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{NAME}.png")
    print_table(result, json_path)


NOTES = (
    "Medians over repeats (ratios: median of per-repeat DLHub/ideal). Each Task Manager has 1 executor "
    "process and capacity 1, so N Task Managers run at most N tasks at once, as the N plain processes of the "
    "ideal do. 2-core machine shared by the stack (registry, broker, builder), the Task Managers, the load "
    "generator and other jobs; its speed drifts: see the load averages. Above 2 processes neither curve can "
    "rise: there are no more cores."
)


if __name__ == "__main__":
    main()
