"""A slow consumer with a bounded broker send queue (``broker.sndhwm`` > 0): no result is dropped silently.

A real broker process with ``sndhwm`` 2, a handler answering small requests with 3 MiB results, and a bus
client in a process of its own that is SIGSTOPped (it reads nothing, not even its ZeroMQ I/O thread) while its
results pile up: the broker cannot queue them and drops them (logged). Then the client is continued.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from dlhub.common.messages import Dispatch, Result
from tests.stack.test_broker import codec
from tests.support.broker import REPO, BrokerProcess, bus_config, running_handler, stack_env
from tests.support.net import free_port
from tests.support.polling import await_until

CALLS = 32
PAYLOAD_BYTES = 3 * 1024 * 1024  # 96 MiB in all: more than the kernel buffers of a loopback connection hold

CLIENT = """
import asyncio, json, sys
from dlhub.common.bus import BusClient
from dlhub.common.messages import RouteStep
from tests.support.broker import bus_config, make_codec

async def main(port: int, calls: int) -> None:
    codec = make_codec()
    client = BusClient(bus=bus_config(port), codec=codec)
    await client.start()
    step = [RouteStep(topic="slow/topic")]
    futures = [
        asyncio.ensure_future(client.call(step, codec.encode_value(i), timeout_s=60, durable=i % 2 == 0))
        for i in range(calls)
    ]
    await asyncio.sleep(0)  # the calls queue their submits
    await client.stats()  # answered after the broker has taken every submit (one connection, in order)
    print("submitted", flush=True)
    for i, result in enumerate(await asyncio.gather(*futures)):
        first = codec.decode_value(result.output)[0] if result.ok else None
        code = result.error.code if result.error is not None else ""
        print(json.dumps({"i": i, "ok": result.ok, "first": first, "code": code}), flush=True)
    await client.close()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


class LargeResults:
    """The handler: each task's result is 3 MiB; none is answered before ``release`` is set (the client is
    stopped by then). Capacity 1: the results reach the broker one by one, so each leaves in a message of
    its own (a single multipart message of them all would fit under any high-water mark)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, dispatch: Dispatch) -> Result:
        await self.release.wait()
        i = codec.decode_value(dispatch.inputs)
        return Result(
            task_id=dispatch.task_id, ok=True, output=codec.encode_value(bytes([i]) * PAYLOAD_BYTES)
        )


async def test_a_client_past_the_brokers_sndhwm_gets_its_durable_results_and_fails_the_rest_fast(
    tmp_path: Path,
) -> None:
    """Pass criteria: ``CALLS`` calls with 3 MiB results, every other one durable; the client process is
    stopped until the broker has dropped messages to it (logged). Once continued: every durable call ends ok
    with its own output (the broker re-sends it from its mailbox when the client asks about its long-awaited
    calls); every other call ends ok with its own output, or failed ``broker_unavailable``; all within 10 s,
    not at their 60 s deadline."""
    broker = BrokerProcess(free_port(), tmp_path / "broker.log", env={"DLHUB_BROKER__SNDHWM": "2"})
    broker.start()
    try:
        handler = LargeResults()
        loop = asyncio.get_running_loop()
        async with running_handler(bus_config(broker.port), ["slow/topic"], handler, capacity=1):
            release = partial(loop.call_soon_threadsafe, handler.release.set)
            lines, continued_s = await asyncio.to_thread(_stalled_client, broker, release)
    finally:
        broker.stop()
    assert continued_s < 10, continued_s
    outcomes: list[dict[str, Any]] = [json.loads(line) for line in lines if line.startswith('{"i"')]
    assert [o["i"] for o in outcomes] == list(range(CALLS))
    for o in outcomes:
        if o["ok"]:
            assert o["first"] == o["i"], o
        else:
            assert o["i"] % 2 == 1 and o["code"] == "broker_unavailable", o  # never a durable one


def _stalled_client(broker: BrokerProcess, release: Callable[[], object]) -> tuple[list[str], float]:
    env = stack_env(broker.port) | {"PYTHONPATH": ":".join(sys.path)}
    argv = [sys.executable, "-c", CLIENT, str(broker.port), str(CALLS)]
    client = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        while client.stdout.readline().strip() != "submitted":  # (the client's logs go to stdout too)
            assert client.poll() is None
        client.send_signal(signal.SIGSTOP)  # the fault: nothing of the client reads any more
        release()
        try:
            asyncio.run(
                await_until(
                    lambda: "send to peer failed" in broker.log_text(),
                    timeout_s=30,
                    message="the broker to drop messages to the stopped client",
                )
            )
        finally:
            client.send_signal(signal.SIGCONT)
        continued = time.monotonic()
        out, _ = client.communicate(timeout=90)
        return out.splitlines(), time.monotonic() - continued
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
