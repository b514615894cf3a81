"""Soak: a steady mixed load on the embedded stack for N minutes, with faults injected on a schedule.

    python -m loadtest.soak --minutes 60 [--rate 8] [--concurrency 8] [--workers 2]
        [--faults worker-kill,broker-kill,registry-kill] [--fault-interval-s 120] [--out-dir loadtest/results]

Starts `dlhub up` (separate processes) in a temporary directory, publishes three python-function servables
(one that answers at once, one that sleeps 0.3 s, one that always fails with a typed error) and one that
receives new versions, then drives ``--rate`` operations per second from ``--concurrency`` threads:
synchronous runs, asynchronous runs polled to their terminal state, searches, describes, version listings
and publishes of new versions (loadtest/soak_load.py).

After ``--warmup-s``, every ``--fault-interval-s`` the next fault of ``--faults`` (in turn) SIGKILLs a service
process; `dlhub up` restarts it. ``worker-kill`` kills a general worker (each in turn), ``broker-kill`` the
broker, ``registry-kill`` the registry (its task table is durable, so the tasks it accepted still reach a
terminal state: docs/reliability.md, "Task outcomes across restarts"). A fault's window runs from the kill
until the stack is healthy again (every handler registered at the broker) plus ``--fault-grace-s``: errors in
it are the fault's. ``--faults none`` runs the load alone.

Every ``--sample-interval-s`` the RSS of each service process (and of its descendants: a worker's executors)
is sampled with psutil. Written to ``--out-dir``: ``soak-<UTC time>.json`` (requests and errors by kind,
errors inside and outside fault windows, tasks submitted / terminal / lost, latency percentiles, the faults,
RSS series and growth) and ``soak-<UTC time>.svg`` (RSS per service over time, faults marked).

Exit code 1 when a check fails: a lost task (accepted, never terminal within ``--drain-s`` after the load), a
5xx or transport error outside every fault window, a fault the stack did not recover from, or (runs of 30
minutes or more) RSS growth above 10% for a service between its first steady sample and the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import RunningStack, embedded_stack, summary_ms
from loadtest.soak_load import SERVABLE_SOURCE, Load, Recorder, Servables
from loadtest.soak_report import build_report, checks, write_plot
from loadtest.soak_stack import FAULT_TARGETS, Fault, RssSampler, ServiceTable, healthy, inject

RESULTS = Path(__file__).parent / "results"
RSS_CHECK_MIN_MINUTES = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="length of the load (after warm-up)")
    parser.add_argument("--rate", type=float, default=8.0, help="operations per second, all threads together")
    parser.add_argument("--concurrency", type=int, default=8, help="load threads")
    parser.add_argument("--workers", type=int, default=2, help="general workers of the stack")
    parser.add_argument(
        "--faults", default="worker-kill,broker-kill,registry-kill", help="comma list, in turn, or 'none'"
    )
    parser.add_argument("--fault-interval-s", type=float, default=120.0)
    parser.add_argument("--fault-grace-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load before the first RSS baseline")
    parser.add_argument("--sample-interval-s", type=float, default=5.0)
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.fault_list = (
        [] if args.faults == "none" else [f.strip() for f in args.faults.split(",") if f.strip()]
    )
    unknown = [f for f in args.fault_list if f not in FAULT_TARGETS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {sorted(FAULT_TARGETS)} or 'none'")
    return args


def publish_servables(stack: RunningStack) -> Servables:
    """The three run targets and the servable that receives new versions, published and ready."""
    names: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, DLHubClient(stack.url, stack.token) as client:
        Path(tmp, "soak_fns.py").write_text(SERVABLE_SOURCE)
        documents = {
            kind: python_function_document(
                name=f"soak_{kind}",
                module="soak_fns",
                function=function,
                files=["soak_fns.py"],
                title=f"Soak {kind}",
                authors=["Soak, Load"],
                domains=["soak"],
            )
            for kind, function in (("noop", "noop"), ("slow", "slow"), ("fail", "fail"), ("pub", "noop"))
        }
        for kind, document in documents.items():
            names[kind] = str(client.publish(document, base_dir=tmp)["shorthand_name"])
    published = names.pop("pub")
    return Servables(run=names, published=published, document=documents["pub"])


class FaultSchedule(threading.Thread):
    """After ``first_at_s``, every ``interval_s``: the next fault in turn, waited on until recovered."""

    def __init__(self, args: argparse.Namespace, table: ServiceTable, api: str, clock: Any) -> None:
        super().__init__(daemon=True)
        self.args, self.table, self.api, self.clock = args, table, api, clock
        self.events: list[Fault] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        if not self.args.fault_list:
            return
        next_at, turn, worker_turn = self.args.warmup_s, 0, 0
        while not self.stopping.wait(max(0.0, next_at - self.clock())):
            name = self.args.fault_list[turn % len(self.args.fault_list)]
            label = FAULT_TARGETS[name]
            if label == "worker":
                label, worker_turn = f"worker-{worker_turn % self.args.workers}", worker_turn + 1
            event = inject(name, label, self.table, api=self.api, workers=self.args.workers, clock=self.clock)
            event.window_end_s = (event.recovered_s or self.clock()) + self.args.fault_grace_s
            self.events.append(event)
            print(f"[{self.clock():7.1f} s] {name} {label} pid {event.pid}: recovered at "
                  f"{event.recovered_s}", flush=True)  # fmt: skip
            turn += 1
            next_at += self.args.fault_interval_s


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with embedded_stack(workers=args.workers) as stack:
        api = stack.url + "/api/v1"
        servables = publish_servables(stack)
        started = time.monotonic()

        def clock() -> float:
            return time.monotonic() - started

        table = ServiceTable(stack.pid)
        sampler = RssSampler(table, clock, args.sample_interval_s)
        sampler.sample()
        recorder = Recorder(clock)
        load = Load(api, stack.token, servables, recorder, rate=args.rate, concurrency=args.concurrency)
        faults = FaultSchedule(args, table, api, clock)
        sampling = threading.Thread(target=sampler.run, daemon=True)
        for thread in (sampling, faults):
            thread.start()
        load.start()
        _wait_for_end(args, clock, faults)
        load.stop()
        faults.stopping.set()
        faults.join()
        load.drain(args.drain_s)
        sampler.stop.set()
        sampling.join()
        sampler.sample()
        final_health = healthy(api, args.workers)
        duration_s = clock()
    return build_report(
        args=vars(args) | {"out_dir": str(args.out_dir), "fault_list": args.fault_list},
        recorder=recorder,
        faults=faults.events,
        rss=sampler.series,
        duration_s=duration_s,
        final_health=final_health,
        latency=summary_ms,
    )


def _wait_for_end(args: argparse.Namespace, clock: Any, faults: FaultSchedule) -> None:
    end_s = args.warmup_s + args.minutes * 60
    while clock() < end_s:
        time.sleep(min(10.0, max(0.0, end_s - clock())))  # the load runs in its threads meanwhile
        print(f"[{clock():7.1f} s] soak running", flush=True)
    # a fault still recovering finishes first, so the drain does not start on a half-restarted stack
    faults.stopping.set()
    faults.join(timeout=240)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = soak(args)
    failures = checks(report, rss_checked=args.minutes >= RSS_CHECK_MIN_MINUTES)
    report["checks"] = {"passed": not failures, "failures": failures}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot = write_plot(report, args.out_dir / f"soak-{stamp}.svg")
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {path}\nplot: {plot}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
