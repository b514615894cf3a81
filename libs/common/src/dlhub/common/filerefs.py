"""Where a method's inputs hold DLHub ``file`` arguments, read from its declared input type.

The registry uses this to turn ``{"blob": id}`` references into signed URLs before queueing, the worker to
download every ``{"url": ...}`` reference and hand the model a local path instead (what the original DLHub
passed). The grammar is the DLHub argument-type grammar of ``dlhub.common.argtypes``: ``file``
anywhere below ``list`` (``item_type``), ``ndarray`` (``shape`` + ``item_type``), ``tuple``
(``element_types``) and ``dict`` (``properties``). Paths are spelled as argtypes spells them:
``inputs[2]``, ``inputs.image``, ``inputs['odd key']``.

Values that do not have the declared shape are left alone here: the registry validated them before
queueing, and a visitor decides what a malformed file reference means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

MAX_DEPTH: Final = 32

Visit = Callable[[str, Any], Any]
"""Called with the path and the value at a file position; returns the replacement value."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_part(key: str) -> str:
    return f".{key}" if _IDENTIFIER.fullmatch(key) else f"[{key!r}]"


def type_name(description: Any) -> str | None:
    """The lower-cased ``type`` of a DLHub argument-type description, if it has one."""
    if isinstance(description, dict):
        name = description.get("type")
        if isinstance(name, str):
            return name.strip().lower()
    return None


def _children(description: dict[str, Any], name: str) -> list[Any]:
    if name in ("list", "ndarray"):
        return [description.get("item_type")]
    if name == "tuple":
        elements = description.get("element_types")
        return elements if isinstance(elements, list) else []
    if name == "dict":
        properties = description.get("properties")
        return list(properties.values()) if isinstance(properties, dict) else []
    return []


def has_files(description: Any, depth: int = 0) -> bool:
    """Whether the type description declares a ``file`` anywhere (cheap: walks the description only)."""
    name = type_name(description)
    if name is None or depth > MAX_DEPTH:
        return False
    if name == "file":
        return True
    assert isinstance(description, dict)
    return any(has_files(child, depth + 1) for child in _children(description, name))


def map_files(description: Any, value: Any, visit: Visit, root: str = "inputs") -> Any:
    """A copy of ``value`` with each file position replaced by ``visit(path, value_there)``."""
    return _map(description, value, visit, root, 0)


def _map(description: Any, value: Any, visit: Visit, path: str, depth: int) -> Any:
    name = type_name(description)
    if name is None or depth > MAX_DEPTH:
        return value
    assert isinstance(description, dict)
    if name == "file":
        return visit(path, value)
    if not has_files(description, depth):
        return value
    if name == "list" and type(value) is list:
        item = description.get("item_type")
        return [_map(item, v, visit, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if name == "ndarray":
        shape = description.get("shape")
        dimensions = len(shape) if isinstance(shape, list) else 0
        return _map_array(description.get("item_type"), value, visit, path, dimensions, depth)
    if name == "tuple" and type(value) is list:
        elements = _children(description, name)
        return [
            _map(elements[i], v, visit, f"{path}[{i}]", depth + 1) if i < len(elements) else v
            for i, v in enumerate(value)
        ]
    if name == "dict" and type(value) is dict:
        properties = description.get("properties")
        assert isinstance(properties, dict)
        return {
            k: _map(properties.get(k), v, visit, path + key_part(str(k)), depth + 1) for k, v in value.items()
        }
    return value


def _map_array(item: Any, value: Any, visit: Visit, path: str, dimensions: int, depth: int) -> Any:
    if dimensions == 0:
        return _map(item, value, visit, path, depth + 1)
    if type(value) is not list:
        return value
    return [_map_array(item, v, visit, f"{path}[{i}]", dimensions - 1, depth) for i, v in enumerate(value)]
