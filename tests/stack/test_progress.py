"""Progress reports: handler -> broker -> the task's client, in order, only while the task runs there."""

from __future__ import annotations

import asyncio
import threading

import msgspec

from dlhub.builder.service import ProgressRelay
from dlhub.common.bus import HandlerService
from dlhub.common.config import BusConfig
from dlhub.common.messages import Dispatch, Progress, Result, RouteStep
from dlhub.common.payloads import BuildEvent
from tests.support.broker import bus_client, make_codec, running_handler

codec = make_codec()


def _route(topic: str) -> list[RouteStep]:
    return [RouteStep(topic=topic)]


async def test_reports_reach_the_caller_in_order_before_the_result(bus: BusConfig) -> None:
    services: list[HandlerService] = []

    async def reporting(dispatch: Dispatch) -> Result:
        for n in range(3):
            services[0].report(dispatch.task_id, dispatch.step, codec.encode_value({"n": n}))
        return Result(task_id=dispatch.task_id, ok=True, output=codec.encode_value("done"))

    received: list[Progress] = []
    async with running_handler(bus, ["progress/topic"], reporting) as handler, bus_client(bus) as client:
        services.append(handler)
        result = await client.call(
            _route("progress/topic"), codec.encode_value(None), timeout_s=5, on_progress=received.append
        )
    assert result.ok and msgspec.msgpack.decode(result.output) == "done"
    assert [msgspec.msgpack.decode(p.payload) for p in received] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_a_handler_cannot_report_for_a_task_running_elsewhere(bus: BusConfig) -> None:
    """The broker forwards a report only from the handler running that task (and only while it runs)."""
    running = asyncio.Event()
    release = asyncio.Event()
    owners: list[HandlerService] = []

    async def slow(dispatch: Dispatch) -> Result:
        owners[0].report(dispatch.task_id, dispatch.step, codec.encode_value("mine"))
        running.set()
        await release.wait()
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)

    received: list[Progress] = []
    two_received = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        received.append(progress)
        if len(received) >= 2:
            two_received.set()

    async with (
        running_handler(bus, ["progress/owner"], slow) as owner,
        running_handler(bus, ["progress/other"]) as other,
        bus_client(bus) as client,
    ):
        owners.append(owner)
        call = asyncio.ensure_future(
            client.call(
                _route("progress/owner"), codec.encode_value(1), timeout_s=5, task_id="t1",
                on_progress=on_progress,
            )
        )  # fmt: skip
        await asyncio.wait_for(running.wait(), 5)
        assert other.report("t1", 0, codec.encode_value("forged"))  # sent, and dropped by the broker
        owner.report("t1", 0, codec.encode_value("mine again"))  # ordered after the forged one
        await asyncio.wait_for(two_received.wait(), 5)
        release.set()
        assert (await call).ok
    assert [msgspec.msgpack.decode(p.payload) for p in received] == ["mine", "mine again"]


async def test_the_build_relay_batches_thread_events_in_order() -> None:
    sent: list[list[BuildEvent]] = []
    relay = ProgressRelay(asyncio.get_running_loop(), sent.append)
    done = threading.Event()

    def build_thread() -> None:
        relay(BuildEvent(state="resolving", at_unix_s=1.0))
        for n in range(100):
            relay(BuildEvent(lines=[f"line {n}"]))
        relay(BuildEvent(state="ready", at_unix_s=2.0))
        done.set()

    await asyncio.to_thread(build_thread)
    relay.flush()
    assert done.is_set()
    events = [event for batch in sent for event in batch]
    assert events[0].state == "resolving" and events[-1].state == "ready"
    assert [e.lines[0] for e in events[1:-1]] == [f"line {n}" for n in range(100)]
    assert len(sent) < 100  # batched per event-loop pass, not one report per line
