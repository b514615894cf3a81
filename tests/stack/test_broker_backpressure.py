"""The broker's bounds and its graceful stop, with a real broker process and real bus peers: a topic's
queue refuses past ``broker.max_queued_per_topic`` with ``queue_full`` (other topics unaffected) and says
``Queued`` to a client that asked; on SIGTERM it refuses new and queued tasks with ``shutting_down``, lets
the running ones finish, and exits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig
from dlhub.common.messages import Dispatch, Queued, Result, RouteStep
from tests.support.broker import BrokerProcess, bus_client, bus_config, make_codec, running_handler
from tests.support.net import free_port
from tests.support.polling import await_until

codec = make_codec()
PER_TOPIC = 2
GRACE_S = 8.0


@pytest.fixture
def bounded_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    env = {
        "DLHUB_BROKER__MAX_QUEUED_PER_TOPIC": str(PER_TOPIC),
        "DLHUB_BROKER__SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    process = BrokerProcess(free_port(), tmp_path / "broker.log", env=env)
    process.start()
    yield process
    process.stop()


class Gate:
    """A handler that holds every task until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0

    async def __call__(self, dispatch: Dispatch) -> Result:
        self.running += 1
        await self.release.wait()
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)


def _call(
    client: BusClient, topic: str, value: int, queued: list[Queued] | None = None
) -> asyncio.Task[Result]:
    on_queued = queued.append if queued is not None else None
    coro = client.call([RouteStep(topic=topic)], codec.encode_value(value), timeout_s=30, on_queued=on_queued)
    return asyncio.get_running_loop().create_task(coro)


async def _queued(client: BusClient, count: int) -> bool:
    return (await client.stats()).queued == count


async def test_a_full_topic_refuses_with_queue_full_and_other_topics_still_queue(
    bounded_broker: BrokerProcess,
) -> None:
    bus = bus_config(bounded_broker.port)
    gate = Gate()
    async with running_handler(bus, ["bp/a", "bp/b"], gate) as _, bus_client(bus) as client:
        queued: list[Queued] = []
        first = _call(client, "bp/a", 0, queued)
        await await_until(lambda: gate.running == 1, timeout_s=5, message="the first task to run")
        waiting = [_call(client, "bp/a", i, queued) for i in (1, 2)]
        await await_until(lambda: len(queued) == PER_TOPIC, timeout_s=5, message="two Queued replies")
        refused = await _call(client, "bp/a", 3, queued)
        assert not refused.ok and refused.error is not None and refused.error.code == "queue_full"
        assert "bp/a" in refused.error.message and refused.error.step == 0
        other = _call(client, "bp/b", 4)  # its own line: not refused
        await await_until(lambda: _queued(client, PER_TOPIC + 1), timeout_s=5, message="bp/b queued")
        assert len(queued) == PER_TOPIC and not other.done()
        gate.release.set()
        results = await asyncio.gather(first, *waiting, other)
        assert [codec.decode_value(r.output) for r in results] == [0, 1, 2, 4]


async def test_sigterm_refuses_new_and_queued_tasks_lets_running_ones_finish_and_exits(
    bounded_broker: BrokerProcess,
) -> None:
    bus = bus_config(bounded_broker.port)
    gate = Gate()
    async with running_handler(bus, ["bp/a"], gate) as _, bus_client(bus) as client:
        running = _call(client, "bp/a", 0)
        await await_until(lambda: gate.running == 1, timeout_s=5, message="the first task to run")
        waiting = _call(client, "bp/a", 1)
        await await_until(lambda: _queued(client, 1), timeout_s=5, message="the second task queued")
        assert bounded_broker.proc is not None
        signalled = time.monotonic()
        bounded_broker.proc.terminate()
        refused = await waiting  # never dispatched: refused at once, safe to submit again
        assert refused.error is not None and refused.error.code == "shutting_down"
        late = await _call(client, "bp/a", 2)
        assert late.error is not None and late.error.code == "shutting_down"
        assert not running.done()
        gate.release.set()
        assert codec.decode_value((await running).output) == 0  # the running task's result still came
        code = await asyncio.to_thread(bounded_broker.proc.wait, GRACE_S + 5)
        assert code == 0 and time.monotonic() - signalled < GRACE_S
        assert "broker drained" in bounded_broker.log_text()


async def test_bus_client_refuses_past_its_pending_bound(bounded_broker: BrokerProcess) -> None:
    bus = BusConfig(**(bus_config(bounded_broker.port).model_dump() | {"max_pending_calls": 2}))
    gate = Gate()
    async with running_handler(bus, ["bp/a"], gate, capacity=2) as _, bus_client(bus) as client:
        held = [_call(client, "bp/a", i) for i in range(2)]
        await await_until(lambda: gate.running == 2, timeout_s=5, message="two tasks running")
        refused = await _call(client, "bp/a", 2)
        assert refused.error is not None and refused.error.code == "queue_full"
        assert gate.running == 2  # refused before it was sent
        gate.release.set()
        assert [r.ok for r in await asyncio.gather(*held)] == [True, True]
