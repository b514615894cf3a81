"""DLHub argument types: compile a method's ``input`` description into a validator run before queueing.

One implementation for every place that checks inputs: the registry's run path (``dlhub.registry.argtypes``
caches the compiled validators per version), the publish-time checks of descriptions, and local runs of the
client's toolbox (``dlhub run --local``, ``dlhub test``), so a wrong input fails the same way everywhere.

A type description is ``{"type": T, ...}`` (see docs/api.md and the DLHub publication document): scalars
``boolean``, ``integer``, ``float``, ``complex``, ``number``, ``string``, ``datetime``, ``timedelta``;
containers ``ndarray`` (``shape``, ``item_type``), ``list`` (``item_type``), ``tuple`` (``element_types``),
``dict`` (``properties``); ``file`` and ``python object`` (anything).

Values are what the JSON decoder produces (``bool``, ``int``, ``float``, ``str``, ``list``, ``dict``,
``None``), so checks compare exact types: a boolean is never a number, an integer is a valid float.

Validation stops at the first mismatch and raises ``ValidationFailed`` whose field is the path of the
offending value (``inputs[3]``, ``inputs.image.url``) and whose message starts with that path
(``inputs[3]: expected 4 floats, got 3``). Paths are only built on failure, so a valid input costs one
type test per value. ``python object`` inputs (what plain Python functions declare) compile to no validator
at all: the run path then pays one cached dictionary look-up.

The registry compiles descriptions once per (servable version, method) and caches them. Unknown type names
accept any value (metadata from a newer SDK must not block publishing or running) and are logged once per
name.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from itertools import chain
from typing import Any, Final

from dlhub.common.errors import ValidationFailed
from dlhub.common.filerefs import key_part, type_name

MAX_TYPE_DEPTH: Final = 32
"""Deepest nesting of type descriptions (item_type / element_types / properties) that is honoured."""
MAX_DIMENSIONS: Final = 32
"""Most dimensions an ndarray ``shape`` may declare."""

Check = Callable[[Any], None]
"""A compiled validator: returns when the value matches, raises ``Mismatch`` otherwise."""


class Mismatch(Exception):
    """Internal: a value does not match; ``parts`` is the path below the root, innermost part first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.parts: list[str] = []

    def under(self, part: str) -> Mismatch:
        self.parts.append(part)
        return self

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.parts))


_JSON_NAMES: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "list",
    dict: "object",
    type(None): "null",
}


def json_type_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


# -- scalars -----------------------------------------------------------------------------------------------

_NUMBER_TYPES: Final = frozenset({int, float})
_LIST_TYPE: Final = frozenset({list})
_ISO_DURATION = re.compile(
    r"-?P(?=\d|T\d)(?:\d+(?:[.,]\d+)?Y)?(?:\d+(?:[.,]\d+)?M)?(?:\d+(?:[.,]\d+)?W)?(?:\d+(?:[.,]\d+)?D)?"
    r"(?:T(?=\d)(?:\d+(?:[.,]\d+)?H)?(?:\d+(?:[.,]\d+)?M)?(?:\d+(?:[.,]\d+)?S)?)?"
)


def _is_finite_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES


def _is_complex(value: Any) -> bool:
    kind = type(value)
    if kind in _NUMBER_TYPES:
        return True
    if kind is list:
        return len(value) == 2 and type(value[0]) in _NUMBER_TYPES and type(value[1]) in _NUMBER_TYPES
    if kind is dict:
        return type(value.get("real")) in _NUMBER_TYPES and type(value.get("imag")) in _NUMBER_TYPES
    return False


def _is_datetime(value: Any) -> bool:
    if type(value) is not str or not 8 <= len(value) <= 64:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_timedelta(value: Any) -> bool:
    kind = type(value)
    if kind in _NUMBER_TYPES:
        return not (kind is float and math.isnan(value))
    return kind is str and len(value) <= 64 and _ISO_DURATION.fullmatch(value) is not None


_SCALARS: Final[dict[str, tuple[Callable[[Any], bool], str, str]]] = {
    # name: (predicate, expected (singular), expected (plural, for "expected 4 floats"))
    "boolean": (lambda v: type(v) is bool, "boolean", "booleans"),
    "integer": (lambda v: type(v) is int, "integer", "integers"),
    "float": (_is_finite_number, "float", "floats"),
    "number": (_is_finite_number, "number", "numbers"),
    "complex": (_is_complex, "complex number ({real, imag} or [re, im])", "complex numbers"),
    "string": (lambda v: type(v) is str, "string", "strings"),
    "datetime": (_is_datetime, "ISO 8601 datetime string", "datetimes"),
    "timedelta": (_is_timedelta, "timedelta (seconds or ISO 8601 duration)", "timedeltas"),
}
# Fast membership tests for the scalar types that are plain JSON types (used in ndarray rows).
_EXACT_TYPES: Final[dict[str, frozenset[type]]] = {
    "boolean": frozenset({bool}),
    "integer": frozenset({int}),
    "float": _NUMBER_TYPES,
    "number": _NUMBER_TYPES,
    "string": frozenset({str}),
}
# NumPy dtype kinds an array may have for each declared item type (ints are acceptable numbers).
_ARRAY_KINDS: Final[dict[str, str]] = {
    "boolean": "b",
    "integer": "iu",
    "float": "fiu",
    "number": "fiu",
    "complex": "cfiu",
    "string": "US",
}
_ANY_TYPES: Final = frozenset({"python object", "object", "any"})
_warned_unknown: set[str] = set()


def _scalar_check(name: str) -> Check:
    predicate, expected, _ = _SCALARS[name]

    def check(value: Any) -> None:
        if not predicate(value):
            raise Mismatch(f"expected {expected}, got {json_type_name(value)}")

    return check


# -- containers --------------------------------------------------------------------------------------------


def _list_check(item: Check | None) -> Check:
    def check(value: Any) -> None:
        if type(value) is not list:
            raise Mismatch(f"expected list, got {json_type_name(value)}")
        if item is not None:
            for index, element in enumerate(value):
                try:
                    item(element)
                except Mismatch as exc:
                    raise exc.under(f"[{index}]") from None

    return check


def _tuple_check(elements: list[Check | None]) -> Check:
    size = len(elements)

    def check(value: Any) -> None:
        if type(value) is not list:
            raise Mismatch(f"expected tuple (a list of {size} elements), got {json_type_name(value)}")
        if len(value) != size:
            raise Mismatch(f"expected tuple of {size} elements, got {len(value)}")
        for index, (element, element_check) in enumerate(zip(value, elements, strict=True)):
            if element_check is not None:
                try:
                    element_check(element)
                except Mismatch as exc:
                    raise exc.under(f"[{index}]") from None

    return check


def _dict_check(properties: dict[str, Check | None]) -> Check:
    def check(value: Any) -> None:
        if type(value) is not dict:
            raise Mismatch(f"expected dict, got {json_type_name(value)}")
        for key, property_check in properties.items():
            if key not in value:
                raise Mismatch(f"missing key {key!r}")
            if property_check is not None:
                try:
                    property_check(value[key])
                except Mismatch as exc:
                    raise exc.under(key_part(key)) from None

    return check


_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)


def _check_file(value: Any) -> None:
    if type(value) is not dict:
        got = json_type_name(value)
        raise Mismatch(f'expected file ({{"url": "http(s)://..."}} or {{"blob": id}}), got {got}')
    if "url" in value:
        url = value["url"]
        if type(url) is not str or _URL.fullmatch(url) is None:
            raise Mismatch("expected an http(s) URL").under(".url")
        headers = value.get("headers")
        if headers is not None:
            if type(headers) is not dict:
                raise Mismatch(f"expected object of strings, got {json_type_name(headers)}").under(".headers")
            for key, header in headers.items():
                if type(header) is not str:
                    raise (
                        Mismatch(f"expected string, got {json_type_name(header)}")
                        .under(key_part(key))
                        .under(".headers")
                    )
        return
    if "blob" in value:
        if type(value["blob"]) is not str or not value["blob"]:
            raise Mismatch("expected a non-empty blob id string").under(".blob")
        return
    raise Mismatch('expected file: an object with "url" or "blob"')


# -- ndarray -----------------------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class _NDArray:
    """Nested lists of ``shape`` (``None`` = any size) whose innermost items match ``item``."""

    def __init__(self, shape: list[int | None], item_name: str | None, item: Check | None) -> None:
        self.shape = shape
        self.ndim = len(shape)
        self.item = item
        self.exact = _EXACT_TYPES.get(item_name or "")
        self.singular_name = item_name
        # Items that can never be lists: deeper nesting than declared is a dimension error.
        self.scalar_items = item_name in _SCALARS and item_name != "complex"
        plural = _SCALARS[item_name][2] if item_name in _SCALARS else "items"
        self.leaf_noun = plural
        self.singular = _SCALARS[item_name][1] if item_name in _SCALARS else "item"

    def __call__(self, value: Any) -> None:
        if type(value).__name__ == "ndarray" and type(value).__module__ == "numpy":
            self._check_array(value)  # a msgpack request body: checked by dtype and shape, not by item
            return
        if self.ndim == 0:
            if self.item is not None:
                self.item(value)
            return
        if type(value) is not list:
            raise Mismatch(
                f"expected {self.ndim}-dimensional array (nested lists), got {json_type_name(value)}"
            )
        self._check_depth(value)
        if not self._fast_ok(value):
            self._check(value, 0)  # finds and names the first mismatch

    def _check_array(self, array: Any) -> None:
        if array.ndim != self.ndim:
            raise Mismatch(f"expected {_plural(self.ndim, 'dimension')}, got {array.ndim}")
        for axis, (size, actual) in enumerate(zip(self.shape, array.shape, strict=True)):
            if size is not None and size != actual:
                noun = self.leaf_noun if axis == self.ndim - 1 else "lists"
                raise Mismatch(f"expected {size} {noun} along axis {axis}, got {actual}")
        kinds = _ARRAY_KINDS.get(self.singular_name or "")
        if kinds is not None and array.dtype.kind not in kinds:
            raise Mismatch(f"expected an array of {self.leaf_noun}, got dtype {array.dtype.str}")

    def _fast_ok(self, value: list[Any]) -> bool:
        """Check a whole array level by level with C-speed set operations; False: look closer."""
        level: list[Any] = [value]
        for axis, size in enumerate(self.shape):
            if size is not None and not {size}.issuperset(map(len, level)):
                return False
            children = list(chain.from_iterable(level))
            if axis < self.ndim - 1:
                if not _LIST_TYPE.issuperset(map(type, children)):
                    return False
                level = children
                continue
            if self.exact is not None:
                return self.exact.issuperset(map(type, children))
            if self.item is not None:
                try:
                    for element in children:
                        self.item(element)
                except Mismatch:
                    return False
        return True

    def _check_depth(self, value: Any) -> None:
        """Compare the nesting depth along the first elements with the declared dimensions."""
        depth = 0
        probe = value
        limit = self.ndim + MAX_DIMENSIONS if self.scalar_items else self.ndim
        while type(probe) is list and depth < limit:
            depth += 1
            if not probe:
                if depth <= self.ndim:
                    return  # an empty axis: nothing deeper to compare
                break
            probe = probe[0]
        if depth != self.ndim:
            raise Mismatch(f"expected {_plural(self.ndim, 'dimension')}, got {depth}")

    def _check(self, value: list[Any], axis: int) -> None:
        size = self.shape[axis]
        last = axis == self.ndim - 1
        if size is not None and len(value) != size:
            noun = self.leaf_noun if last else "lists"
            if size == 1:
                noun = noun[:-1]
            raise Mismatch(f"expected {size} {noun}, got {len(value)}")
        if last:
            self._check_items(value)
            return
        for index, row in enumerate(value):
            if type(row) is not list:
                raise Mismatch(
                    f"expected list (axis {axis + 1} of {self.ndim}), got {json_type_name(row)}"
                ).under(f"[{index}]")
            try:
                self._check(row, axis + 1)
            except Mismatch as exc:
                raise exc.under(f"[{index}]") from None

    def _check_items(self, row: list[Any]) -> None:
        exact = self.exact
        if exact is not None:
            for index, element in enumerate(row):
                if type(element) not in exact:
                    raise Mismatch(f"expected {self.singular}, got {json_type_name(element)}").under(
                        f"[{index}]"
                    )
            return
        item = self.item
        if item is not None:
            for index, element in enumerate(row):
                try:
                    item(element)
                except Mismatch as exc:
                    raise exc.under(f"[{index}]") from None


# -- compiling ---------------------------------------------------------------------------------------------


def compile_type(description: Any, *, _depth: int = 0) -> Check | None:
    """Compile a type description; ``None`` means any value is accepted (nothing to check).

    Malformed parts of a description (which ``check_description`` rejects at publish time) are treated as
    unconstrained, so a stored document can never make a run fail because of its own metadata.
    """
    name = type_name(description)
    if name is None or _depth > MAX_TYPE_DEPTH or name in _ANY_TYPES:
        return None
    assert isinstance(description, dict)
    if name in _SCALARS:
        return _scalar_check(name)
    if name == "ndarray":
        shape = description.get("shape")
        if not valid_shape(shape):
            return _list_check(None) if shape is not None else None
        item_description = description.get("item_type")
        item = compile_type(item_description, _depth=_depth + 1)
        return _NDArray(list(shape or ()), type_name(item_description) if item is not None else None, item)
    if name == "list":
        return _list_check(compile_type(description.get("item_type"), _depth=_depth + 1))
    if name == "tuple":
        elements = description.get("element_types")
        if not isinstance(elements, list):
            return _list_check(None)
        return _tuple_check([compile_type(e, _depth=_depth + 1) for e in elements])
    if name == "dict":
        properties = description.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        return _dict_check({str(k): compile_type(v, _depth=_depth + 1) for k, v in properties.items()})
    if name == "file":
        return _check_file
    if name not in _warned_unknown:
        _warned_unknown.add(name)
        _warn_unknown(name)
    return None


def _warn_unknown(name: str) -> None:
    # structlog is a service dependency; the SDK (dlhub-client) validates local runs without it.
    try:
        from dlhub.common.logging import get_logger
    except ImportError:
        logging.getLogger(__name__).warning("unknown argument type %r accepts any value", name)
        return
    get_logger(__name__).warning("unknown argument type accepts any value", argument_type=name)


def valid_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMENSIONS
        and all(s is None or (type(s) is int and s >= 0) for s in shape)
    )


def validate(check: Check | None, value: Any, root: str = "inputs") -> None:
    """Run a compiled validator; raise ``ValidationFailed`` naming the path below ``root``."""
    if check is None:
        return
    try:
        check(value)
    except Mismatch as exc:
        field = exc.path(root)
        raise ValidationFailed(f"{field}: {exc.message}", field=field) from None
    except RecursionError:
        raise ValidationFailed(f"{root}: nested too deeply to validate", field=root) from None


# -- a method's declared input ---------------------------------------------------------------------------


def method_input_type(metadata: Mapping[str, Any], method: str) -> Any:
    """The ``input`` description of ``method`` in a publication document (``None`` when it declares none)."""
    methods = (metadata.get("servable") or {}).get("methods") or {}
    spec = methods.get(method) if isinstance(methods, dict) else None
    return spec.get("input") if isinstance(spec, dict) else None


def check_inputs(metadata: Mapping[str, Any], method: str, inputs: Any) -> None:
    """Validate ``inputs`` against ``method``'s declared input type, compiling it afresh (the registry's run
    path caches the compiled validator per version: ``dlhub.registry.argtypes.check_run_inputs``)."""
    validate(compile_type(method_input_type(metadata, method)), inputs, "inputs")


# -- publish time ------------------------------------------------------------------------------------------


def description_problems(description: Any, field: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Yield ``(field, message)`` for what the JSON schema cannot express about a type description."""
    if depth > MAX_TYPE_DEPTH:
        yield field, f"{field}: type descriptions nest at most {MAX_TYPE_DEPTH} levels deep"
        return
    if not isinstance(description, dict):
        return  # the schema reports it
    name = type_name(description)
    if name == "ndarray":
        shape = description.get("shape")
        if shape is not None and not valid_shape(shape):
            yield (
                f"{field}.shape",
                f"{field}.shape: must be a list of at most {MAX_DIMENSIONS} non-negative integers or null",
            )
    item_type = description.get("item_type")
    if item_type is not None:
        yield from description_problems(item_type, f"{field}.item_type", depth + 1)
    elements = description.get("element_types")
    if isinstance(elements, list):
        for index, element in enumerate(elements):
            yield from description_problems(element, f"{field}.element_types[{index}]", depth + 1)
    properties = description.get("properties")
    if isinstance(properties, dict):
        for key, value in properties.items():
            yield from description_problems(value, f"{field}.properties{key_part(str(key))}", depth + 1)


def check_method_types(document: dict[str, Any]) -> None:
    """Reject malformed input/output type descriptions of a publication, naming the field."""
    methods = (document.get("servable") or {}).get("methods")
    if not isinstance(methods, dict):
        return
    for method, spec in methods.items():
        if not isinstance(spec, dict):
            continue
        for role in ("input", "output"):
            if role in spec:
                for field, message in description_problems(spec[role], f"servable.methods.{method}.{role}"):
                    raise ValidationFailed(message, field=field)
