"""CurveZMQ on the bus, against a real broker process over real TCP: a peer without a key, or with a key the
broker does not admit, gets nothing at all; an admitted key may send only what its role may (a worker key
cannot submit, a registry key cannot register for topics, a worker key cannot serve build topics); another
key cannot take over the registry's routing identity; admitted keys run tasks end to end."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dlhub.common.bus import BusClient
from dlhub.common.config import BusConfig
from dlhub.common.curve import create_keys, load_client_keys
from dlhub.common.ids import ANY_SERVABLE_TOPIC, BUILDER_TOPIC, new_id
from dlhub.common.messages import (
    Dispatch,
    Heartbeat,
    Message,
    Register,
    Result,
    RouteStep,
    StatsReply,
    StatsRequest,
    Submit,
)
from tests.support.broker import BrokerProcess, bus_config, make_codec, running_handler
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.support.stack import StackInfo

codec = make_codec()
TOPIC = "servable/alice/echo@1"
QUIET_S = 1.5
"""How long a refused peer is watched for any frame: more than two broker heartbeat periods (0.2 s) and
liveness timeouts (0.6 s), in which an admitted peer hears from the broker (see the controls below)."""


class Keys:
    def __init__(self, base: Path) -> None:
        self.dir = base / "keys"
        create_keys(self.dir)  # broker, registry, worker, builder, search, admin
        self.rogue_dir = base / "rogue"
        create_keys(self.rogue_dir)  # the same names, other keys: none admitted by the broker
        # The rogue peer knows the broker's public key: it is the broker, not the client, that refuses it.
        (self.rogue_dir / "broker.key").write_bytes((self.dir / "broker.key").read_bytes())

    def bus(self, port: int, name: str, *, keys_dir: Path | None = None) -> BusConfig:
        return bus_config(port).model_copy(
            update={"curve_enabled": True, "curve_keys_dir": keys_dir or self.dir, "curve_key_name": name}
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def curve_broker(tmp_path: Path, keys: Keys) -> Iterator[BrokerProcess]:
    env = {"DLHUB_BUS__CURVE_ENABLED": "true", "DLHUB_BUS__CURVE_KEYS_DIR": str(keys.dir)}
    process = BrokerProcess(free_port(), tmp_path / "broker.log", env=env)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def registry(curve_broker: BrokerProcess, keys: Keys) -> AsyncIterator[BusClient]:
    client = BusClient(bus=keys.bus(curve_broker.port, "registry"), codec=codec, client_id="registry@test")
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def raw_peer(
    url: str, *, keys_dir: Path | None = None, name: str = "", identity: bytes = b""
) -> zmq.Socket[bytes]:
    """A DEALER of our own making: plain (no keys) or a CURVE client with the keypair ``name`` of
    ``keys_dir``, with the routing identity given (default: a random one)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity or f"raw-{new_id()}".encode())
    if keys_dir is not None:
        load_client_keys(keys_dir, name).apply(sock)
    sock.connect(url)
    return sock


def hostile_messages(task_id: str) -> list[Message]:
    """What a peer would send to serve every servable or run a task: register, submit, ask, heartbeat."""
    return [
        Register(handler_id=f"h-{task_id}", kind="worker", topics=[ANY_SERVABLE_TOPIC], capacity=4),
        Submit(task_id=task_id, route=[RouteStep(topic=TOPIC)], inputs=codec.encode_value(1), timeout_s=5),
        StatsRequest(request_id=f"s-{task_id}"),
        Heartbeat(sender_id=f"h-{task_id}"),
    ]


async def received(sock: zmq.Socket[bytes], seconds: float) -> list[Message]:
    """Every message ``sock`` gets within ``seconds`` (polled without blocking the event loop)."""
    got: list[Message] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        while sock.poll(0):
            got.extend(codec.decode(frame) for frame in sock.recv_multipart())
        await asyncio.sleep(0.02)
    return got


async def handler_ids(client: BusClient) -> set[str]:
    return {h.handler_id for h in (await client.stats(timeout_s=2)).handlers}


async def echo_call(client: BusClient, value: Any, timeout_s: float = 5) -> Result:
    return await client.call([RouteStep(topic=TOPIC)], codec.encode_value(value), timeout_s=timeout_s)


async def test_admitted_keys_run_a_task_end_to_end(
    curve_broker: BrokerProcess, keys: Keys, registry: BusClient
) -> None:
    """Control: registry, worker and admin keys do their jobs (register, submit, result, stats) over CURVE."""
    async with running_handler(
        keys.bus(curve_broker.port, "worker"), [TOPIC], kind="worker", handler_id="w1"
    ):
        result = await echo_call(registry, {"x": 1})
        assert result.ok and codec.decode_value(result.output) == {"x": 1}
        admin = BusClient(bus=keys.bus(curve_broker.port, "admin"), codec=codec)
        try:
            assert await handler_ids(admin) == {"w1"}
        finally:
            await admin.close()
    assert "bus authentication on" in curve_broker.log_text()


@pytest.mark.parametrize("peer", ["no keys", "unknown keypair"])
async def test_peer_without_an_admitted_key_gets_nothing(
    curve_broker: BrokerProcess, keys: Keys, registry: BusClient, peer: str
) -> None:
    """Pass criteria: the peer's Register, Submit, StatsRequest and Heartbeat go unanswered for 1.5 s, it is
    never listed as a handler, a task for the servable it tried to serve is not dispatched to it (it fails
    ``no_handler``), and the broker still serves admitted peers. The same messages from an admitted key are
    answered at once (control)."""
    rogue_dir = keys.rogue_dir if peer == "unknown keypair" else None
    sock = raw_peer(curve_broker.url, keys_dir=rogue_dir, name="worker")
    control = raw_peer(curve_broker.url, keys_dir=keys.dir, name="admin")
    try:
        for message in hostile_messages("rogue-task"):
            sock.send(codec.encode(message))
        control.send(codec.encode(StatsRequest(request_id="control")))
        stray = await echo_call(registry, 2, timeout_s=1.0)
        assert not stray.ok and stray.error is not None and stray.error.code == "no_handler", stray
        assert await received(sock, QUIET_S) == []
        assert "rogue-task" not in await handler_ids(registry) and not await handler_ids(registry)
        assert [type(m).__name__ for m in await received(control, 0.5)][:1] == ["StatsReply"]
    finally:
        sock.close(linger=0)
        control.close(linger=0)
    if peer == "unknown keypair":
        assert "bus connection refused: unknown key" in curve_broker.log_text()


async def test_a_worker_key_cannot_submit_and_a_registry_key_cannot_register(
    curve_broker: BrokerProcess, keys: Keys, registry: BusClient
) -> None:
    """Pass criteria: a worker key's Submit is answered ``forbidden`` and never reaches the real handler of
    the topic; a registry key's Register is not acknowledged and its peer gets no Dispatch; a worker key
    registering for the builder's topic is refused; every refusal is logged; the legitimate path still works.
    """
    seen: list[str] = []

    async def record(dispatch: Dispatch) -> Result:
        seen.append(dispatch.task_id)
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)

    worker_bus = keys.bus(curve_broker.port, "worker")
    async with running_handler(worker_bus, [TOPIC], record, kind="worker", handler_id="real-worker"):
        as_worker = raw_peer(curve_broker.url, keys_dir=keys.dir, name="worker")
        as_registry = raw_peer(curve_broker.url, keys_dir=keys.dir, name="registry")
        try:
            submit = Submit(
                task_id="from-worker", route=[RouteStep(topic=TOPIC)], inputs=codec.encode_value(1)
            )
            as_worker.send(codec.encode(submit))
            build = Register(handler_id="fake-builder", kind="builder", topics=[BUILDER_TOPIC], capacity=1)
            as_worker.send(codec.encode(build))
            register = Register(
                handler_id="fake-worker", kind="worker", topics=[ANY_SERVABLE_TOPIC], capacity=8
            )
            as_registry.send(codec.encode(register))
            replies = await received(as_worker, QUIET_S)
            assert len(replies) == 1 and isinstance(replies[0], Result), replies
            assert replies[0].task_id == "from-worker" and replies[0].error is not None
            assert replies[0].error.code == "forbidden"
            assert await handler_ids(registry) == {"real-worker"}
            for i in range(8):  # the registry's own tasks all go to the real worker, none to the impostor
                assert (await echo_call(registry, i)).ok
            assert await received(as_registry, 0.3) == []
            assert seen and "from-worker" not in seen
        finally:
            as_worker.close(linger=0)
            as_registry.close(linger=0)
    log = curve_broker.log_text()
    assert "worker may not send Submit" in log and "registry may not send Register" in log
    assert log.count("worker may not send Register") == 1  # the builder topic


async def test_another_key_cannot_take_over_the_registry_identity(
    curve_broker: BrokerProcess, keys: Keys, registry: BusClient
) -> None:
    """A worker key connecting with the registry's identity (as the logs name it) gets a routing identity of
    its own: the registry's result still reaches the registry, the impostor hears nothing of it."""
    release = asyncio.Event()

    async def slow(dispatch: Dispatch) -> Result:
        await release.wait()
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)

    async with running_handler(keys.bus(curve_broker.port, "worker"), [TOPIC], slow, kind="worker"):
        call = asyncio.ensure_future(echo_call(registry, "secret input", timeout_s=10))
        await await_until(lambda: _any_inflight(registry), timeout_s=5, message="task dispatched")
        impostor = raw_peer(curve_broker.url, keys_dir=keys.dir, name="worker", identity=b"registry@test")
        try:
            impostor.send(codec.encode(Heartbeat(sender_id="registry@test")))
            await asyncio.sleep(0)  # the heartbeat leaves before the handler answers
            await received(impostor, 0.3)
            release.set()
            result = await call
            assert result.ok and codec.decode_value(result.output) == "secret input"
            assert not [m for m in await received(impostor, 0.5) if isinstance(m, Result)]
        finally:
            impostor.close(linger=0)


async def _any_inflight(client: BusClient) -> bool:
    return any(h.inflight for h in (await client.stats(timeout_s=1)).handlers)


async def test_the_embedded_stack_runs_its_bus_with_keys(stack: StackInfo) -> None:
    """`dlhub up` wrote its keys on first start (secret files 0600 in a 0700 directory), the broker admits
    only them, and every service joined with its own key: the workers are registered and the stack's own
    key for tools is answered while a plain socket hears nothing."""
    keys_dir = stack.data_dir / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    secrets = sorted(p.name for p in keys_dir.glob("*.key_secret"))
    assert secrets == sorted(
        f"{n}.key_secret" for n in ("broker", "registry", "worker", "builder", "search", "admin")
    )
    assert all(stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600 for name in secrets)
    assert stack.worker_count() >= 1
    plain = raw_peer(stack.broker_url)
    admin = raw_peer(stack.broker_url, keys_dir=keys_dir, name="admin")
    try:
        for sock in (plain, admin):
            sock.send(codec.encode(StatsRequest(request_id="probe")))
        replies = await received(admin, 1.0)
        assert any(isinstance(m, StatsReply) and any(h.kind == "worker" for h in m.handlers) for m in replies)
        assert await received(plain, 0.5) == []
    finally:
        plain.close(linger=0)
        admin.close(linger=0)
    broker_log = (stack.data_dir / "logs" / "broker.log").read_text()
    assert "bus authentication on" in broker_log
    assert "secret" not in broker_log.replace("key_secret", "")  # no key material in the log


async def test_an_identity_stays_with_the_key_it_first_came_with(
    curve_broker: BrokerProcess, keys: Keys
) -> None:
    """A routing identity first used with the worker key is refused with any other key (here: admin asking for
    the handler table), while the admin key under an identity of its own is answered (control)."""
    first = raw_peer(curve_broker.url, keys_dir=keys.dir, name="worker", identity=b"shared-identity")
    try:
        first.send(codec.encode(StatsRequest(request_id="first")))
        assert [type(m) for m in await received(first, 0.5)] == [StatsReply]
    finally:
        first.close(linger=0)
    second = raw_peer(curve_broker.url, keys_dir=keys.dir, name="admin", identity=b"shared-identity")
    control = raw_peer(curve_broker.url, keys_dir=keys.dir, name="admin")
    try:
        for sock in (second, control):
            sock.send(codec.encode(StatsRequest(request_id="second")))
        assert [type(m) for m in await received(control, 0.5)] == [StatsReply]
        assert await received(second, 0.5) == []
    finally:
        second.close(linger=0)
        control.close(linger=0)
    assert "identity of another key" in curve_broker.log_text()
