"""The soak's traffic: a steady mix of runs, searches, describes and publishes, and a record of every answer.

Each of ``concurrency`` threads draws operations from ``MIX`` at ``rate / concurrency`` per second on a
keep-alive connection of its own; a poller thread follows every accepted task (asynchronous runs, the builds
of publishes) to its terminal state. Errors are kept one by one with their start and end times, so the
report can tell the ones that overlap an injected fault from the ones that do not.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed"})

# operation -> weight; runs pick their servable from RUN_TARGETS
MIX: dict[str, int] = {
    "sync_run": 40,
    "async_run": 25,
    "search": 15,
    "describe": 15,
    "list_versions": 3,
    "publish": 2,
}
RUN_TARGETS: dict[str, int] = {"noop": 6, "slow": 2, "fail": 2}
# Distinct run inputs. The registry memoizes every deterministic result even with "memoize": false (it only
# skips the lookup), for up to registry.memo_ttl_s (1 h): random inputs would grow the memo for the whole
# soak, by design, and hide a leak in that growth. A small set fills it during the warm-up.
RUN_INPUTS = 64
SERVABLE_SOURCE = """
import time


def noop(x):
    return "hello world"


def slow(x):
    time.sleep(0.3)  # a servable that holds its executor, so tasks queue and overlap faults
    return x


def fail(x):
    raise ValueError("the soak's servable that always fails")
"""


@dataclass
class ErrorEvent:
    kind: str
    error: str  # "HTTP 503 broker_unavailable", "ConnectError", ...
    status: int | None
    start_s: float
    end_s: float


@dataclass
class TrackedTask:
    kind: str  # async_run or publish
    servable: str
    submitted_s: float
    state: str = "pending"
    error_type: str | None = None
    terminal_s: float | None = None


@dataclass
class Recorder:
    """Everything the load saw, shared by the load threads (one lock; a few hundred calls per second)."""

    clock: Callable[[], float]
    requests: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[ErrorEvent] = field(default_factory=list)
    tasks: dict[str, TrackedTask] = field(default_factory=dict)
    sync_outcomes: Counter[str] = field(default_factory=Counter)  # "completed", "failed servable_error"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(
        self, client: httpx.Client, kind: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        """One request: its latency, or its error. None when it did not succeed (2xx)."""
        start = self.clock()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._error(kind, type(exc).__name__, None, start)
            return None
        elapsed_ms = (self.clock() - start) * 1000
        if response.status_code >= 400:
            self._error(
                kind, f"HTTP {response.status_code} {_error_type(response)}", response.status_code, start
            )
            return None
        with self.lock:
            self.requests[kind] += 1
            self.latencies_ms[kind].append(elapsed_ms)
        return response

    def _error(self, kind: str, error: str, status: int | None, start: float) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.errors.append(ErrorEvent(kind, error, status, start, self.clock()))

    def track(self, task_id: str, kind: str, servable: str) -> None:
        with self.lock:
            self.tasks[task_id] = TrackedTask(kind, servable, self.clock())

    def pending(self) -> list[str]:
        with self.lock:
            return [task_id for task_id, task in self.tasks.items() if task.state not in TERMINAL]

    def settle(self, task_id: str, record: dict[str, Any]) -> None:
        with self.lock:
            task = self.tasks[task_id]
            task.state = str(record.get("state"))
            if task.state in TERMINAL:
                task.terminal_s = self.clock()
                task.error_type = (record.get("error") or {}).get("type")


def _error_type(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "no_error_body"


@dataclass
class Servables:
    run: dict[str, str]  # "noop" -> "owner/name"
    published: str  # the servable that gets new versions
    document: dict[str, Any]  # its metadata document, sent again for every new version


class Load:
    """The load threads and the task poller; ``start`` then ``stop``."""

    def __init__(
        self, api: str, token: str, servables: Servables, recorder: Recorder, *, rate: float, concurrency: int
    ) -> None:
        self.api, self.token, self.servables, self.rec = api, token, servables, recorder
        self.interval_s = concurrency / rate
        self.concurrency = concurrency
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.api, headers=headers, timeout=60.0)

    def start(self) -> None:
        for index in range(self.concurrency):
            self.threads.append(threading.Thread(target=self._drive, args=(index,), daemon=True))
        self.threads.append(threading.Thread(target=self._poll, args=(self.stopping,), daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def _drive(self, index: int) -> None:
        rng = random.Random(index)
        operations, weights = list(MIX), list(MIX.values())
        next_at = time.monotonic() + rng.random() * self.interval_s  # spread the threads over the interval
        with self.client() as client:
            while not self.stopping.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self.stopping.wait(delay):
                    break
                next_at = max(next_at + self.interval_s, time.monotonic() - self.interval_s)
                self.operation(client, rng.choices(operations, weights)[0], rng)

    def operation(self, client: httpx.Client, kind: str, rng: random.Random) -> None:
        if kind in ("sync_run", "async_run"):
            target = self.servables.run[rng.choices(list(RUN_TARGETS), list(RUN_TARGETS.values()))[0]]
            self._run(client, kind, target, rng)
        elif kind == "search":
            self.rec.call(client, kind, "GET", "/search", params={"q": rng.choice(["soak", "noop", "fail"])})
        elif kind == "describe":
            self.rec.call(client, kind, "GET", f"/servables/{rng.choice(list(self.servables.run.values()))}")
        elif kind == "list_versions":
            self.rec.call(client, kind, "GET", f"/servables/{self.servables.published}/versions")
        elif kind == "publish":
            self._publish(client)

    def _run(self, client: httpx.Client, kind: str, target: str, rng: random.Random) -> None:
        asynchronous = kind == "async_run"
        # memoize off: every run reaches a worker, which is what the faults are about
        body = {"inputs": rng.randrange(RUN_INPUTS), "asynchronous": asynchronous, "memoize": False}
        response = self.rec.call(client, kind, "POST", f"/servables/{target}/run", json=body)
        if response is None:
            return
        record = response.json()
        if asynchronous:
            self.rec.track(record["task_id"], kind, target)
            return
        error = (record.get("error") or {}).get("type")
        with self.rec.lock:
            self.rec.sync_outcomes[f"{record['state']} {error}" if error else str(record["state"])] += 1

    def _publish(self, client: httpx.Client) -> None:
        path = f"/servables/{self.servables.published}"
        response = self.rec.call(client, "publish", "PUT", path, json=self.servables.document)
        if response is not None:
            self.rec.track(response.json()["task_id"], "publish", self.servables.published)

    def _poll(self, stopping: threading.Event) -> None:
        """Follow every tracked task until it is terminal; keeps going until ``stopping`` is set."""
        with self.client() as client:
            while not stopping.wait(0.5):
                self.poll_once(client)

    def poll_once(self, client: httpx.Client) -> None:
        for task_id in self.rec.pending():
            response = self.rec.call(client, "task_status", "GET", f"/tasks/{task_id}")
            if response is not None:
                self.rec.settle(task_id, response.json())

    def drain(self, timeout_s: float) -> None:
        """After the load: poll the remaining tasks until all are terminal or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while self.rec.pending() and time.monotonic() < deadline:
                self.poll_once(client)
                time.sleep(0.5)  # the polling interval
