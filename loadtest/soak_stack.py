"""The soak's view of a running `dlhub up`: its service processes, their memory, and the faults it injects.

``dlhub up`` starts each service as a direct child (``python -m dlhub.<service>``) and restarts a child that
dies; a fault here is a SIGKILL of one child, and the fault lasts until the launcher's replacement has
registered and the registry's health shows every handler again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

# fault name -> the service whose process it SIGKILLs (worker: the general workers in turn)
FAULT_TARGETS = {"worker-kill": "worker", "broker-kill": "broker", "registry-kill": "registry"}
SERVICES = ("broker", "registry", "builder", "search", "worker")
MB = 1024 * 1024


def service_of(process: psutil.Process) -> str | None:
    """``dlhub.worker`` -> ``worker``: the service a child of `dlhub up` runs, or None for anything else."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return None
    if "-m" not in cmdline:
        return None
    module = cmdline[cmdline.index("-m") + 1] if cmdline.index("-m") + 1 < len(cmdline) else ""
    service = module.removeprefix("dlhub.")
    return service if service in SERVICES else None


class ServiceTable:
    """Labels (``broker``, ``worker-0``, ...) for the children of `dlhub up`, stable across restarts: a new
    worker process takes the label of the worker process that is gone."""

    def __init__(self, up_pid: int) -> None:
        self.up = psutil.Process(up_pid)
        self.pids: dict[str, int] = {}
        self.lock = threading.Lock()

    def refresh(self) -> dict[str, psutil.Process]:
        with self.lock:
            children = {p.pid: p for p in self.up.children(recursive=False) if _alive(p)}
            live = {label: pid for label, pid in self.pids.items() if pid in children}
            known = set(live.values())
            for pid in sorted(children):
                service = service_of(children[pid])
                if service is None or pid in known:
                    continue
                live[self._free_label(service, live)] = pid
            self.pids = live
            return {label: children[pid] for label, pid in live.items()}

    @staticmethod
    def _free_label(service: str, live: dict[str, int]) -> str:
        if service != "worker":
            return service
        index = 0
        while f"worker-{index}" in live:
            index += 1
        return f"worker-{index}"

    def pid_of(self, label: str) -> int | None:
        self.refresh()
        with self.lock:
            return self.pids.get(label)


def _alive(process: psutil.Process) -> bool:
    """Not a zombie: a killed service stays a child of `dlhub up` until the launcher reaps it."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def rss_mb(process: psutil.Process) -> tuple[float, float]:
    """(the process's own RSS, the RSS of it and its descendants: a worker's executors, a build's pip)."""
    own = process.memory_info().rss
    tree = own
    for child in process.children(recursive=True):
        try:
            tree += child.memory_info().rss
        except psutil.Error:
            continue
    return round(own / MB, 2), round(tree / MB, 2)


@dataclass
class RssSampler:
    """Every ``interval_s``: each service's RSS, as ``{label: [[t_s, pid, rss_mb, tree_rss_mb], ...]}``."""

    table: ServiceTable
    clock: Callable[[], float]
    interval_s: float
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for label, process in self.table.refresh().items():
            try:
                own, tree = rss_mb(process)
            except psutil.Error:
                continue  # exited between the listing and the reading: the next sample has its successor
            self.series.setdefault(label, []).append([round(self.clock(), 2), process.pid, own, tree])

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.sample()


@dataclass
class Fault:
    name: str
    target: str
    pid: int
    at_s: float
    recovered_s: float | None = None  # when health showed every handler again and the target had a new pid
    window_end_s: float = 0.0  # recovered_s plus a grace period: what fails before it is the fault's

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "pid": self.pid,
            "at_s": round(self.at_s, 2),
            "recovered_s": None if self.recovered_s is None else round(self.recovered_s, 2),
            "window_end_s": round(self.window_end_s, 2),
        }


def healthy(api: str, workers: int) -> bool:
    """The registry answers and the broker lists the builder, search and every worker (what `dlhub up`
    waits for at start-up)."""
    try:
        response = httpx.get(api + "/health", timeout=2.0)
        counts: dict[str, int] = response.json().get("broker", {}).get("handler_counts", {})
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return (
        response.status_code == 200
        and counts.get("builder", 0) > 0
        and counts.get("search", 0) > 0
        and counts.get("worker", 0) >= workers
    )


def inject(
    fault: str, label: str, table: ServiceTable, *, api: str, workers: int, clock: Callable[[], float]
) -> Fault:
    """SIGKILL ``label``'s process, then wait until `dlhub up` replaced it and the stack is healthy again."""
    pid = table.pid_of(label)
    if pid is None:
        raise RuntimeError(f"no process for {label} to inject {fault} into")
    event = Fault(fault, label, pid, clock())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replaced = table.pid_of(label) not in (None, pid)
        if replaced and healthy(api, workers):
            event.recovered_s = clock()
            break
        time.sleep(0.25)  # the polling interval while the launcher restarts the service
    return event
