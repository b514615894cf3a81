"""Backpressure and graceful shutdown on a stack of our own (`dlhub up`, real processes): a full topic queue
answers 503 with ``Retry-After``; SIGTERM drains a worker and the registry; a rolling restart of the workers
under load loses nothing (docs/reliability.md).

The stack has two workers of capacity two each (one executor process, two tasks per process, batching off)
and a per-topic broker queue of two, so six ``slow`` tasks fill a topic: four at the workers, two queued.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.common.errors import DLHubError
from tests.stack.test_e2e import publish_function
from tests.support.polling import wait_until
from tests.support.stack import start_stack, stop_stack

QUEUE_PER_TOPIC = 2
WORKER_CAPACITY = 2
GRACE_S = 10.0  # the default shutdown grace of the registry and the worker


@dataclass
class Stack:
    process: Any
    url: str
    api: str
    token: str

    def health(self) -> httpx.Response:
        return httpx.get(self.api + "/health", timeout=5)

    def service_pids(self, module: str) -> list[int]:
        """PIDs of the live services ``python -m <module>`` that `dlhub up` started."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            state, ppid = fields[0], int(fields[1])
            if ppid == self.process.pid and state != "Z" and module.encode() in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def draining_workers(self) -> int:
        """Workers the broker knows to be draining (the administrator's view of GET /health)."""
        body = httpx.get(self.api + "/health", headers={"Authorization": f"Bearer {self.token}"}).json()
        return sum(1 for h in body["broker"]["handlers"] if h["kind"] == "worker" and h.get("draining"))

    def workers_registered(self) -> int:
        try:
            response = self.health()
        except httpx.HTTPError:
            return 0
        if response.status_code != 200:
            return 0
        count: int = response.json()["broker"]["handler_counts"].get("worker", 0)
        return count


def _more_than(items: list[object], count: int) -> bool:
    return len(items) > count


def exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.fixture(scope="module")
def bp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("bpstack")
    env = {
        "DLHUB_BROKER__MAX_QUEUED_PER_TOPIC": str(QUEUE_PER_TOPIC),
        "DLHUB_WORKER__BATCH_ENABLED": "false",
        "DLHUB_WORKER__TASKS_PER_PROCESS": str(WORKER_CAPACITY),
        # One servable may take a worker's whole capacity here (the fair share would leave it one slot), so
        # that six ``slow`` tasks fill the topic as the arithmetic above says.
        "DLHUB_WORKER__SERVABLE_MAX_TASKS": str(WORKER_CAPACITY),
    }
    process, info = start_stack(base, workers=2, extra_env=env)
    stack = Stack(process, info["url"], info["url"] + "/api/v1", info["alice"])
    try:
        wait_until(lambda: stack.workers_registered() == 2, timeout_s=60, message="two workers")
        yield stack
    finally:
        code = stop_stack(process)
        assert code == 0, f"dlhub up exited with {code}: {(base / 'up.log').read_text()[-4000:]}"


@pytest.fixture(scope="module")
def client(bp: Stack) -> DLHubClient:
    return DLHubClient(bp.url, bp.token)


@pytest.fixture(scope="module")
def slow(client: DLHubClient, pkg_dir: Path) -> str:
    return publish_function(client, pkg_dir, "slow")


def _pid_of(pidfile: Path) -> int:
    """The worker that ran (runs) the ``slow`` task writing ``pidfile``."""

    def written() -> str | None:
        return pidfile.read_text() if pidfile.is_file() else None

    return int(wait_until(written, timeout_s=20, message=f"the task writing {pidfile.name} to start"))


def _wait_stack_whole(bp: Stack) -> None:
    wait_until(
        lambda: len(bp.service_pids("dlhub.worker")) == 2 and bp.workers_registered() == 2,
        timeout_s=60,
        interval_s=0.1,
        message="the launcher to restart the worker and it to register",
    )


def test_a_full_topic_queue_refuses_runs_with_503_and_retry_after(
    bp: Stack, client: DLHubClient, slow: str, tmp_path: Path
) -> None:
    # Four at the workers, two queued: the topic's bound.
    fill = 2 * WORKER_CAPACITY + QUEUE_PER_TOPIC
    handles = [
        client.run_async(slow, {"pidfile": str(tmp_path / f"fill{i}"), "seconds": 3}) for i in range(fill)
    ]
    headers = {"Authorization": f"Bearer {bp.token}"}
    run_url = f"{bp.api}/servables/{slow}/run"
    refused = 0
    with httpx.Client(headers=headers, timeout=10) as http:
        for i in range(20):
            body = {"inputs": {"pidfile": str(tmp_path / f"no{i}"), "seconds": 0}, "asynchronous": i % 2 == 1}
            response = http.post(run_url, json=body)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
            assert response.headers["Content-Type"].startswith("application/json")
            error = response.json()["error"]
            assert error["type"] == "queue_full" and "full" in error["message"]
            refused += 1
        # The refused tasks took no room: the queue holds the bound, no more.
        assert bp.health().json()["broker"]["queued"] == QUEUE_PER_TOPIC
    assert refused == 20
    assert not any((tmp_path / f"no{i}").exists() for i in range(20))

    # The SDK waits as told and retries (a refused run was never accepted): it gets in once there is room.
    started = time.monotonic()
    assert client.run(slow, {"pidfile": str(tmp_path / "retried"), "seconds": 0}) == "finished"
    assert time.monotonic() - started >= 1.0
    assert [h.result(timeout_s=30) for h in handles] == ["finished"] * fill


def test_worker_sigterm_finishes_its_task_takes_no_new_one_and_exits(
    bp: Stack, client: DLHubClient, slow: str, tmp_path: Path
) -> None:
    _wait_stack_whole(bp)
    # One task on each worker: each has one slot free.
    first = client.run_async(slow, {"pidfile": str(tmp_path / "a"), "seconds": 3})
    victim = _pid_of(tmp_path / "a")
    second = client.run_async(slow, {"pidfile": str(tmp_path / "b"), "seconds": 5})
    assert _pid_of(tmp_path / "b") != victim
    signalled = time.monotonic()
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: bp.draining_workers() == 1, timeout_s=5, message="the broker to hear of the drain")
    # Two free slots, one each: without the draining worker's word one of these would land on it.
    later = [client.run_async(slow, {"pidfile": str(tmp_path / f"c{i}"), "seconds": 0}) for i in range(2)]

    assert first.result(timeout_s=30) == "finished"  # the running task completed despite SIGTERM
    wait_until(lambda: exited(victim), timeout_s=GRACE_S + 5, message="the worker to exit")
    assert time.monotonic() - signalled < GRACE_S
    assert [h.result(timeout_s=60) for h in later] == ["finished"] * 2
    assert victim not in {_pid_of(tmp_path / f"c{i}") for i in range(2)}
    assert second.result(timeout_s=30) == "finished"


def test_registry_sigterm_finishes_sync_runs_refuses_new_requests_and_exits(
    bp: Stack, slow: str, tmp_path: Path
) -> None:
    _wait_stack_whole(bp)
    [registry] = bp.service_pids("dlhub.registry")
    headers = {"Authorization": f"Bearer {bp.token}"}
    answers: list[httpx.Response] = []

    def run_sync(index: int) -> None:
        body = {"inputs": {"pidfile": str(tmp_path / f"s{index}"), "seconds": 3}}
        answers.append(httpx.post(f"{bp.api}/servables/{slow}/run", json=body, headers=headers, timeout=30))

    threads = [threading.Thread(target=run_sync, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for i in range(2):
        _pid_of(tmp_path / f"s{i}")  # both runs are in progress
    signalled = time.monotonic()
    os.kill(registry, signal.SIGTERM)

    def refused() -> httpx.Response | None:
        response = bp.health()
        return response if response.status_code == 503 else None

    response = wait_until(refused, timeout_s=5, message="the registry to refuse new requests")
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "shutting_down"
    for thread in threads:
        thread.join(timeout=30)
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["output"] for a in answers] == ["finished", "finished"]
    wait_until(lambda: exited(registry), timeout_s=GRACE_S + 5, message="the registry to exit")
    assert time.monotonic() - signalled < GRACE_S
    wait_until(lambda: bp.workers_registered() == 2, timeout_s=60, message="the restarted registry")


def test_rolling_restart_of_the_workers_under_load_loses_nothing(
    bp: Stack, client: DLHubClient, pkg_dir: Path
) -> None:
    square = publish_function(client, pkg_dir, "square")
    _wait_stack_whole(bp)
    stop = threading.Event()
    outcomes: list[object] = []

    def load(offset: int) -> None:
        with DLHubClient(bp.url, bp.token) as own:
            x = offset
            while not stop.is_set():
                try:
                    outcomes.append(own.run(square, x) == x * x or f"wrong answer for {x}")
                except Exception as exc:  # every failure is a lost request: reported below
                    outcomes.append(repr(exc))
                x += 2

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        for victim in bp.service_pids("dlhub.worker"):
            os.kill(victim, signal.SIGTERM)
            wait_until(partial(exited, victim), timeout_s=GRACE_S + 5, message="the worker to exit")
            _wait_stack_whole(bp)
            wait_until(partial(_more_than, outcomes, len(outcomes) + 10), timeout_s=30, message="load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failures = [o for o in outcomes if o is not True]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    assert len(outcomes) > 20


BROKER_GRACE_S = 12.0  # broker.shutdown_grace_s's default
RETRIED_503 = frozenset({"shutting_down", "queue_full", "broker_unavailable"})


def test_a_broker_restart_under_steady_load_answers_every_request_and_ends_every_task(
    bp: Stack, client: DLHubClient, pkg_dir: Path
) -> None:
    """Pass criteria: two SDK clients run ``square`` synchronously and one submits asynchronous runs, in a
    loop, while the broker is SIGTERMed (it drains and exits; `dlhub up` starts a new one). Every synchronous
    request ends with the right answer, or (after the SDK's retries of 503 + ``Retry-After``) with a typed
    503 error, never anything else; most succeed, also after the restart; every asynchronous task accepted
    (202) reaches a terminal state, completed with the right answer or failed with a typed code."""
    square = publish_function(client, pkg_dir, "square")
    _wait_stack_whole(bp)
    stop = threading.Event()
    outcomes: list[object] = []
    accepted: dict[str, int] = {}

    def sync_load(offset: int) -> None:
        with DLHubClient(bp.url, bp.token) as own:
            x = offset
            while not stop.is_set():
                try:
                    outcomes.append(own.run(square, x) == x * x or f"wrong answer for {x}")
                except DLHubError as exc:
                    outcomes.append(exc.code if exc.code in RETRIED_503 else f"{exc.code}: {exc.message}")
                except Exception as exc:
                    outcomes.append(repr(exc))
                x += 3

    def async_load() -> None:
        with DLHubClient(bp.url, bp.token) as own:
            x = 2
            while not stop.wait(0.05):
                try:
                    accepted[own.run_async(square, x).task_id] = x
                except DLHubError as exc:
                    outcomes.append(exc.code if exc.code in RETRIED_503 else f"{exc.code}: {exc.message}")
                x += 3

    threads = [threading.Thread(target=sync_load, args=(i,)) for i in range(2)]
    threads.append(threading.Thread(target=async_load))
    for thread in threads:
        thread.start()
    try:
        wait_until(partial(_more_than, outcomes, 10), timeout_s=30, message="load before the restart")
        (broker,) = bp.service_pids("dlhub.broker")
        os.kill(broker, signal.SIGTERM)
        wait_until(partial(exited, broker), timeout_s=BROKER_GRACE_S + 5, message="the broker to exit")
        restarted = wait_until(
            lambda: [p for p in bp.service_pids("dlhub.broker") if p != broker],
            timeout_s=30,
            message="the new broker",
        )
        wait_until(lambda: bp.workers_registered() == 2, timeout_s=60, message="the workers to re-register")
        after = len(outcomes), len(accepted)
        wait_until(
            lambda: len(outcomes) > after[0] + 20 and len(accepted) > after[1] + 3,
            timeout_s=60,
            message="load after the restart",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    untyped = [o for o in outcomes if o is not True and o not in RETRIED_503]
    assert not untyped, f"{len(untyped)} of {len(outcomes)} requests ended badly: {untyped[:5]}"
    assert outcomes.count(True) > 0.8 * len(outcomes), outcomes
    assert outcomes[-10:] == [True] * 10 and bp.service_pids("dlhub.broker") == restarted  # served after

    def ended() -> dict[str, dict[str, Any]] | None:
        records = {task_id: client.status(task_id) for task_id in accepted}
        return records if all(r["state"] in ("completed", "failed") for r in records.values()) else None

    records = wait_until(ended, timeout_s=60, message="every accepted asynchronous task to end")
    for task_id, record in records.items():
        if record["state"] == "completed":
            assert record["output"] == accepted[task_id] ** 2, record
        else:
            assert record["error"]["type"] in {"broker_unavailable", "broker_restarted", "shutting_down"}, (
                record
            )
    states = [r["state"] for r in records.values()]
    assert states.count("completed") > 3, states


def test_a_draining_worker_hands_back_the_tasks_it_has_not_started(
    bp: Stack, client: DLHubClient, slow: str, tmp_path: Path
) -> None:
    """Pass criteria: four 7 s ``slow`` runs fill both workers (each: one running, one queued behind it in its
    executor process). One worker is SIGTERMed: when its running task ends (7 s, within its 10 s grace) its
    executor answers the queued one "not started", the worker hands it back and the broker routes it to a
    worker that runs it. Every run answers ``finished``; only one of them ran in the stopped worker. (Without
    the hand-back the queued task would run there from 7 s and be cancelled at 10 s: ``handler_lost``.)"""
    _wait_stack_whole(bp)
    headers = {"Authorization": f"Bearer {bp.token}"}
    answers: dict[int, httpx.Response] = {}

    def run_sync(index: int) -> None:
        body = {"inputs": {"pidfile": str(tmp_path / f"h{index}"), "seconds": 7}, "timeout_s": 60}
        answers[index] = httpx.post(f"{bp.api}/servables/{slow}/run", json=body, headers=headers, timeout=90)

    threads = [threading.Thread(target=run_sync, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()

    def two_started() -> list[Path] | None:
        found = [p for p in tmp_path.glob("h?") if p.is_file()]
        return found if len(found) >= 2 else None

    started = wait_until(two_started, timeout_s=30, message="two runs to start")
    victim = _pid_of(started[0])
    os.kill(victim, signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=90)
    assert sorted(answers) == [0, 1, 2, 3]
    for response in answers.values():
        assert response.status_code == 200 and response.json().get("output") == "finished", response.text
    ran_in = [_pid_of(tmp_path / f"h{i}") for i in range(4)]
    assert ran_in.count(victim) == 1, (victim, ran_in)
    wait_until(lambda: exited(victim), timeout_s=GRACE_S + 5, message="the worker to exit")
    _wait_stack_whole(bp)
