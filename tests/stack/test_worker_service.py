"""The worker service: its task handler in-process, then broker + worker as real processes over the bus."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.config import BusConfig, load_settings
from dlhub.common.ids import new_id, servable_topic
from dlhub.common.messages import Dispatch, Result, RouteStep
from dlhub.worker.service import WorkerService
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.support.worker_servables import function_method, write_function_servable

CODEC = Codec()
HEARTBEAT_INTERVAL_S = 0.2
METHODS = {
    "run": function_method("add"),
    "noop": function_method("noop"),
    "fail": function_method("fail"),
    "whoami": function_method("whoami"),
    "slow": function_method("sleep_with_pidfile"),
}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the handler, without a broker ------------------------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[WorkerService]:
    settings = load_settings(data_dir=tmp_path / "data", worker={"servable_dir": tmp_path / "servables"})
    worker = WorkerService(settings)
    await worker.pool.start()
    try:
        yield worker
    finally:
        await worker.pool.close()


def dispatch(
    topic: str,
    inputs: Any = None,
    *,
    method: str = "run",
    step: int = 0,
    deadline_unix_s: float = 0.0,
    **params: Any,
) -> Dispatch:
    return Dispatch(
        task_id=new_id(),
        step=step,
        topic=topic,
        method=method,
        inputs=CODEC.encode_value(inputs),
        parameters=CODEC.encode_value(params),
        deadline_unix_s=deadline_unix_s,
    )


async def test_handle_returns_output_and_timings(service: WorkerService) -> None:
    write_function_servable(service.servable_root, "adder", methods=METHODS)
    task = dispatch(servable_topic("alice", "adder", 1), 41, step=2)
    result = await service.handle(task)
    assert result.ok and result.error is None
    assert CODEC.decode_value(result.output) == 42
    assert (result.task_id, result.step) == (task.task_id, 2)
    assert 0 < result.timings.inference_ms <= result.timings.invocation_ms
    params = await service.handle(dispatch(servable_topic("alice", "adder", 1), 1, y=9))
    assert CODEC.decode_value(params.output) == 10


async def test_handle_reports_typed_failures(service: WorkerService) -> None:
    write_function_servable(service.servable_root, "adder", methods=METHODS)
    topic = servable_topic("alice", "adder", 1)

    missing = await service.handle(dispatch(servable_topic("alice", "adder", 7), 1))
    assert not missing.ok and missing.error is not None
    assert missing.error.code == "not_found" and "alice/adder@7" in missing.error.message
    assert missing.timings.invocation_ms > 0

    malformed = await service.handle(dispatch("servable/no-version", 1))
    assert malformed.error is not None and malformed.error.code == "validation_error"

    late = await service.handle(dispatch(topic, 1, deadline_unix_s=time.time() - 1))
    assert late.error is not None and late.error.code == "task_timeout"

    raised = await service.handle(dispatch(topic, 1, method="fail", step=1))
    assert raised.error is not None
    assert (raised.error.code, raised.error.exception_type) == ("servable_error", "ValueError")
    assert (raised.error.step, raised.error.topic) == (1, topic)
    assert "Traceback" in raised.error.traceback


async def test_handle_times_out_from_the_dispatch_deadline(service: WorkerService, tmp_path: Path) -> None:
    write_function_servable(service.servable_root, "slow", methods=METHODS)
    spec = {"pidfile": str(tmp_path / "pid"), "seconds": 60}
    task = dispatch(
        servable_topic("alice", "slow", 1), spec, method="slow", deadline_unix_s=time.time() + 1.0
    )
    result = await service.handle(task)
    assert result.error is not None and result.error.code == "task_timeout"
    child = int((tmp_path / "pid").read_text())
    await await_until(
        lambda: not pid_alive(child), timeout_s=10, message="the timed-out executor process to die"
    )
    again = await service.handle(dispatch(servable_topic("alice", "slow", 1), 1))
    assert again.ok and CODEC.decode_value(again.output) == 2


# -- broker and worker as real processes ------------------------------------------------------------------


class Stack:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.servable_dir = base / "servables"
        self.broker_url = f"tcp://127.0.0.1:{free_port()}"
        self.env = dict(os.environ)
        self.env.update(
            {
                "DLHUB_DATA_DIR": str(base / "data"),
                "DLHUB_WORKER__SERVABLE_DIR": str(self.servable_dir),
                "DLHUB_BROKER__BIND_URL": self.broker_url,
                "DLHUB_BUS__BROKER_URL": self.broker_url,
                "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
                "DLHUB_WORKER__PROCESSES": "1",
            }
        )
        self.env.pop("DLHUB_CONFIG", None)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self, name: str, timeout_s: float = 20.0) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{name} ignored SIGTERM:\n{self.log(name)}") from None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    processes = Stack(tmp_path)
    write_function_servable(processes.servable_dir, "fn", methods=METHODS)
    processes.start("broker", "dlhub.broker")
    processes.start("worker", "dlhub.worker")
    try:
        yield processes
    finally:
        for name in ("worker", "broker"):
            if processes.processes[name].poll() is None:
                processes.stop(name)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BusClient]:
    bus = BusClient(
        bus=BusConfig(broker_url=stack.broker_url, heartbeat_interval_s=HEARTBEAT_INTERVAL_S), codec=CODEC
    )
    await bus.start()
    try:

        async def worker_registered() -> bool:
            try:
                stats = await bus.stats(timeout_s=1.0)
            except Exception:
                return False
            return any(h.kind == "worker" for h in stats.handlers)

        deadline = time.monotonic() + 60
        while not await worker_registered():
            for name, process in stack.processes.items():
                assert process.poll() is None, f"{name} exited early:\n{stack.log(name)}"
            assert time.monotonic() < deadline, f"the worker never registered:\n{stack.log('worker')}"
            await asyncio.sleep(0.05)
        yield bus
    finally:
        await bus.close()


async def run(
    client: BusClient, inputs: Any, *, method: str = "run", timeout_s: float = 30, **params: Any
) -> Result:
    step = RouteStep(
        topic=servable_topic("alice", "fn", 1), method=method, parameters=CODEC.encode_value(params)
    )
    return await client.call([step], CODEC.encode_value(inputs), timeout_s=timeout_s)


async def test_worker_process_serves_tasks_over_the_bus(stack: Stack, client: BusClient) -> None:
    result = await run(client, 1, y=5)
    assert result.ok, result.error
    assert CODEC.decode_value(result.output) == 6
    assert 0 < result.timings.inference_ms <= result.timings.invocation_ms

    failed = await run(client, 3, method="fail")
    assert failed.error is not None
    assert (failed.error.code, failed.error.exception_type) == ("servable_error", "ValueError")

    missing = await client.call(
        [RouteStep(topic=servable_topic("alice", "ghost", 1))], CODEC.encode_value(1), timeout_s=10
    )
    assert missing.error is not None and missing.error.code == "not_found"

    topic = servable_topic("alice", "fn", 1)
    pipeline = await client.call(
        [RouteStep(topic=topic), RouteStep(topic=topic)], CODEC.encode_value(1), timeout_s=10
    )
    assert pipeline.ok and CODEC.decode_value(pipeline.output) == 3

    latencies_ms = []
    for _ in range(200):
        started = time.perf_counter()
        reply = await run(client, None, method="noop")
        latencies_ms.append((time.perf_counter() - started) * 1000.0)
        assert reply.ok
    p50 = statistics.median(latencies_ms)
    print(f"client->broker->worker->executor round trip: p50 {p50:.3f} ms, max {max(latencies_ms):.3f} ms")
    assert p50 < 20, f"p50 round trip {p50:.3f} ms"


async def test_killing_the_executor_mid_task_fails_it_with_worker_lost(
    stack: Stack, client: BusClient, tmp_path: Path
) -> None:
    pidfile = tmp_path / "executor.pid"
    slow = asyncio.create_task(run(client, {"pidfile": str(pidfile), "seconds": 60}, method="slow"))
    child = int(
        await await_until(
            lambda: pidfile.is_file() and pidfile.read_text(), timeout_s=30, message="the task to start"
        )
    )
    os.kill(child, signal.SIGKILL)
    result = await asyncio.wait_for(slow, 30)
    assert not result.ok and result.error is not None
    assert result.error.code == "worker_lost"
    assert "SIGKILL" in result.error.message
    assert stack.processes["worker"].poll() is None

    after = await run(client, None, method="whoami")
    assert after.ok, after.error
    new_child = CODEC.decode_value(after.output)["pid"]
    assert new_child != child

    assert stack.stop("worker") == 0
    await await_until(
        lambda: not pid_alive(new_child), timeout_s=10, message="the executor process to stop with the worker"
    )
    assert "worker stopped" in stack.log("worker")
