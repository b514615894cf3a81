"""libs/common pieces every service runs on: task IDs and the event loop choice."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub.client.launcher import local_broker_url
from dlhub.common import event_loop
from dlhub.common.codec import Codec, decode_body, encode_body
from dlhub.common.ids import new_id


def test_new_ids_are_distinct_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(20_000)]  # crosses many refills of the random pool
    assert len(set(ids)) == len(ids)
    for value in ids[:: len(ids) // 50]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # the parent's pool now holds unused random bytes a child must not reuse
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next IDs, then leave without running pytest's teardown
        os.close(read_end)
        os.write(write_end, ",".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        child_ids = set(reader.read().decode().split(","))
    os.waitpid(pid, 0)
    parent_ids = {new_id() for _ in range(8)}
    assert len(child_ids) == 8 and not child_ids & parent_ids


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_services_run_on_the_configured_event_loop(loop_kind: str) -> None:
    async def loop_module() -> str:
        await asyncio.sleep(0)  # runs one step on the loop: nothing is waited for
        return type(asyncio.get_running_loop()).__module__

    module = event_loop.run(loop_module(), loop_kind)  # type: ignore[arg-type]
    assert module.startswith("uvloop") == (loop_kind == "uvloop")


def test_dlhub_up_gives_its_services_an_ipc_endpoint_when_the_path_fits(tmp_path: Path) -> None:
    url = local_broker_url(tmp_path / "data")
    assert url == f"ipc://{(tmp_path / 'data' / 'run' / 'broker.sock').resolve()}"
    assert (tmp_path / "data" / "run").is_dir()
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert local_broker_url(deep) is None  # too long for a Unix socket address: the services use TCP


@pytest.mark.parametrize(
    "array",
    [
        np.array(5.0),  # 0-d stays 0-d
        np.zeros((0, 3)),
        np.array([True, False]),
        np.arange(12).reshape(3, 4).T,  # not C-contiguous
        np.arange(20)[::3],
        np.array(["ab", "c"]),
        np.array([b"x", b"yz"]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),  # no buffer format: copied with tobytes
        np.array([1 + 2j]),
        np.random.default_rng(0).random((1000, 4)).astype(np.float32),
    ],
)
def test_ndarrays_round_trip_through_the_codec_with_dtype_and_shape(array: np.ndarray) -> None:
    codec = Codec()
    back = codec.decode_value(codec.encode_value({"x": array}))["x"]
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert np.array_equal(decode_body(encode_body([array]), list[Any])[0], array)
