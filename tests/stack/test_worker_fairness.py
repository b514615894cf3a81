"""Isolation and fairness between servables on one worker: broker and worker as real processes.

A slow, stuck or crashing servable must not delay another servable's requests, two busy servables both make
progress, and every wait before the model starts is reported in ``timings.queue_ms``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.ids import servable_topic
from dlhub.common.messages import Result, RouteStep
from tests.stack.test_worker_service import Stack, worker_client
from tests.support.polling import await_until
from tests.support.worker_servables import function_method, write_function_servable

CODEC = Codec()
QUICK_P50_BOUND_MS = 200.0
QUICK_MAX_BOUND_MS = 1000.0
SERVABLES = {
    "quick": {"run": function_method("add")},
    "slow": {"run": function_method("sleep_with_pidfile"), "sleep": function_method("sleep")},
    "other": {"sleep": function_method("sleep")},
    "crash": {"run": function_method("sigkill")},
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    processes = Stack(tmp_path)
    for name, methods in SERVABLES.items():
        write_function_servable(processes.servable_dir, name, methods=methods)
    processes.start("broker")
    processes.start("worker")
    try:
        yield processes
    finally:
        for name in ("worker", "broker"):
            assert processes.stop(name) is not None, f"{name} ignored SIGTERM:\n{processes.log(name)}"


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BusClient]:
    async with worker_client(stack) as bus:
        yield bus


async def call(
    client: BusClient, name: str, inputs: Any, *, method: str = "run", timeout_s: float = 60
) -> Result:
    step = RouteStep(topic=servable_topic("alice", name, 1), method=method)
    return await client.call([step], CODEC.encode_value(inputs), timeout_s=timeout_s)


async def quick_latencies_ms(client: BusClient, count: int) -> list[float]:
    """Sequential calls of the trivial servable: each one's round trip, checked."""
    latencies = []
    for x in range(count):
        started = time.perf_counter()
        result = await call(client, "quick", x)
        latencies.append((time.perf_counter() - started) * 1000.0)
        assert result.ok, result.error
        assert CODEC.decode_value(result.output) == x + 1
    return latencies


async def start_sleeper(
    client: BusClient, tmp_path: Path, seconds: float, *, timeout_s: float = 60
) -> asyncio.Task[Result]:
    """Call ``slow`` in the background and return once its model is running (its pidfile exists)."""
    pidfile = tmp_path / f"sleeper-{time.monotonic_ns()}"
    spec = {"pidfile": str(pidfile), "seconds": seconds}
    task = asyncio.create_task(call(client, "slow", spec, timeout_s=timeout_s))
    await await_until(pidfile.exists, timeout_s=30, message="the slow servable to be running")
    return task


def assert_undelayed(latencies: list[float]) -> None:
    p50 = statistics.median(latencies)
    print(f"quick servable: p50 {p50:.1f} ms, max {max(latencies):.1f} ms over {len(latencies)} calls")
    assert p50 < QUICK_P50_BOUND_MS, latencies
    assert max(latencies) < QUICK_MAX_BOUND_MS, latencies


async def test_slow_servable_does_not_delay_another(client: BusClient, tmp_path: Path) -> None:
    await quick_latencies_ms(client, 1)  # the quick servable's lane is warm
    slow = await start_sleeper(client, tmp_path, 3.0)
    started = time.perf_counter()
    latencies = await quick_latencies_ms(client, 20)
    assert not slow.done(), "the quick calls did not overlap the slow one"
    assert time.perf_counter() - started < 2.5
    assert_undelayed(latencies)
    result = await slow
    assert result.ok and result.timings.inference_ms >= 2900


async def test_stuck_and_crashing_servables_do_not_delay_another(client: BusClient, tmp_path: Path) -> None:
    await quick_latencies_ms(client, 1)
    stuck = await start_sleeper(client, tmp_path, 3600, timeout_s=6)
    crashes: list[Result] = []
    stop = asyncio.Event()

    async def crash_loop() -> None:
        while not stop.is_set():
            crashes.append(await call(client, "crash", None, timeout_s=30))

    crasher = asyncio.create_task(crash_loop())
    try:
        await await_until(lambda: len(crashes) >= 2, timeout_s=30, message="the crashing servable to crash")
        latencies = await quick_latencies_ms(client, 30)
        assert not stuck.done()
    finally:
        stop.set()
        await crasher
    assert_undelayed(latencies)
    assert all(r.error is not None and r.error.code == "worker_lost" for r in crashes), crashes
    timed_out = await stuck
    assert timed_out.error is not None and timed_out.error.code == "task_timeout"
    assert (await call(client, "quick", 1)).ok


async def test_queue_ms_reports_the_wait_for_the_servables_own_process(client: BusClient) -> None:
    # The first call of a version starts its lane (a spare process) and loads it: both are queue time.
    cold = await call(client, "other", 0.0, method="sleep")
    assert cold.ok, cold.error
    assert cold.timings.queue_ms > 0.1, cold.timings  # was 0: the start and load were invocation time
    assert cold.timings.invocation_ms < 500, cold.timings
    # One process per servable: of two concurrent calls, the second waits for the first.
    first, second = sorted(
        await asyncio.gather(*(call(client, "other", 1.0, method="sleep") for _ in range(2))),
        key=lambda r: r.timings.queue_ms,
    )
    for result in (first, second):
        assert result.ok, result.error
        assert result.timings.inference_ms >= 990
        assert result.timings.invocation_ms < 1500, result.timings
    assert first.timings.queue_ms < 200, first.timings
    assert 900 < second.timings.queue_ms < 2000, second.timings


async def test_two_busy_servables_both_make_progress(client: BusClient) -> None:
    """A flood of ``other`` (more than the worker's capacity) and a few ``slow`` calls: ``slow`` finishes
    long before the flood does."""
    await asyncio.gather(
        call(client, "other", 0.0, method="sleep"), call(client, "slow", 0.0, method="sleep")
    )
    flood_started = time.perf_counter()
    flood = [asyncio.create_task(call(client, "other", 0.05, method="sleep")) for _ in range(100)]
    await asyncio.sleep(0)
    few = await asyncio.gather(*(call(client, "slow", 0.05, method="sleep") for _ in range(5)))
    few_s = time.perf_counter() - flood_started
    flooded = await asyncio.gather(*flood)
    flood_s = time.perf_counter() - flood_started
    print(f"5 calls took {few_s:.2f} s beside a flood of 100 that took {flood_s:.2f} s")
    assert all(r.ok for r in few + flooded)
    assert few_s < 2.0 and few_s < flood_s / 2
    waited = max(r.timings.queue_ms for r in flooded)
    assert waited > 2000, "the flood's wait (broker and worker) is reported as queue time"
