"""The builder over the bus: real broker and builder processes (split from tests/unit/test_builder.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.config import BusConfig
from dlhub.common.errors import (
    DLHubError,
)
from dlhub.common.ids import BUILDER_TOPIC
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import BuildOutcome, decode_payload
from dlhub.common.servable_store import FILES_DIRNAME, version_dir
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.unit.test_builder import (
    GOOD_FILES,
    MiB,
    files_tar,
    make_tar,
    make_zip,
    request,
    tar_member,
    zip_entry,
)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


class Stack:
    def __init__(self, tmp: Path) -> None:
        url = f"tcp://127.0.0.1:{free_port()}"
        self.tmp = tmp
        self.env = {
            **os.environ,
            "DLHUB_BROKER__BIND_URL": url,
            "DLHUB_BUS__BROKER_URL": url,
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": "0.2",
            "DLHUB_DATA_DIR": str(tmp / "data"),
            "DLHUB_BUILDER__MAX_EXTRACTED_BYTES": str(4 * MiB),
            "DLHUB_LOGGING__FORMAT": "json",
        }
        self.bus = BusConfig(broker_url=url, heartbeat_interval_s=0.2)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, module: str) -> None:
        log = (self.tmp / f"{module}.log").open("wb")
        self.processes[module] = subprocess.Popen(
            [sys.executable, "-m", module], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, module: str) -> str:
        return (self.tmp / f"{module}.log").read_text(errors="replace")

    def stop(self) -> dict[str, int | None]:
        return {name: stop_process(p) for name, p in reversed(list(self.processes.items()))}


@pytest.fixture
async def builder_bus(tmp_path: Path) -> AsyncIterator[tuple[Stack, BusClient]]:
    stack = Stack(tmp_path)
    stack.start("dlhub.broker")
    stack.start("dlhub.builder")
    client = BusClient(bus=stack.bus, codec=Codec())
    await client.start()
    try:

        async def registered() -> bool:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{stack.log(name)}")
            try:
                stats = await client.stats(timeout_s=0.5)
            except DLHubError:
                return False
            return any(h.kind == "builder" for h in stats.handlers) and '"ready"' in stack.log(
                "dlhub.builder"
            )

        await await_until(registered, timeout_s=30, message="the builder to register")
        yield stack, client
    finally:
        await client.close()
        codes = stack.stop()
        assert codes["dlhub.builder"] == 0, stack.log("dlhub.builder")


async def test_builder_over_the_bus(builder_bus: tuple[Stack, BusClient]) -> None:
    stack, client = builder_bus
    codec = Codec()
    route = [RouteStep(topic=BUILDER_TOPIC, method="build")]

    bad = await client.call(route, codec.encode_value({"not": "a build request"}), timeout_s=10)
    assert not bad.ok and bad.error is not None and bad.error.code == "invalid_message"

    hostile = await client.call(
        route, codec.encode_value(request(make_tar([tar_member("../../x", b"x")]))), timeout_s=10
    )
    assert not hostile.ok and hostile.error is not None and hostile.error.code == "unsafe_package"

    good = await client.call(route, codec.encode_value(request(files_tar(GOOD_FILES))), timeout_s=10)
    assert good.ok, good.error
    outcome = decode_payload(good.output, BuildOutcome)
    assert Path(outcome.path) == version_dir(stack.tmp / "data" / "servables", "alice", "iris_rf", 1)
    assert (Path(outcome.path) / FILES_DIRNAME / "model.pkl").read_bytes() == GOOD_FILES["model.pkl"]

    bomb = make_zip([zip_entry("bomb.bin", bytes(20 * MiB))])
    too_big = await client.call(route, codec.encode_value(request(bomb, "zip", version=2)), timeout_s=10)
    assert not too_big.ok and too_big.error is not None and too_big.error.code == "payload_too_large"
