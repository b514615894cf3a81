"""Every accepted task ends, across restarts (docs/reliability.md, "Task outcomes across restarts").

Bus level (a real broker process, real BusClient and HandlerService peers): a durable result whose client
died is kept and re-sent to the client's next process, and forgotten once acknowledged.

Stack level (`dlhub up` with small deadlines, as real processes over real sockets):

- registry SIGKILL with 20 asynchronous runs in flight, some finishing while it is down: after `dlhub up`
  restarts it every task is completed with its own output; the published version is intact.
- broker SIGKILL with asynchronous and synchronous runs in flight: synchronous callers get a typed 503 within
  the liveness timeout (never a hang), every asynchronous task ends failed with a typed code and stays so
  (one outcome each), workers re-register and new runs succeed.
- a second registry (another instance id on the same store and broker) accepts a run and is SIGKILLed for
  good: the first registry's reaper fails the task ``deadline_exceeded`` within timeout + grace + interval.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig, DLHubSettings
from dlhub.common.ids import new_id
from dlhub.common.messages import Result
from dlhub.registry.metadata import normalise_publication
from dlhub.registry.store import TaskRecord
from dlhub.registry.store.factory import make_store
from tests.stack.test_broker import Gate, codec, route
from tests.support.broker import BrokerProcess, bus_client, make_codec, running_handler
from tests.support.net import free_port
from tests.support.polling import await_until, wait_until
from tests.support.stack import HEARTBEAT_INTERVAL_S, StackInfo, running_stack, unique

# -- the bus: the broker keeps durable results for a client that comes back ----------------------------------


async def test_a_durable_result_is_kept_for_the_clients_next_process_until_acknowledged(
    broker: BrokerProcess, bus: BusConfig
) -> None:
    identity = f"registry-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    async with running_handler(bus, ["durable/topic"], gate, capacity=4):
        first = BusClient(bus=bus, codec=make_codec(), client_id=identity)
        await first.start()
        durable = asyncio.create_task(
            first.call(route("durable/topic"), codec.encode_value("kept"), timeout_s=30, durable=True)
        )
        plain = asyncio.create_task(
            first.call(route("durable/topic"), codec.encode_value("lost"), timeout_s=30)
        )
        await await_until(lambda: _true(len(gate.seen) == 2), timeout_s=5, message="both dispatched")
        durable_id, plain_id = gate.seen  # dispatched in the order submitted
        await first.close()  # the first process dies with both tasks running
        assert not (await durable).ok and not (await plain).ok
        gate.release.set()
        async with bus_client(bus) as observer:  # the broker has finished both (and answered the dead client)

            async def finished() -> bool:
                stats = await observer.stats()
                return stats.inflight == 0 and stats.queued == 0

            await await_until(finished, timeout_s=5, message="the broker to finish both tasks")

        second = BusClient(bus=bus, codec=make_codec(), client_id=identity)
        orphans: list[Result] = []
        second.listen(on_orphan_result=orphans.append)
        await second.start()
        try:
            status = await second.query_tasks([durable_id, plain_id, "never-submitted"])
            # The held result arrives before the answer, which names only the task it holds.
            assert [r.task_id for r in orphans] == [durable_id]
            assert orphans[0].ok and codec.decode_value(orphans[0].output) == "kept"
            assert status.known == [durable_id] and status.broker_id

            second.ack(durable_id)

            async def forgotten() -> bool:
                return (await second.query_tasks([durable_id])).known == []

            await await_until(forgotten, timeout_s=5, message="the acknowledged result to be dropped")
            # A query that left before the Ack may have had it re-sent once more (at least once); after the
            # acknowledgement it never comes again.
            seen = len(orphans)
            assert (await second.query_tasks([durable_id])).known == [] and len(orphans) == seen
            assert {r.task_id for r in orphans} == {durable_id}
        finally:
            await second.close()


def _true(value: bool) -> bool:
    return value


# -- the stack -----------------------------------------------------------------------------------------------

SLEEP_ECHO = """
import time


def sleep_echo(spec):
    time.sleep(spec["seconds"])
    return spec["tag"]
"""
DEADLINE_GRACE_S = 3.0
REAP_INTERVAL_S = 0.5
LIVENESS_S = HEARTBEAT_INTERVAL_S * 3


@pytest.fixture(scope="module")
def durable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    base = tmp_path_factory.mktemp("durable")
    extra_env = {
        "DLHUB_REGISTRY__TASK_DEADLINE_GRACE_S": str(DEADLINE_GRACE_S),
        "DLHUB_REGISTRY__TASK_REAP_INTERVAL_S": str(REAP_INTERVAL_S),
        "DLHUB_REGISTRY__TASK_RECONCILE_RETRY_S": "0.5",
        "DLHUB_WORKER__PROCESSES": "4",
    }
    with running_stack(base, workers=2, extra_env=extra_env, check_exit=False) as info:
        yield info


@pytest.fixture(scope="module")
def client(durable_stack: StackInfo) -> DLHubClient:
    return DLHubClient(durable_stack.url, durable_stack.tokens["alice"])


@pytest.fixture(scope="module")
def sleeper(client: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> str:
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
    reply = client.publish(doc, base_dir=pkg)
    assert reply["status"] == "ready"
    return str(reply["shorthand_name"])


def service_pid(stack: StackInfo, module: str) -> int:
    """The pid of the `dlhub up` child running ``python -m <module>`` (other stacks run on this host too)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == stack.process.pid and module.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no {module} process under dlhub up ({stack.process.pid})")


def broker_holds(stack: StackInfo) -> int:
    broker = stack.health().get("broker", {})
    return int(broker.get("queued", 0)) + int(broker.get("inflight", 0))


def healthy(stack: StackInfo) -> bool:
    try:
        return httpx.get(stack.api + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def terminal(client: DLHubClient, task_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    try:
        records = {t: client.status(t) for t in task_ids}
    except httpx.HTTPError:
        return None
    return records if all(r["state"] in ("completed", "failed") for r in records.values()) else None


def test_registry_sigkill_with_tasks_in_flight_every_task_ends_with_its_result(
    durable_stack: StackInfo, client: DLHubClient, sleeper: str
) -> None:
    seconds = [0.1] * 6 + [1.5] * 7 + [5.0] * 7  # done before, while the registry is down, after
    handles = {client.run_async(sleeper, {"seconds": s, "tag": f"t{i}"}).task_id: f"t{i}" for i, s in
               enumerate(seconds)}  # fmt: skip
    ids = list(handles)

    def all_with_broker() -> bool:  # every task reached the broker (or finished): none only in memory
        done = sum(1 for t in ids if client.status(t)["state"] == "completed")
        return done + broker_holds(durable_stack) >= len(ids)

    wait_until(all_with_broker, timeout_s=20, message="every task handed to the broker")
    registry_log = durable_stack.data_dir / "logs" / "registry.log"
    recovered_before = registry_log.read_text().count("result recovered")
    os.kill(service_pid(durable_stack, "dlhub.registry"), signal.SIGKILL)
    killed_at = time.monotonic()

    wait_until(lambda: healthy(durable_stack), timeout_s=60, message="dlhub up to restart the registry")
    records = wait_until(lambda: terminal(client, ids), timeout_s=30, message="every task to end")
    ended_s = time.monotonic() - killed_at

    wrong = {t: r for t, r in records.items() if r["state"] != "completed" or r["output"] != handles[t]}
    assert not wrong, wrong
    # The tasks that finished after the kill went through recovery (adopted from the broker's mailbox).
    assert registry_log.read_text().count("result recovered") > recovered_before
    assert ended_s < 30
    # Published versions are intact and run.
    described = client.describe(sleeper)
    assert described["status"] == "ready" and described["version"] == 1
    assert client.run(sleeper, {"seconds": 0, "tag": "after"}) == "after"


def test_broker_sigkill_with_tasks_in_flight_every_task_ends_typed_once(
    durable_stack: StackInfo, client: DLHubClient, sleeper: str
) -> None:
    async_ids = [client.run_async(sleeper, {"seconds": 4, "tag": f"a{i}"}).task_id for i in range(6)]
    headers = {"Authorization": f"Bearer {durable_stack.tokens['alice']}"}
    url = f"{durable_stack.api}/servables/{sleeper}/run"
    sync_timeout_s = 20.0

    def sync_run(i: int) -> tuple[int, dict[str, Any], float]:
        body = {"inputs": {"seconds": 4, "tag": f"s{i}"}, "timeout_s": sync_timeout_s}
        response = httpx.post(url, json=body, headers=headers, timeout=sync_timeout_s + 30)
        return response.status_code, response.json(), time.monotonic()

    worker_logs = list((durable_stack.data_dir / "logs").glob("worker-*.log"))
    with ThreadPoolExecutor(4) as pool:
        syncs = [pool.submit(sync_run, i) for i in range(4)]
        wait_until(
            lambda: broker_holds(durable_stack) >= 10, timeout_s=20, message="every task handed to the broker"
        )
        offsets = {path: path.stat().st_size for path in worker_logs}
        os.kill(service_pid(durable_stack, "dlhub.broker"), signal.SIGKILL)
        killed_at = time.monotonic()
        answers = [f.result(timeout=sync_timeout_s + 30) for f in syncs]

    for status, body, answered_at in answers:
        # A typed 5xx soon after the broker died, not at the call's own timeout (20 s): the registry's bus
        # client notices the silent broker within the liveness timeout.
        assert status == 503 and body["error"]["type"] == "broker_unavailable", (status, body)
        assert answered_at - killed_at < LIVENESS_S + 3, answered_at - killed_at

    records = wait_until(lambda: terminal(client, async_ids), timeout_s=20, message="every task to end")
    for record in records.values():
        assert record["state"] == "failed", record
        assert record["error"]["type"] in {"broker_unavailable", "broker_restarted"}, record

    # Workers re-register with the restarted broker and new work runs.
    wait_until(lambda: healthy(durable_stack) and durable_stack.worker_count() >= 2, timeout_s=30,
               message="the workers to re-register")  # fmt: skip
    assert client.run(sleeper, {"seconds": 0, "tag": "after"}) == "after"
    assert client.run_async(sleeper, {"seconds": 0, "tag": "later"}).wait(timeout_s=30)["output"] == "later"

    # One outcome each: the tasks that were running (8 executor slots) are abandoned by the workers when their
    # broker session ends (cancelled: their results would be dropped); the stored outcomes do not change.
    def running_tasks_cancelled() -> bool:
        logs = [path.read_bytes()[offset:].decode(errors="replace") for path, offset in offsets.items()]
        return sum("cancelling the tasks of the ended broker session" in text for text in logs) == 2

    wait_until(running_tasks_cancelled, timeout_s=20, message="the workers to drop the lost session's tasks")
    assert {t: client.status(t) for t in async_ids} == records


def test_tasks_of_a_registry_that_never_comes_back_end_with_deadline_exceeded(
    durable_stack: StackInfo, client: DLHubClient, sleeper: str, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(durable_stack.env)
    env.update(
        {
            "DLHUB_DATA_DIR": str(durable_stack.data_dir),
            "DLHUB_BUS__BROKER_URL": durable_stack.broker_url,
            "DLHUB_REGISTRY__HOST": "127.0.0.1",
            "DLHUB_REGISTRY__PORT": str(port),
            "DLHUB_REGISTRY__INSTANCE_ID": f"doomed-{uuid.uuid4().hex[:8]}",
        }
    )
    with (tmp_path / "doomed.log").open("wb") as log:
        doomed = subprocess.Popen([sys.executable, "-m", "dlhub.registry"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        replica = DLHubClient(f"http://127.0.0.1:{port}", durable_stack.tokens["alice"])

        def up() -> bool:
            assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=30, message="the second registry to serve")
        timeout_s = 2.0
        task_id = replica.run_async(sleeper, {"seconds": 30, "tag": "doomed"}, timeout_s=timeout_s).task_id
        wait_until(lambda: client.status(task_id)["state"] == "running", timeout_s=10, message="task running")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        killed_at = time.monotonic()

        record = wait_until(
            lambda: (r := client.status(task_id))["state"] == "failed" and r,
            timeout_s=timeout_s + DEADLINE_GRACE_S + REAP_INTERVAL_S + 10,
            message="the reaper to end the task",
        )
        assert record["error"]["type"] == "deadline_exceeded", record
        assert time.monotonic() - killed_at <= timeout_s + DEADLINE_GRACE_S + REAP_INTERVAL_S + 5
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(10)


def test_a_build_the_reaper_ends_leaves_building_as_failed_with_the_same_reason(
    durable_stack: StackInfo, client: DLHubClient
) -> None:
    """What a registry replica SIGKILLed mid-build leaves behind (nobody resumes it: resuming happens when a
    registry starts): a version ``building`` and its build task, open, of an owner that never comes back.
    The live registry's reaper fails the task ``deadline_exceeded`` and the version leaves ``building``:
    ``failed`` with the same reason, its build record too."""
    name = unique("orphan_build")
    task_id = asyncio.run(_leave_an_orphan_build(durable_stack.data_dir, name))

    ended = wait_until(
        lambda: (r := client.status(task_id))["state"] == "failed" and r,
        timeout_s=REAP_INTERVAL_S + 10,
        message="the reaper to end the build task",
    )
    assert ended["error"]["type"] == "deadline_exceeded", ended
    described = wait_until(
        lambda: (d := client.describe(f"alice/{name}"))["status"] != "building" and d,
        timeout_s=5,
        message="the version to leave building",
    )
    assert described["status"] == "failed" and described["build_state"] == "failed", described
    assert described["status_reason"] == ended["error"]["message"]
    build = httpx.get(f"{durable_stack.api}/servables/alice/{name}/versions/1/build", timeout=10).json()
    assert build["state"] == "failed" and build["error"] == ended["error"]["message"], build


async def _leave_an_orphan_build(data_dir: Path, name: str) -> str:
    """Store what a registry writes when it accepts a publish (a version ``building``, its open build task),
    as a replica with another instance id that then died would; return the task id."""
    doc = python_function_document(
        name=name, module="m", function="f", files=["m.py"], title="never built", authors=["Doe, Jane"]
    )
    task_id = new_id()
    now = int(time.time() * 1000)
    store = make_store(DLHubSettings(data_dir=data_dir))
    await store.open()
    try:
        doc = normalise_publication(doc, owner="alice", document_id=new_id(), published_at_ms=now)
        record = await store.create_version(
            owner="alice", name=name, metadata=doc, published_at_ms=now, build_task_id=task_id
        )
        task = TaskRecord(
            task_id=task_id, kind="build", state="running", servable=record.label, created_at_ms=now,
            updated_at_ms=now, expires_at_ms=now + 3_600_000, owner="registry-gone", deadline_ms=now + 500,
        )  # fmt: skip
        await store.save_task(task)
    finally:
        await store.close()
    return task_id
