"""The wire codec: version byte, size limits and ndarrays (in-process)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from dlhub.common.codec import WIRE_VERSION, Codec
from dlhub.common.errors import InvalidMessage, MessageTooLarge
from dlhub.common.messages import (
    Heartbeat,
    RouteStep,
    Submit,
)


def route(*topics: str) -> list[RouteStep]:
    return [RouteStep(topic=t) for t in topics]


def test_codec_version_byte_size_limits_and_ndarray() -> None:
    small = Codec(max_message_bytes=1024)
    frame = small.encode(Heartbeat(sender_id="x"))
    assert frame[0] == WIRE_VERSION
    assert small.decode(frame) == Heartbeat(sender_id="x")
    with pytest.raises(InvalidMessage, match="wire version"):
        small.decode(bytes([WIRE_VERSION + 1]) + frame[1:])
    with pytest.raises(InvalidMessage):
        small.decode(b"")
    with pytest.raises(InvalidMessage):
        small.decode(bytes([WIRE_VERSION]) + msgspec.msgpack.encode({"type": "bogus"}))
    # Oversize is refused before sending and dropped when received.
    big = Submit(task_id="t", route=route("a"), inputs=small.encode_value("x" * 2000))
    with pytest.raises(MessageTooLarge):
        small.encode(big)
    with pytest.raises(MessageTooLarge):
        small.decode(Codec().encode(big))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    decoded = small.decode_value(small.encode_value({"x": array, "n": np.int64(3)}))
    assert decoded["n"] == 3
    assert decoded["x"].dtype == np.float32 and decoded["x"].shape == (3, 4)
    np.testing.assert_array_equal(decoded["x"], array)
