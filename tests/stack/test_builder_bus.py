"""The builder over the bus: real broker and builder processes (split from tests/unit/test_builder.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.ids import BUILDER_TOPIC
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import BuildOutcome, decode_payload
from dlhub.common.servable_store import FILES_DIRNAME, version_dir
from tests.support.services import ServiceProcesses
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


@pytest.fixture
async def builder_bus(tmp_path: Path) -> AsyncIterator[tuple[ServiceProcesses, BusClient]]:
    stack = ServiceProcesses(
        tmp_path,
        env={"DLHUB_BUILDER__MAX_EXTRACTED_BYTES": str(4 * MiB), "DLHUB_LOGGING__FORMAT": "json"},
    )
    stack.start("broker")
    stack.start("builder")
    client = BusClient(bus=stack.bus, codec=Codec())
    await client.start()
    try:
        await stack.wait_registered(client, "builder", timeout_s=30, ready='"ready"')
        yield stack, client
    finally:
        await client.close()
        codes = stack.stop_all()
        assert codes["builder"] == 0, stack.log("builder")


async def test_builder_over_the_bus(builder_bus: tuple[ServiceProcesses, BusClient]) -> None:
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
    assert Path(outcome.path) == version_dir(stack.base / "data" / "servables", "alice", "iris_rf", 1)
    assert (Path(outcome.path) / FILES_DIRNAME / "model.pkl").read_bytes() == GOOD_FILES["model.pkl"]

    bomb = make_zip([zip_entry("bomb.bin", bytes(20 * MiB))])
    too_big = await client.call(route, codec.encode_value(request(bomb, "zip", version=2)), timeout_s=10)
    assert not too_big.ok and too_big.error is not None and too_big.error.code == "payload_too_large"
