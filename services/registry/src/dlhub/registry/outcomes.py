"""How a worker's Result is shown to callers: the error and timings shapes shared by synchronous runs,
task records, builds and test-vector reports, and the JSON form of a msgpack output.

The store keeps errors and timings as plain dicts (``error_dict``, ``timings_dict``); responses carry them
as the ``TaskError`` and ``Timings`` structs, which is also what the OpenAPI document is generated from.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from dlhub.common import messages
from dlhub.common.codec import Codec, to_json


class TaskError(msgspec.Struct, kw_only=True):
    """Why a run or build failed; ``type`` is the stable DLHub error code."""

    type: str
    message: str
    exception_type: str | UnsetType = UNSET
    traceback: str | UnsetType = UNSET
    step: int | UnsetType = UNSET
    """Pipelines: the index of the failing step."""
    topic: str | UnsetType = UNSET


class Timings(msgspec.Struct, kw_only=True):
    inference_ms: float
    invocation_ms: float
    queue_ms: float
    request_ms: float


def error_dict(error: messages.ErrorInfo | None) -> dict[str, Any]:
    """The JSON shape of a task failure (``error.type`` is the DLHub error code)."""
    if error is None:
        return {"type": "dlhub_error", "message": "the task failed without an error description"}
    out: dict[str, Any] = {
        "type": error.code,
        "message": error.message,
        "exception_type": error.exception_type,
        "traceback": error.traceback,
    }
    if error.step >= 0:
        out["step"] = error.step
    if error.topic:
        out["topic"] = error.topic
    return out


def timings_dict(timings: messages.Timings, request_ms: float) -> dict[str, float]:
    return {
        "inference_ms": timings.inference_ms,
        "invocation_ms": timings.invocation_ms,
        "queue_ms": timings.queue_ms,
        "request_ms": request_ms,
    }


def task_error(error: dict[str, Any]) -> TaskError:
    return msgspec.convert(error, TaskError)


def timings_of(timings: dict[str, float]) -> Timings:
    return msgspec.convert(timings, Timings)


def output_json(codec: Codec, result: messages.Result) -> bytes:
    """Convert a Result's msgpack output to JSON bytes (NumPy arrays become nested lists)."""
    return to_json(codec.decode_value(result.output))
