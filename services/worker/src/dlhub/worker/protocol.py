"""The worker <-> executor-process protocol: length-prefixed msgpack frames over the child's stdin/stdout.

Each frame is a 4-byte little-endian length followed by one msgpack-encoded, type-tagged struct. User values
(inputs, parameters, outputs) stay ``msgspec.Raw``: the worker forwards the bytes it got from the broker and
never decodes them; only the executor process decodes them with ``Codec.decode_value``. Nothing is pickled.
"""

from __future__ import annotations

import signal
from typing import Final

import msgspec

from dlhub.common.errors import InvalidMessage, MessageTooLarge
from dlhub.common.messages import EMPTY_MAP, NIL, ErrorInfo

HEADER_BYTES: Final = 4
RECALL_SIGNAL: Final = signal.SIGUSR1
"""Worker -> executor process, when the worker drains: answer every request not started yet ``not_started``
(``ExecReply`` with that error code) instead of running it."""


class Frame(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of the frames exchanged with an executor process."""


class Ready(Frame, tag="ready"):
    """Executor -> worker, once at start-up: the process is up and waits for requests."""

    pid: int


class ExecRequest(Frame, tag="exec"):
    """Worker -> executor: call ``method`` of the servable stored in ``version_dir``."""

    seq: int
    task_id: str
    servable: str
    version_dir: str
    method: str
    inputs: msgspec.Raw = NIL
    parameters: msgspec.Raw = EMPTY_MAP
    deadline_unix_s: float = 0.0
    """When the worker stops waiting (0: never). Requests queue in the pipe behind the running one; one whose
    deadline has passed by the time the executor reads it is answered as timed out without being run."""


class ExecReply(Frame, tag="reply"):
    """Executor -> worker: the outcome of the request with the same ``seq``.

    ``inference_ms`` covers the model call only; ``load_ms`` is non-zero when this request loaded the servable
    (a cold start) and ``loads`` counts the servable loads this process has made so far.
    """

    seq: int
    ok: bool
    output: msgspec.Raw = NIL
    error: ErrorInfo | None = None
    inference_ms: float = 0.0
    load_ms: float = 0.0
    loads: int = 0
    pid: int = 0
    queue_ms: float = 0.0
    """Set by the worker's pool, never sent: how long the request waited before its process started it (for
    a free process, then in the pipe behind the requests written ahead of it)."""


ToExecutor = ExecRequest
FromExecutor = Ready | ExecReply

_encoder = msgspec.msgpack.Encoder()
request_decoder: msgspec.msgpack.Decoder[ToExecutor] = msgspec.msgpack.Decoder(ToExecutor)
reply_decoder: msgspec.msgpack.Decoder[FromExecutor] = msgspec.msgpack.Decoder(FromExecutor)


def encode_frame(frame: Frame, *, max_bytes: int) -> bytearray:
    """Return ``frame`` as header + body, refusing bodies over ``max_bytes``.

    The body is encoded straight after the header's place, so a large payload is copied once, not twice.
    """
    buffer = bytearray(HEADER_BYTES)
    _encoder.encode_into(frame, buffer, HEADER_BYTES)
    length = len(buffer) - HEADER_BYTES
    if length > max_bytes:
        raise MessageTooLarge(f"message of {length} bytes exceeds the limit of {max_bytes} bytes")
    buffer[:HEADER_BYTES] = length.to_bytes(HEADER_BYTES, "little")
    return buffer


def body_length(header: bytes, *, max_bytes: int) -> int:
    """Parse a frame header; a length over ``max_bytes`` means the stream is corrupt or hostile."""
    length = int.from_bytes(header, "little")
    if length > max_bytes:
        raise InvalidMessage(f"frame of {length} bytes exceeds the limit of {max_bytes} bytes")
    return length


def decode_reply(body: bytes) -> FromExecutor:
    try:
        return reply_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidMessage(f"undecodable executor frame: {exc}") from exc
    except RecursionError:  # msgspec's recursion guard (a value nested too deeply)
        raise InvalidMessage("undecodable executor frame: nested too deeply") from None


def decode_request(body: bytes) -> ToExecutor:
    try:
        return request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidMessage(f"undecodable worker frame: {exc}") from exc
    except RecursionError:  # msgspec's recursion guard (a value nested too deeply)
        raise InvalidMessage("undecodable worker frame: nested too deeply") from None
