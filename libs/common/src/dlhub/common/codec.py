"""The one place that speaks msgpack.

Wire frame: one version byte followed by a msgpack-encoded, type-tagged ``Message``. The codec enforces the
size limit on both sides, so an oversize message is refused before it is sent and dropped when received.

User values (inputs, outputs, parameters) are encoded separately into ``msgspec.Raw`` so the broker can
forward them untouched. NumPy arrays travel as a msgpack extension (dtype, shape, raw buffer) instead of
nested lists; NumPy is imported only when such a value is met.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, TypeVar, cast

import msgspec

from dlhub.common.errors import InvalidMessage, MessageTooLarge
from dlhub.common.messages import AnyMessage, Message

WIRE_VERSION: Final = 1
DEFAULT_MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
EXT_NDARRAY: Final = 1


def _ndarray_to_ext(obj: Any) -> msgspec.msgpack.Ext:
    import numpy as np

    # ascontiguousarray alone would turn a 0-d array into a 1-d one.
    arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
    if arr.dtype.hasobject:
        raise TypeError("object arrays cannot be encoded; convert to a numeric or string dtype")
    header = msgspec.msgpack.encode((arr.dtype.str, list(arr.shape)))
    try:
        data: Any = memoryview(cast(Any, arr)).cast("B")
    except (TypeError, ValueError):  # dtypes without a buffer format (datetime64, ...)
        data = arr.tobytes()
    # One allocation and one copy: concatenating a fresh tobytes() copy costs a page fault per 4 KiB.
    return msgspec.msgpack.Ext(EXT_NDARRAY, b"".join((len(header).to_bytes(4, "little"), header, data)))


def _enc_hook(obj: Any) -> Any:
    module = type(obj).__module__
    if module == "numpy":
        if type(obj).__name__ == "ndarray":
            return _ndarray_to_ext(obj)
        if hasattr(obj, "item"):
            return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, complex):
        return {"real": obj.real, "imag": obj.imag}
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__name__}")


def value_enc_hook(obj: Any) -> Any:
    """The encoding hook for user values (NumPy arrays as the extension type), for other msgpack encoders
    that must agree with this codec, such as the memo's canonical key encoder."""
    return _enc_hook(obj)


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != EXT_NDARRAY:
        raise InvalidMessage(f"unknown msgpack extension type {code}")
    import numpy as np

    header_len = int.from_bytes(data[:4], "little")
    dtype, shape = msgspec.msgpack.decode(data[4 : 4 + header_len])
    return np.frombuffer(data[4 + header_len :], dtype=np.dtype(dtype)).reshape(shape).copy()


def _json_enc_hook(obj: Any) -> Any:
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, complex):
        return {"real": obj.real, "imag": obj.imag}
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    return str(obj)


class Codec:
    """Encode and decode bus frames and user values, enforcing ``max_message_bytes``."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._decoder: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(AnyMessage)
        self._value_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ext_hook=_ext_hook)
        self._prefix = bytes([WIRE_VERSION])

    def encode(self, message: Message) -> bytearray:
        # Encoded after the version byte in place: no second copy of a large payload to prepend it.
        frame = bytearray(self._prefix)
        try:
            self._encoder.encode_into(message, frame, 1)
        except RecursionError:
            raise InvalidMessage("message nests too deeply to encode") from None
        if len(frame) > self.max_message_bytes:
            raise MessageTooLarge(
                f"message of {len(frame)} bytes exceeds the limit of {self.max_message_bytes} bytes"
            )
        return frame

    def decode(self, frame: bytes | bytearray | memoryview) -> AnyMessage:
        if len(frame) > self.max_message_bytes:
            raise MessageTooLarge(f"frame of {len(frame)} bytes exceeds {self.max_message_bytes} bytes")
        if len(frame) < 2:
            raise InvalidMessage("empty frame")
        if frame[0] != WIRE_VERSION:
            raise InvalidMessage(f"unsupported wire version {frame[0]} (expected {WIRE_VERSION})")
        try:
            return self._decoder.decode(memoryview(frame)[1:])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidMessage(f"undecodable message: {exc}") from exc
        except RecursionError:  # msgspec's recursion guard: a hostile or buggy peer, never a crash
            raise InvalidMessage("undecodable message: nested too deeply") from None

    def encode_value(self, value: Any) -> msgspec.Raw:
        """Encode a user value (JSON-like data, NumPy arrays) for a ``Raw`` field."""
        try:
            return msgspec.Raw(self._encoder.encode(value))
        except (TypeError, NotImplementedError, OverflowError) as exc:
            raise InvalidMessage(f"value cannot be encoded: {exc}") from exc
        except RecursionError:
            raise InvalidMessage("value cannot be encoded: nested too deeply") from None

    def decode_value(self, raw: msgspec.Raw | bytes) -> Any:
        try:
            return self._value_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidMessage(f"undecodable value: {exc}") from exc
        except RecursionError:
            raise InvalidMessage("undecodable value: nested too deeply") from None


T = TypeVar("T")
_body_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def decode_body(data: bytes, type_: type[T]) -> T:
    """Decode an ``application/msgpack`` HTTP body into ``type_`` (NumPy arrays from the extension type).

    Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` like ``msgspec.json.decode`` does, so the
    caller reports both body formats the same way.
    """
    return msgspec.msgpack.decode(data, type=type_, ext_hook=_ext_hook)


def encode_body(value: Any) -> bytes:
    """Encode an ``application/msgpack`` HTTP body; ``msgspec.Raw`` parts must already be msgpack."""
    return _body_encoder.encode(value)


def to_json(value: Any) -> bytes:
    """Serialise a decoded user value for an HTTP response (NumPy arrays become nested lists)."""
    return msgspec.json.encode(value, enc_hook=_json_enc_hook)


def from_json(data: bytes | str) -> Any:
    return msgspec.json.decode(data)
