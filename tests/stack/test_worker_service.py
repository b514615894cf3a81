"""The worker service: its task handler in-process, then broker + worker as real processes over the bus."""

from __future__ import annotations

import contextlib
import os
import statistics
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
from tests.support.polling import await_until
from tests.support.services import ServiceProcesses
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


class Stack(ServiceProcesses):
    """A broker and a worker process serving the servables in ``base/servables``."""

    def __init__(self, base: Path) -> None:
        self.servable_dir = base / "servables"
        super().__init__(
            base,
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            env={"DLHUB_WORKER__SERVABLE_DIR": str(self.servable_dir), "DLHUB_WORKER__PROCESSES": "1"},
        )
        self.env.pop("DLHUB_CONFIG", None)


@contextlib.contextmanager
def running_worker(base: Path) -> Iterator[Stack]:
    """A broker and a worker process serving ``fn`` (also for tests/fault/test_worker_service_faults.py)."""
    processes = Stack(base)
    write_function_servable(processes.servable_dir, "fn", methods=METHODS)
    processes.start("broker")
    processes.start("worker")
    try:
        yield processes
    finally:
        for name in ("worker", "broker"):
            assert processes.stop(name) is not None, f"{name} ignored SIGTERM:\n{processes.log(name)}"


@contextlib.asynccontextmanager
async def worker_client(stack: Stack) -> AsyncIterator[BusClient]:
    """A bus client, once the worker has registered with the broker."""
    bus = BusClient(
        bus=BusConfig(broker_url=stack.broker_url, heartbeat_interval_s=HEARTBEAT_INTERVAL_S), codec=CODEC
    )
    await bus.start()
    try:
        await stack.wait_registered(bus, "worker", timeout_s=60)
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_worker(tmp_path) as processes:
        yield processes


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BusClient]:
    async with worker_client(stack) as bus:
        yield bus


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
