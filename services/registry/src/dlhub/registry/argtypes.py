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
    valid_shape,
    validate,
)
from dlhub.common.filerefs import type_name
from dlhub.common.payloads import MethodTypes, TypeSummary

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


# -- search ------------------------------------------------------------------------------------------------

MAX_INDEXED_NAME_CHARS: Final = 256
"""Longer type names are not indexed (a search filter could not name them usefully anyway)."""
MAX_INDEXED_SIZE: Final = 2**63 - 1
"""Shapes with larger sizes are indexed without their shape (the wire and the indices hold 64-bit ints)."""


def _indexed_name(description: Any) -> str | None:
    name = type_name(description)
    return name if name and len(name) <= MAX_INDEXED_NAME_CHARS else None


def type_summary(description: Any) -> TypeSummary | None:
    """The search facets of a type description: its type, item-type chain and (ndarray) declared shape.

    The item-type chain follows ``item_type`` through lists and ndarrays (``list`` of ``ndarray`` of
    ``float``: ``["ndarray", "float"]``); tuples and dicts end it (their parts are not indexed).
    """
    name = _indexed_name(description)
    if name is None:
        return None
    assert isinstance(description, dict)
    items: list[str] = []
    inner: Any = description
    while type_name(inner) in ("list", "ndarray") and len(items) < MAX_TYPE_DEPTH:
        inner = inner.get("item_type")
        item = _indexed_name(inner)
        if item is None:
            break
        items.append(item)
    shape: Any = description.get("shape") if name == "ndarray" else None
    if not valid_shape(shape) or any(size is not None and size > MAX_INDEXED_SIZE for size in shape):
        shape = None
    return TypeSummary(type=name, item_types=items, shape=None if shape is None else list(shape))


def method_types(metadata: dict[str, Any]) -> list[MethodTypes]:
    """What each method of a publication accepts and returns, for the search index."""
    methods = (metadata.get("servable") or {}).get("methods")
    if not isinstance(methods, dict):
        return []
    found: list[MethodTypes] = []
    for method, spec in methods.items():
        if not isinstance(spec, dict):
            continue
        accepts, returns = type_summary(spec.get("input")), type_summary(spec.get("output"))
        if accepts is not None or returns is not None:
            found.append(MethodTypes(method=str(method), input=accepts, output=returns))
    return found
