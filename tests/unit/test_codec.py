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


def test_values_nested_too_deeply_are_invalid_messages_not_recursion_errors() -> None:
    codec = Codec()
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidMessage, match="deep"):
        codec.encode_value(deep)
    with pytest.raises(InvalidMessage, match="deep"):
        codec.decode_value(b"\x91" * 100_000 + b"\x01")
    with pytest.raises(InvalidMessage):
        codec.decode(bytes([WIRE_VERSION]) + b"\x91" * 100_000 + b"\x01")


def test_nesting_scans_agree_with_the_decoders_and_skip_strings_and_arrays() -> None:
    from dlhub.common.codec import encode_body
    from dlhub.common.nesting import json_too_deep, msgpack_too_deep

    for depth in (2, 10, 63, 64, 65, 500):  # levels, counting the innermost {"k": []} as two
        value: object = {"k": []}
        for level in range(depth - 2):
            value = [value, "[[[[", 1.5] if level % 2 else {"a": value, "b": "{{"}
        as_json, as_msgpack = msgspec.json.encode(value), msgspec.msgpack.encode(value)
        expected = depth > 64
        assert json_too_deep(as_json, 64) is expected, depth
        assert msgpack_too_deep(as_msgpack, 64) is expected, depth
    assert not json_too_deep(b'{"s": "' + b"[" * 1000 + b'"}', 64)
    assert not json_too_deep(b"[" * 1000, 64)  # unbalanced: malformed, left to the decoder
    assert not msgpack_too_deep(encode_body({"x": np.zeros((64, 64, 3)), "rows": [[1.5] * 100] * 100}), 3)
    assert msgpack_too_deep(b"\xdc\x00\x01" * 65 + b"\x01", 64)
    assert not msgpack_too_deep(b"\xde\x00\x01\xa1k" * 64 + b"\x01", 64)
