"""The run path's argument-type checks: ``dlhub.common.argtypes`` validators, compiled once per (servable
version, method) and cached, so a run pays one dictionary look-up before its inputs are checked.

The type grammar, the validators and the publish-time checks of descriptions live in
``dlhub.common.argtypes`` (shared with the client's local runs); they are re-exported here for the
registry's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from dlhub.common.argtypes import (
    MAX_TYPE_DEPTH,
    Check,
    check_method_types,
    compile_type,
    method_input_type,
    validate,
)

if TYPE_CHECKING:
    from dlhub.registry.store import VersionRecord

__all__ = [
    "MAX_TYPE_DEPTH",
    "UNCHECKED",
    "check_method_types",
    "check_run_inputs",
    "compile_type",
    "method_input_check",
    "validate",
]

MAX_CACHED: Final = 4096

UNCHECKED: Final[Any] = object()
"""Marker for "no inputs to check" (pipeline steps after the first get the previous step's output)."""

_cache: dict[tuple[str, str, int, int, str], Check | None] = {}


def method_input_check(record: VersionRecord, method: str) -> Check | None:
    """The compiled validator of ``method``'s declared input for this version (cached)."""
    key = (record.owner, record.name, record.version, record.published_at_ms, method)
    try:
        return _cache[key]
    except KeyError:
        pass
    check = compile_type(method_input_type(record.metadata, method))
    if len(_cache) >= MAX_CACHED:
        _cache.clear()
    _cache[key] = check
    return check


def check_run_inputs(record: VersionRecord, method: str, inputs: Any) -> None:
    """Validate a run's ``inputs`` against the declared input type of ``record``'s ``method``."""
    check = method_input_check(record, method)
    if check is not None:
        validate(check, inputs, "inputs")
