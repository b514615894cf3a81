"""Garbage on the bus, against a real broker and a real worker process: a raw ZeroMQ peer sends undecodable
frames, a wrong codec version, unknown message types, frames over ``bus.max_message_bytes``, messages out of
protocol order, and tasks whose inputs reach the worker as garbage. (The broker alone, frame by frame:
tests/fault/test_broker_faults.py::test_malformed_frames_are_dropped.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from dlhub.common.bus import BusClient
from dlhub.common.codec import WIRE_VERSION
from dlhub.common.ids import new_id, servable_topic
from dlhub.common.messages import (
    Dispatch,
    Heartbeat,
    Progress,
    Reconnect,
    Register,
    Registered,
    Result,
    RouteStep,
    Submit,
    Unregister,
)
from tests.stack.test_worker_service import CODEC, METHODS, Stack, run, worker_client
from tests.support.polling import await_until
from tests.support.worker_servables import write_function_servable

MAX_MESSAGE_BYTES = 1024 * 1024


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    processes = Stack(tmp_path)
    processes.env["DLHUB_BUS__MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)
    write_function_servable(processes.servable_dir, "fn", methods=METHODS)
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


@pytest.fixture
def raw(stack: Stack) -> Iterator[zmq.Socket[bytes]]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"raw-" + new_id().encode())
    sock.connect(stack.broker_url)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def _garbage_frames() -> list[bytes]:
    heartbeat = CODEC.encode(Heartbeat(sender_id="raw"))
    return [
        b"",
        os.urandom(64),
        bytes([WIRE_VERSION + 1]) + heartbeat[1:],  # a codec version from the future
        bytes([0]) + heartbeat[1:],
        bytes([WIRE_VERSION]) + msgspec.msgpack.encode({"type": "no_such_type"}),
        bytes([WIRE_VERSION]) + msgspec.msgpack.encode({"type": "submit", "task_id": 7}),  # wrong field type
        bytes([WIRE_VERSION]) + msgspec.msgpack.encode([1, 2, 3]),  # not a map
        bytes([WIRE_VERSION]) + b"\xdd\xff\xff\xff\xff",  # an array claiming 4 G elements
    ]


def _out_of_order() -> list[bytes]:
    """Valid messages a peer in its state must not send: answers before any question, a handler's messages
    before registering, broker-to-peer messages sent to the broker, a registration it must refuse."""
    return [
        bytes(CODEC.encode(message))
        for message in (
            Result(task_id="never-dispatched", ok=True),
            Progress(task_id="never-dispatched"),
            Unregister(handler_id="never-registered"),
            Dispatch(task_id="t", step=0, topic="x", method="run"),
            Registered(handler_id="x", heartbeat_interval_s=0.0),
            Reconnect(reason="from a peer"),
            Register(handler_id="bad", kind="worker", topics=["servable/*"], capacity=0),
            Register(handler_id="bad", kind="worker", topics=[], capacity=3),
            Submit(task_id="empty-route", route=[]),
        )
    ]


async def test_garbage_and_out_of_order_messages_leave_broker_and_worker_serving(
    stack: Stack, client: BusClient, raw: zmq.Socket[bytes]
) -> None:
    """Pass criteria: after undecodable frames, wrong codec versions, unknown types, malformed fields,
    out-of-order and wrong-direction messages and a frame over ``bus.max_message_bytes`` from one peer, the
    broker and the worker processes are still running, no handler was added or lost, the stray Result is
    answered with Reconnect and the empty route with a typed ``validation_error``, and a task through the
    worker succeeds within 10 s."""
    assert (await run(client, 1)).ok
    handlers_before = {h.handler_id for h in (await client.stats()).handlers}
    for frame in _garbage_frames() + _out_of_order():
        raw.send(frame)
    replies: list[Any] = []

    def answered() -> bool:  # polled without blocking: the client's heartbeats share this event loop
        while raw.poll(0):
            replies.append(CODEC.decode(raw.recv()))
        return any(isinstance(r, Reconnect) for r in replies) and any(isinstance(r, Result) for r in replies)

    await await_until(answered, timeout_s=5, message="the broker's answers to the raw peer")
    empty = [r for r in replies if isinstance(r, Result) and r.task_id == "empty-route"]
    assert empty and empty[0].error is not None and empty[0].error.code == "validation_error", replies
    raw.send(bytes([WIRE_VERSION]) + b"\x00" * (MAX_MESSAGE_BYTES + 1024))  # ZeroMQ drops this peer

    after = await run(client, 41, timeout_s=10)
    assert after.ok and CODEC.decode_value(after.output) == 42, after.error
    assert {h.handler_id for h in (await client.stats()).handlers} == handlers_before
    for name in ("broker", "worker"):
        assert stack.processes[name].poll() is None, stack.log(name)
    assert "dropping undecodable message" in stack.log("broker")


async def test_garbage_inputs_fail_the_task_typed_and_the_worker_serves_on(
    stack: Stack, client: BusClient, raw: zmq.Socket[bytes]
) -> None:
    """Pass criteria: tasks with parameters that are not a map, a method the servable does not have, or
    inputs of the wrong shape each fail with a typed error (``validation_error`` or ``servable_error``)
    within 15 s; a Submit whose inputs are not msgpack at all is dropped by the broker as undecodable (it
    cannot be answered: its task id cannot be trusted) and logged; the worker stays up and serves on."""
    topic = servable_topic("alice", "fn", 1)
    one = CODEC.encode_value(1)
    expected = {
        "params-not-a-map": (RouteStep(topic=topic, parameters=CODEC.encode_value([1, 2])), one),
        "no-method": (RouteStep(topic=topic, method="no_such_method"), one),
        "inputs-wrong-shape": (RouteStep(topic=topic), CODEC.encode_value({"not": "a number"})),
    }
    for task_id, (step, inputs) in expected.items():
        raw.send(CODEC.encode(Submit(task_id=task_id, route=[step], inputs=inputs, timeout_s=10)))
    raw.send(
        CODEC.encode(
            Submit(task_id="not-msgpack", route=[RouteStep(topic=topic)], inputs=msgspec.Raw(b"\xc1"))
        )
    )
    results: dict[str, Result] = {}

    def collect() -> bool:
        while raw.poll(0):
            message = CODEC.decode(raw.recv())
            if isinstance(message, Result):
                results[message.task_id] = message
        return set(results) >= set(expected)

    await await_until(collect, timeout_s=15, message="a result for every garbage task")
    for task_id, result in results.items():
        assert task_id in expected, result
        assert not result.ok and result.error is not None, (task_id, result)
        assert result.error.code in {"validation_error", "servable_error"}, (task_id, result)
    assert "invalid opcode" in stack.log("broker")
    after = await run(client, 1, y=1)
    assert after.ok and CODEC.decode_value(after.output) == 2, after.error
    assert stack.processes["worker"].poll() is None


SLOW_TASKS = 300


async def test_a_client_that_stops_reading_loses_no_result(
    stack: Stack, client: BusClient, raw: zmq.Socket[bytes]
) -> None:
    """A slow consumer. Pass criteria: a raw client submits ``SLOW_TASKS`` tasks and reads nothing while
    they all finish (the broker's send queue to it grows: ``broker.sndhwm`` is 0, unbounded, by default);
    when it reads at last, every task has exactly one Result and each is ok; the broker stays up and keeps
    serving the other client meanwhile."""
    topic = servable_topic("alice", "fn", 1)
    for i in range(SLOW_TASKS):
        step = RouteStep(topic=topic)
        raw.send(CODEC.encode(Submit(task_id=f"slow-{i}", route=[step], inputs=CODEC.encode_value(i))))

    async def all_done() -> bool:
        stats = await client.stats()
        return stats.inflight == 0 and stats.queued == 0

    await await_until(all_done, timeout_s=30, message="every task of the slow reader to finish")
    assert (await run(client, 1)).ok
    results: dict[str, Result] = {}

    def collect() -> bool:
        while raw.poll(0):
            message = CODEC.decode(raw.recv())
            if isinstance(message, Result):
                assert message.task_id not in results, message
                results[message.task_id] = message
        return len(results) >= SLOW_TASKS

    await await_until(collect, timeout_s=15, message="every result, read late")
    assert all(r.ok for r in results.values())
    assert sorted(CODEC.decode_value(r.output) for r in results.values()) == list(range(1, SLOW_TASKS + 1))
