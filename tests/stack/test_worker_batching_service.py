"""Batching in the worker service with a real executor pool, and in a worker process over the bus (split from
tests/unit/test_worker_batching.py)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig, load_settings
from dlhub.common.ids import servable_topic
from dlhub.common.messages import RouteStep
from dlhub.common.servable_store import FILES_DIRNAME
from dlhub.worker.service import WorkerService
from tests.stack.test_worker_service import HEARTBEAT_INTERVAL_S, Stack, dispatch
from tests.support.worker_servables import (
    PYTHON_SHIM,
    train_iris_forest,
    write_servable,
    write_sklearn_servable,
)
from tests.unit.test_worker_batching import CODEC


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[WorkerService]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        worker={"servable_dir": tmp_path / "servables", "processes": 1, "batch_max_wait_ms": 20},
    )
    worker = WorkerService(settings)
    await worker.pool.start()
    try:
        yield worker
    finally:
        await worker.batcher.close()
        await worker.pool.close()


async def test_service_batches_concurrent_sklearn_requests(service: WorkerService) -> None:
    assert service.capacity == 1 + 64
    model = train_iris_forest()
    write_sklearn_servable(service.servable_root, "iris", model)
    topic = servable_topic("alice", "iris", 1)
    from sklearn.datasets import load_iris

    rows = load_iris().data[::10]
    await service.handle(dispatch(topic, rows[:1].tolist()))  # load the model first
    before = service.batcher.merged_batches
    results = await asyncio.gather(*(service.handle(dispatch(topic, [row.tolist()])) for row in rows))
    assert service.batcher.merged_batches > before
    for row, result in zip(rows, results, strict=True):
        assert result.ok, result.error
        assert CODEC.decode_value(result.output).tolist() == model.predict([row]).tolist()
        assert result.timings.queue_ms > 0
    # A client batch of max_size rows or more goes straight to the executor.
    batches = service.batcher.batches
    big = await service.handle(dispatch(topic, np.tile(rows, (7, 1))))
    assert big.ok and len(CODEC.decode_value(big.output)) == 7 * len(rows)
    assert service.batcher.batches == batches
    # Different parameters are different batches; an error reaches every request of its batch.
    failures = await asyncio.gather(
        *(service.handle(dispatch(topic, [[1, 2, 3, 4]], bogus=1)) for _ in range(3))
    )
    assert all(f.error is not None and f.error.exception_type == "TypeError" for f in failures)


async def test_batching_can_be_switched_off(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, worker={"batch_enabled": False, "processes": 2})
    worker = WorkerService(settings)
    assert worker.capacity == 2
    assert worker.batch_policy(tmp_path, "run") is None
    capped = WorkerService(load_settings(data_dir=tmp_path, worker={"batch_capacity": 4}))
    assert capped.capacity == 1 + 4


RECORDER = textwrap.dedent(
    """
    import pathlib
    import time

    LOG = pathlib.Path(__file__).parent / "batches.log"


    def times_ten(rows):
        with LOG.open("a") as log:
            log.write(f"{len(rows)}\\n")
        time.sleep(0.01)  # a slow model call, so that concurrent requests queue and merge (under test)
        return [[v * 10 for v in row] for row in rows]
    """
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    processes = Stack(tmp_path)
    write_servable(
        processes.servable_dir,
        "alice",
        "rec",
        1,
        shim=PYTHON_SHIM,
        methods={
            "run": {
                "input": {"type": "list"},
                "output": {"type": "list"},
                "parameters": {},
                "method_details": {"module": "recorder", "method_name": "times_ten", "batchable": True},
            }
        },
        files={"recorder.py": RECORDER},
    )
    processes.start("broker")
    processes.start("worker")
    try:
        yield processes
    finally:
        for name in ("worker", "broker"):
            assert processes.stop(name) is not None, f"{name} ignored SIGTERM:\n{processes.log(name)}"


async def test_worker_process_merges_concurrent_requests(stack: Stack) -> None:
    bus = BusClient(
        bus=BusConfig(broker_url=stack.broker_url, heartbeat_interval_s=HEARTBEAT_INTERVAL_S), codec=CODEC
    )
    await bus.start()
    try:
        await stack.wait_registered(bus, "worker", timeout_s=60)
        stats = await bus.stats(timeout_s=1.0)
        assert [h.capacity for h in stats.handlers if h.kind == "worker"] == [1 + 64]
        step = RouteStep(topic=servable_topic("alice", "rec", 1))
        results = await asyncio.gather(
            *(bus.call([step], CODEC.encode_value([[i, -i]]), timeout_s=30) for i in range(32))
        )
    finally:
        await bus.close()
    for i, result in enumerate(results):
        assert result.ok, result.error
        assert CODEC.decode_value(result.output) == [[i * 10, -i * 10]]
    log = stack.servable_dir / "alice" / "rec" / "1" / FILES_DIRNAME / "batches.log"
    sizes = [int(line) for line in log.read_text().split()]
    assert sum(sizes) == 32
    assert len(sizes) < 32, sizes
    print(f"32 concurrent requests ran as {len(sizes)} model calls: {sizes}")
