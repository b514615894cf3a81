"""More than one registry (docs/reliability.md, "Several registries"): two registry processes share one
MongoDB store and one broker (with a builder and a worker), as real processes over real sockets.

- a task submitted through one registry is polled through the other;
- a run memoized through one is a memo hit through the other (``registry.memo_shared``);
- one registry SIGKILLed while tasks submitted round-robin through both (a load balancer's way, retrying a
  refused connection on the other) are in flight: the other takes its tasks over and every accepted task
  completes with its own output, polled through the survivor; no task in the store stays open. A synchronous
  run in flight on the killed registry ends with a dropped connection (it is not a task: not taken over).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig, RegistryConfig
from dlhub.common.errors import DLHubError
from dlhub.common.messages import Result
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.clock import now_ms
from dlhub.registry.store import TaskRecord
from dlhub.registry.store.mongo import MongoMetadataStore
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from dlhub.registry.takeover import TaskTakeover
from dlhub.registry.tasks import TaskTable
from tests.stack.test_broker import Gate, route, stats_match
from tests.support.broker import BrokerProcess, bus_client, make_codec, running_handler
from tests.support.mongo import drop_database, mongo_config, unique_database
from tests.support.net import free_port
from tests.support.polling import await_until, wait_until
from tests.support.separate import SeparateServices
from tests.support.stack import unique

SLEEP_ECHO = """
import time


def sleep_echo(spec):
    time.sleep(spec["seconds"])
    return spec["tag"]
"""
HEARTBEAT_S = 0.3
STALE_S = 2.0
NAMES = ("registry-a", "registry-b")


@dataclass
class Registries:
    services: SeparateServices
    urls: dict[str, str]
    token: str
    mongodb_url: str
    database: str
    servable: str = ""

    def api(self, name: str) -> str:
        return self.urls[name] + "/api/v1"

    def client(self, name: str) -> DLHubClient:
        return DLHubClient(self.urls[name], self.token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def run(self, name: str, body: dict[str, Any], timeout_s: float = 60) -> httpx.Response:
        url = f"{self.api(name)}/servables/{self.servable}/run"
        return httpx.post(url, json=body, headers=self.headers, timeout=timeout_s)


def serving(services: SeparateServices, name: str, url: str) -> bool:
    process = services.processes[name]
    assert process.poll() is None, services.log(name)[-4000:]
    try:
        return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory, mongodb_url: str) -> Iterator[Registries]:
    base = tmp_path_factory.mktemp("registries")
    database = unique_database()
    env = {
        "DLHUB_STORE__BACKEND": "mongodb",
        "DLHUB_STORE__MONGODB_URL": mongodb_url,
        "DLHUB_STORE__MONGODB_DATABASE": database,
        "DLHUB_REGISTRY__MEMO_SHARED": "true",
        "DLHUB_REGISTRY__PEER_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "DLHUB_REGISTRY__PEER_STALE_AFTER_S": str(STALE_S),
        "DLHUB_REGISTRY__ADMIN_USERS": '["alice"]',
        "DLHUB_WORKER__PROCESSES": "4",
    }
    services = SeparateServices(base, env=env)
    ports = {name: free_port() for name in NAMES}
    try:
        for name in ("broker", "builder", "worker"):
            services.start(name)
        for name, port in ports.items():
            services.start(name, {"DLHUB_REGISTRY__PORT": str(port), "DLHUB_REGISTRY__INSTANCE_ID": name})
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name in NAMES:
            wait_until(lambda: serving(services, name, urls[name]), timeout_s=60, message=name)  # noqa: B023
        yield Registries(services, urls, services.token("alice"), mongodb_url, database)
    finally:
        services.stop_all()
        drop_database(mongodb_url, database)


@pytest.fixture(scope="module")
def sleeper(registries: Registries, tmp_path_factory: pytest.TempPathFactory) -> Registries:
    def handlers_up() -> bool:
        health = httpx.get(registries.api("registry-b") + "/health", timeout=5).json()
        counts = health["broker"]["handler_counts"]
        return bool(counts.get("builder") and counts.get("worker"))

    wait_until(handlers_up, timeout_s=60, message="the builder and the worker")
    pkg = tmp_path_factory.mktemp("sleep_pkg")
    (pkg / "sleepfns.py").write_text(SLEEP_ECHO)
    doc = python_function_document(
        name=unique("sleep_echo"),
        module="sleepfns",
        function="sleep_echo",
        files=["sleepfns.py"],
        title="sleeps, then echoes its tag",
        authors=["Doe, Jane"],
    )
    reply = registries.client("registry-a").publish(doc, base_dir=pkg, timeout_s=120)
    assert reply["status"] == "ready", reply
    registries.servable = str(reply["shorthand_name"])
    return registries


def test_a_task_submitted_through_one_registry_is_polled_through_the_other(sleeper: Registries) -> None:
    handle = sleeper.client("registry-a").run_async(sleeper.servable, {"seconds": 0.2, "tag": "a-to-b"})
    survivor = sleeper.client("registry-b")

    def ended() -> dict[str, Any] | None:
        record = survivor.status(handle.task_id)
        return record if record["state"] in ("completed", "failed") else None

    record = wait_until(ended, timeout_s=30, message="the task, polled through registry-b")
    assert record["state"] == "completed" and record["output"] == "a-to-b", record


def test_a_run_memoized_through_one_registry_is_a_hit_through_the_other(sleeper: Registries) -> None:
    inputs = {"seconds": 0, "tag": unique("memo")}
    mongo: MongoClient[dict[str, Any]] = MongoClient(sleeper.mongodb_url)
    memo = mongo[sleeper.database]["memo"]
    try:
        before = memo.count_documents({})  # earlier tests' runs are memoized too
        first = sleeper.run("registry-a", {"inputs": inputs})
        assert first.status_code == 200 and first.json()["cached"] is False, first.text
        # The entry is stored once the answer is out.
        wait_until(lambda: memo.count_documents({}) > before, timeout_s=10, message="the shared memo entry")
    finally:
        mongo.close()
    second = sleeper.run("registry-b", {"inputs": inputs})
    assert second.status_code == 200, second.text
    assert second.json()["cached"] is True and second.json()["output"] == inputs["tag"], second.text


def test_a_registry_taken_over_while_only_stopped_leaves_the_outcomes_to_its_taker(
    sleeper: Registries,
) -> None:
    """Registry A SIGSTOPped past ``peer_stale_after_s`` with runs in flight: B takes them over and they
    complete through B; thawed, A writes none of their outcomes (they stay B's, each as B stored it) and
    beats again (alive in B's ``/health``)."""
    services, a_client = sleeper.services, sleeper.client("registry-a")
    tags = {a_client.run_async(sleeper.servable, {"seconds": 2, "tag": f"s{i}"}).task_id: f"s{i}" for i in
            range(4)}  # fmt: skip
    services.signal("registry-a", signal.SIGSTOP)
    try:
        survivor = sleeper.client("registry-b")

        def every_task_ended() -> dict[str, dict[str, Any]] | None:
            records = {t: survivor.status(t) for t in tags}
            return records if all(r["state"] in ("completed", "failed") for r in records.values()) else None

        records = wait_until(every_task_ended, timeout_s=STALE_S + 30, message="B to end A's tasks")
    finally:
        services.signal("registry-a", signal.SIGCONT)
    assert {t: (r["state"], r["output"]) for t, r in records.items()} == {
        t: ("completed", tag) for t, tag in tags.items()
    }

    def a_alive_again() -> bool:
        health = httpx.get(sleeper.api("registry-b") + "/health", headers=sleeper.headers, timeout=5).json()
        return any(p["instance_id"] == "registry-a" and p["alive"] for p in health["registries"])

    wait_until(a_alive_again, timeout_s=30, message="registry-a to beat again")
    # A's own calls for those tasks end without writing anything: with a result the broker sent it before
    # the takeover (B has stored it by then), or with none (their results go to B now).
    refusals = ("task already ended; outcome kept", "task taken over by another registry; not written")

    def a_gave_up() -> bool:
        lines = [line for line in services.log("registry-a").splitlines() if any(r in line for r in refusals)]
        return all(any(t in line for line in lines) for t in tags)

    wait_until(a_gave_up, timeout_s=30, message="registry-a to give up its calls")
    assert {t: a_client.status(t) for t in tags} == records


def submit(sleeper: Registries, order: Iterator[str], tag: str) -> tuple[str, str]:
    """Submit one asynchronous run like a load balancer: the next registry, the other one when refused."""
    body = {"inputs": {"seconds": 1.5, "tag": tag}, "asynchronous": True}
    first = next(order)
    for name in (first, *[n for n in NAMES if n != first]):
        try:
            response = sleeper.run(name, body, timeout_s=30)
        except httpx.TransportError:  # the registry is gone: not accepted, another one takes the request
            continue
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"]), name
    raise AssertionError("no registry accepted the run")


def sync_run(sleeper: Registries) -> str:
    """A synchronous run through registry-a: how it ends when registry-a is killed meanwhile."""
    try:
        response = sleeper.run("registry-a", {"inputs": {"seconds": 3, "tag": "sync"}}, timeout_s=30)
    except httpx.TransportError as exc:
        return type(exc).__name__
    return f"HTTP {response.status_code}"


def test_a_killed_registrys_tasks_are_taken_over_and_complete(sleeper: Registries) -> None:
    services, count = sleeper.services, 24
    order = itertools.cycle(NAMES)
    accepted: dict[str, tuple[str, str]] = {}
    killed_at = 0.0
    with ThreadPoolExecutor(4) as pool:
        sync = pool.submit(sync_run, sleeper)
        wait_until(
            lambda: broker_inflight(sleeper) >= 1, timeout_s=10, message="the synchronous run to start"
        )
        for i in range(count):
            if i == count // 2:
                services.kill("registry-a")  # SIGKILL: no drain, no goodbye
                killed_at = time.monotonic()
            task_id, via = submit(sleeper, order, f"t{i}")
            accepted[task_id] = (f"t{i}", via)
        sync_outcome = sync.result(timeout=60)
    assert sync_outcome in ("RemoteProtocolError", "ReadError"), sync_outcome
    via_a = [t for t, (_, via) in accepted.items() if via == "registry-a"]
    assert len(via_a) >= count // 4, accepted  # registry-a had tasks of its own in flight when killed

    survivor = sleeper.client("registry-b")

    def every_task_ended() -> dict[str, dict[str, Any]] | None:
        records = {t: survivor.status(t) for t in accepted}
        return records if all(r["state"] in ("completed", "failed") for r in records.values()) else None

    records = wait_until(every_task_ended, timeout_s=60, message="every accepted task to end")
    ended_s = time.monotonic() - killed_at
    wrong = {t: r for t, r in records.items() if r["state"] != "completed" or r["output"] != accepted[t][0]}
    assert not wrong, wrong
    assert "tasks of a gone registry taken over" in services.log("registry-b")
    assert ended_s < STALE_S + 30, ended_s
    # No task in the store stays open (one accepted by registry-a whose answer was lost with it included).
    assert asyncio.run(open_tasks(sleeper)) == []

    health = httpx.get(sleeper.api("registry-b") + "/health", headers=sleeper.headers, timeout=5).json()
    peers = {p["instance_id"]: p for p in health["registries"]}
    assert peers["registry-a"]["alive"] is False and peers["registry-b"]["alive"] is True, peers
    assert peers["registry-b"]["answering"] is True and peers["registry-a"]["answering"] is False


def broker_inflight(sleeper: Registries) -> int:
    health = httpx.get(sleeper.api("registry-b") + "/health", timeout=5).json()
    return int(health["broker"]["inflight"])


async def open_tasks(sleeper: Registries) -> list[str]:
    store = MongoMetadataStore(mongo_config(sleeper.mongodb_url, sleeper.database))
    await store.open()
    try:
        return [t.task_id for t in await store.list_open_tasks()]
    finally:
        await store.close()


async def test_what_the_broker_no_longer_holds_fails_registry_lost_and_live_peers_keep_theirs(
    bus: BusConfig, tmp_path: Path
) -> None:
    """At the first pass of a peer (a real broker, a SQLite store), a gone registry's run the broker
    never knew (or lost) fails ``registry_lost``, and so do its dataset job (rows done kept) and its build
    whose version is no longer building; its build still building is resumed by the peer (now its owner);
    a live peer's task and the gone one's ended task are left alone; a second pass takes nothing."""
    store = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await store.open()
    now = now_ms()
    exp = now + 60_000
    await store.beat_registry("registry-gone", url="http://127.0.0.1:1", now_ms=now - 60_000)
    await store.beat_registry("registry-live", url="http://127.0.0.1:2", now_ms=now)
    records = [
        TaskRecord(task_id="lost-run", kind="run", state="running", servable="alice/m@1", created_at_ms=now,
                   updated_at_ms=now, expires_at_ms=exp, owner="registry-gone", deadline_ms=exp),
        TaskRecord(task_id="lost-build", kind="build", state="running", servable="alice/m@1",
                   created_at_ms=now, updated_at_ms=now, expires_at_ms=exp, owner="registry-gone",
                   deadline_ms=exp),
        TaskRecord(task_id="lost-job", kind="job", state="running", servable="alice/m@1", created_at_ms=now,
                   updated_at_ms=now, expires_at_ms=exp, owner="registry-gone", deadline_ms=exp,
                   progress={"done": 5, "total": 10, "failed": 0}),
        TaskRecord(task_id="resumable-build", kind="build", state="pending", servable="alice/r@1",
                   created_at_ms=now, updated_at_ms=now, expires_at_ms=exp, owner="registry-gone",
                   deadline_ms=exp),
        TaskRecord(task_id="ended", kind="run", state="completed", servable="alice/m@1", created_at_ms=now,
                   updated_at_ms=now, expires_at_ms=exp, owner="registry-gone", output_json=b"1"),
        TaskRecord(task_id="live", kind="run", state="running", servable="alice/m@1", created_at_ms=now,
                   updated_at_ms=now, expires_at_ms=exp, owner="registry-live", deadline_ms=exp),
    ]  # fmt: skip
    for record in records:
        await store.save_task(record)
    tasks = TaskTable(store, make_codec(), ttl_s=60, owner="registry-b")
    builds_lost: list[TaskRecord] = []
    builds_taken: list[str] = []

    async def on_build_taken(task: TaskRecord) -> bool:
        builds_taken.append(task.task_id)
        return task.task_id == "resumable-build"  # a version still building for it

    async def on_build_lost(task: TaskRecord) -> None:
        builds_lost.append(task)

    background = BackgroundTasks()
    client = BusClient(bus=bus, codec=make_codec(), client_id="registry-b")
    takeover = TaskTakeover(
        tasks=tasks,
        bus=client,
        background=background,
        config=RegistryConfig(peer_heartbeat_interval_s=HEARTBEAT_S, peer_stale_after_s=STALE_S),
        url="http://127.0.0.1:3",
        on_build_taken=on_build_taken,
        on_build_lost=on_build_lost,
    )
    try:
        assert await takeover.take_over() == 4
        for task_id in ("lost-run", "lost-build", "lost-job"):
            ended = await tasks.get(task_id)
            assert ended is not None and ended.state == "failed" and ended.owner == "registry-b", ended
            assert ended.error is not None and ended.error["type"] == "registry_lost", ended
            assert "registry-gone" in ended.error["message"]
        assert [t.task_id for t in builds_lost] == ["lost-build"]
        assert sorted(builds_taken) == ["lost-build", "resumable-build"]  # never a job
        job = await tasks.get("lost-job")
        assert job is not None and job.error is not None and "5 rows done are kept" in job.error["message"]
        resumed = await tasks.get("resumable-build")  # its build started again here: open, this registry's
        assert resumed == replace(records[3], owner="registry-b"), resumed
        assert await tasks.get("ended") == records[4] and await tasks.get("live") == records[5]
        assert await takeover.take_over() == 0
    finally:
        await background.close()
        await client.close()
        await store.close()


async def test_runs_claimed_while_the_broker_is_away_are_adopted_at_the_next_pass(
    broker: BrokerProcess, bus: BusConfig, tmp_path: Path
) -> None:
    """The broker down at a takeover: the gone registry's run is claimed (now this registry's, still open)
    but not adopted; the pass fails ``broker_unavailable``; at the next pass, the broker back, the run is
    asked about and, unknown to the new broker, fails ``registry_lost``."""
    store = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await store.open()
    now = now_ms()
    await store.beat_registry("registry-gone", url="http://127.0.0.1:1", now_ms=now - 60_000)
    await store.save_task(
        TaskRecord(task_id="orphan-run", kind="run", state="running", servable="alice/m@1", created_at_ms=now,
                   updated_at_ms=now, expires_at_ms=now + 60_000, owner="registry-gone",
                   deadline_ms=now + 60_000)
    )  # fmt: skip
    tasks = TaskTable(store, make_codec(), ttl_s=60, owner="registry-b")
    client = BusClient(bus=bus, codec=make_codec(), client_id="registry-b")
    background = BackgroundTasks()
    takeover = TaskTakeover(
        tasks=tasks, bus=client, background=background, config=RegistryConfig(), url="http://127.0.0.1:3"
    )
    try:
        broker.stop()
        with pytest.raises(DLHubError) as caught:
            await takeover.take_over()
        assert caught.value.code == "broker_unavailable"
        claimed = await tasks.get("orphan-run")
        assert claimed is not None and claimed.state == "running" and claimed.owner == "registry-b"
        broker.start()
        assert await takeover.take_over() == 0  # nothing left to claim; the claimed run is asked about
        ended = await tasks.get("orphan-run")
        assert ended is not None and ended.state == "failed", ended
        assert ended.error is not None and ended.error["type"] == "registry_lost"
    finally:
        await background.close()
        await client.close()
        await store.close()


async def test_an_adopting_client_gets_a_gone_clients_running_and_held_results(bus: BusConfig) -> None:
    """The bus side of a takeover (a real broker): ``TaskQuery(adopt=True)`` re-addresses the asked tasks of a
    client that is gone, a result held for it (re-sent at once) and a task still running (its result comes
    later); what was not asked stays the gone client's, for its next process."""
    gone, codec = f"registry-{uuid.uuid4().hex[:8]}", make_codec()
    finished, running = Gate(), Gate()
    async with (
        running_handler(bus, ["finished/topic"], finished, capacity=4),
        running_handler(bus, ["running/topic"], running, capacity=4),
    ):
        first = BusClient(bus=bus, codec=make_codec(), client_id=gone)
        await first.start()
        submitted = [("finished/topic", "held"), ("finished/topic", "kept"), ("running/topic", "running")]
        calls = [
            asyncio.create_task(first.call(route(t), codec.encode_value(v), timeout_s=30, durable=True))
            for t, v in submitted
        ]
        await await_until(
            lambda: _true(len(finished.seen) == 2 and len(running.seen) == 1), timeout_s=5, message="dispatch"
        )
        held_id, kept_id = finished.seen
        running_id = running.seen[0]
        await first.close()  # the registry is gone with three tasks in flight
        await asyncio.gather(*calls)
        finished.release.set()
        async with bus_client(bus) as observer:
            await await_until(
                lambda: stats_match(observer, inflight=1), timeout_s=5, message="the two to finish"
            )

        taker, orphans = await _listening_client(bus, f"taker-{uuid.uuid4().hex[:8]}")
        try:
            status = await taker.query_tasks([held_id, running_id, "never-submitted"], adopt=True)
            assert sorted(status.known) == sorted([held_id, running_id])
            assert [r.task_id for r in orphans] == [held_id]  # re-sent before the answer
            running.release.set()
            await await_until(
                lambda: _true(len(orphans) == 2), timeout_s=5, message="the running one's result"
            )
            assert orphans[1].task_id == running_id and codec.decode_value(orphans[1].output) == "running"
            taker.ack(held_id)
            taker.ack(running_id)
        finally:
            await taker.close()

        back, back_orphans = await _listening_client(bus, gone)
        try:  # the gone client's next process still gets what was not taken over, and nothing else
            status = await back.query_tasks([held_id, kept_id, running_id])
            assert [r.task_id for r in back_orphans] == [kept_id] and kept_id in status.known
        finally:
            await back.close()


async def _listening_client(bus: BusConfig, identity: str) -> tuple[BusClient, list[Result]]:
    client = BusClient(bus=bus, codec=make_codec(), client_id=identity)
    orphans: list[Result] = []
    client.listen(on_orphan_result=orphans.append)
    await client.start()
    return client, orphans


def _true(value: bool) -> bool:
    return value
