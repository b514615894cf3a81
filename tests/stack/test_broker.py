"""The broker and the bus endpoints end to end: a real broker process, real HandlerService/BusClient peers."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import zmq

from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig
from dlhub.common.errors import ValidationFailed
from dlhub.common.messages import (
    Dispatch,
    Result,
    RouteStep,
    Started,
    Submit,
    Timings,
)
from tests.support.broker import (
    BrokerProcess,
    bus_client,
    bus_config,
    make_codec,
    running_handler,
)
from tests.support.polling import await_until

codec = make_codec()
LIVENESS_S = bus_config(0).liveness_timeout_s


def route(*topics: str) -> list[RouteStep]:
    return [RouteStep(topic=t) for t in topics]


def value(result: Result) -> Any:
    assert result.ok, result.error
    return codec.decode_value(result.output)


def error_code(result: Result) -> str:
    assert not result.ok and result.error is not None, result
    return result.error.code


class Gate:
    """A handler that blocks until released and records its peak concurrency."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.seen: list[str] = []

    async def __call__(self, dispatch: Dispatch) -> Result:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.seen.append(dispatch.task_id)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)


async def stats_match(client: BusClient, **expected: int) -> bool:
    stats = await client.stats()
    return all(getattr(stats, key) == want for key, want in expected.items())


# -- happy paths ---------------------------------------------------------------------------------------------


async def test_round_trip_with_started_and_timings(bus: BusConfig) -> None:
    started: list[Started] = []
    async with running_handler(bus, ["echo/topic"]) as handler, bus_client(bus) as client:
        result = await client.call(
            route("echo/topic"), codec.encode_value({"a": [1, 2]}), timeout_s=5, on_started=started.append
        )
        assert value(result) == {"a": [1, 2]}
        assert result.handler_id == handler.handler_id
        assert result.timings.invocation_ms > 0
        assert [s.handler_id for s in started] == [handler.handler_id]
        stats = await client.stats()
        assert [h.handler_id for h in stats.handlers] == [handler.handler_id]
        assert stats.queued == 0 and stats.inflight == 0


async def test_round_trip_latency(bus: BusConfig) -> None:
    async with running_handler(bus, ["servable/*"]), bus_client(bus) as client:
        latencies_ms = []
        payload = codec.encode_value([1.0] * 16)
        for _ in range(300):
            t0 = time.perf_counter()
            result = await client.call(route("servable/a/b@1"), payload, timeout_s=5)
            latencies_ms.append((time.perf_counter() - t0) * 1000)
            assert result.ok
    p50 = statistics.median(latencies_ms)
    print(f"client->broker->handler->client p50 {p50:.3f} ms")
    assert p50 < 5.0


async def test_routing_by_exact_topic_and_prefix_pattern(bus: BusConfig) -> None:
    async with (
        running_handler(bus, ["servable/*"]) as servables,
        running_handler(bus, ["builder/build"]) as builder,
        bus_client(bus) as client,
    ):
        one = await client.call(route("servable/alice/iris@1"), codec.encode_value(1), timeout_s=5)
        two = await client.call(route("servable/bob/other@3"), codec.encode_value(2), timeout_s=5)
        build = await client.call(route("builder/build"), codec.encode_value(3), timeout_s=5)
        assert (value(one), value(two), value(build)) == (1, 2, 3)
        assert one.handler_id == two.handler_id == servables.handler_id
        assert build.handler_id == builder.handler_id
        # "builder/*" is not registered and "servable" (no slash) does not match "servable/*".
        miss = await client.call(route("servable"), codec.encode_value(0), timeout_s=0.3)
        assert error_code(miss) == "no_handler"


async def test_equal_handlers_share_load_round_robin(bus: BusConfig) -> None:
    async with (
        running_handler(bus, ["rr/topic"]) as first,
        running_handler(bus, ["rr/*"]) as second,
        bus_client(bus) as client,
    ):
        served = [
            (await client.call(route("rr/topic"), codec.encode_value(i), timeout_s=5)).handler_id
            for i in range(6)
        ]
        assert served.count(first.handler_id) == 3 and served.count(second.handler_id) == 3


async def test_capacity_respected_and_queued_until_capacity_frees(bus: BusConfig) -> None:
    gate = Gate()
    async with running_handler(bus, ["cap/topic"], gate, capacity=2), bus_client(bus) as client:
        calls = [
            asyncio.create_task(client.call(route("cap/topic"), codec.encode_value(i), timeout_s=10))
            for i in range(5)
        ]
        await await_until(lambda: stats_match(client, inflight=2, queued=3), timeout_s=5, message="2+3")
        assert gate.running == 2
        gate.release.set()
        results = await asyncio.gather(*calls)
    assert sorted(value(r) for r in results) == [0, 1, 2, 3, 4]
    assert gate.peak == 2


async def test_deadlines(bus: BusConfig) -> None:
    gate = Gate()
    async with running_handler(bus, ["slow/topic"], gate, capacity=1), bus_client(bus) as client:
        # Nobody ever served this topic: no_handler once the deadline passes.
        t0 = time.monotonic()
        nobody = await client.call(route("nobody/here"), codec.encode_value(0), timeout_s=0.3)
        assert error_code(nobody) == "no_handler"
        assert nobody.error is not None and nobody.error.topic == "nobody/here"
        assert time.monotonic() - t0 < 0.3 + 1.0
        # The running task expires in flight, the queued one while waiting: both task_timeout.
        running = asyncio.create_task(client.call(route("slow/topic"), codec.encode_value(1), timeout_s=0.4))
        await await_until(lambda: stats_match(client, inflight=1), timeout_s=5, message="first running")
        queued = await client.call(route("slow/topic"), codec.encode_value(2), timeout_s=0.3)
        assert error_code(queued) == "task_timeout"
        expired = await running
        assert error_code(expired) == "task_timeout"
        assert (
            expired.error is not None and "running" in expired.error.message
        )  # the broker's, not the client's
        assert gate.seen and len(gate.seen) == 1  # the queued task never reached the handler
        gate.release.set()
        # Capacity comes back once the handler answers the expired task; the next task runs.
        ok = await client.call(route("slow/topic"), codec.encode_value(3), timeout_s=5)
        assert value(ok) == 3


async def test_two_step_pipeline_and_step_error(bus: BusConfig) -> None:
    async def add_one(dispatch: Dispatch) -> Result:
        x = codec.decode_value(dispatch.inputs)
        return Result(
            task_id=dispatch.task_id,
            ok=True,
            output=codec.encode_value(x + 1),
            timings=Timings(inference_ms=1.0, invocation_ms=2.0),
        )

    async def double(dispatch: Dispatch) -> Result:
        params = codec.decode_value(dispatch.parameters)
        x = codec.decode_value(dispatch.inputs)
        if x < 0:
            raise ValueError("negative input")
        if params.get("strict") and x > 100:
            raise ValidationFailed("too large")
        return Result(
            task_id=dispatch.task_id,
            ok=True,
            output=codec.encode_value(x * 2),
            timings=Timings(inference_ms=10.0, invocation_ms=20.0),
        )

    async with (
        running_handler(bus, ["pipe/add"], add_one),
        running_handler(bus, ["pipe/double"], double) as doubler,
        bus_client(bus) as client,
    ):
        strict = RouteStep(topic="pipe/double", parameters=codec.encode_value({"strict": True}))
        steps = [RouteStep(topic="pipe/add"), strict]
        result = await client.call(steps, codec.encode_value(4), timeout_s=5)
        assert value(result) == 10  # (4 + 1) * 2
        assert result.step == 1 and result.handler_id == doubler.handler_id
        assert result.timings.inference_ms == 11.0 and result.timings.invocation_ms == 22.0

        failed = await client.call(steps, codec.encode_value(-5), timeout_s=5)
        assert failed.error is not None
        assert (failed.error.code, failed.error.step, failed.error.topic) == (
            "servable_error",
            1,
            "pipe/double",
        )
        assert failed.error.exception_type == "ValueError" and "negative input" in failed.error.traceback

        typed = await client.call(steps, codec.encode_value(200), timeout_s=5)
        assert typed.error is not None and (typed.error.code, typed.error.step) == ("validation_error", 1)


async def test_one_multipart_message_carries_several_messages(broker: BrokerProcess, bus: BusConfig) -> None:
    """Peers send what they queued in one loop iteration as one multipart message; each frame is one message,
    and a bad frame among them costs only itself."""
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.IDENTITY, b"batching-client")
    raw.connect(broker.url)
    try:
        async with running_handler(bus, ["batch/echo"]):
            echo_route = route("batch/echo")
            submits = [
                codec.encode(Submit(task_id=f"t{i}", route=echo_route, inputs=codec.encode_value(i)))
                for i in range(3)
            ]
            raw.send_multipart([submits[0], os.urandom(32), submits[1], submits[2]])
            outputs: dict[str, Any] = {}

            def received_three() -> bool:
                while raw.poll(0):  # the handler runs on this event loop: never block it
                    for frame in raw.recv_multipart():
                        message = codec.decode(frame)
                        if isinstance(message, Result):
                            outputs[message.task_id] = value(message)
                return len(outputs) >= 3

            await await_until(received_three, timeout_s=10, interval_s=0.005, message=f"3 results, {outputs}")
            assert outputs == {"t0": 0, "t1": 1, "t2": 2}
        assert "dropping undecodable message" in broker.log_text()
    finally:
        raw.close(linger=0)


async def test_duplicate_submit_is_ignored(broker: BrokerProcess, bus: BusConfig) -> None:
    gate = Gate()
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(broker.url)
    try:
        async with running_handler(bus, ["dup/topic"], gate):
            submit = codec.encode(
                Submit(task_id="dup-1", route=route("dup/topic"), inputs=codec.encode_value(1))
            )
            raw.send(submit)
            raw.send(submit)
            await await_until(lambda: _true(len(gate.seen) == 1), timeout_s=5, message="dispatched")
            gate.release.set()
            assert await asyncio.to_thread(raw.poll, 5000)
            reply = codec.decode(raw.recv())
            assert isinstance(reply, Result) and reply.ok and reply.task_id == "dup-1"
            assert not await asyncio.to_thread(raw.poll, int(LIVENESS_S * 1000))  # no second result
            assert gate.seen == ["dup-1"]
    finally:
        raw.close(linger=0)


async def _true(flag: bool) -> bool:
    return flag


def _ids(client: BusClient) -> Any:
    async def ids() -> set[str]:
        try:
            return {h.handler_id for h in (await client.stats(timeout_s=0.5)).handlers}
        except Exception:
            return set()

    return ids
