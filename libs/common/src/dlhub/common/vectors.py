"""Test vectors: example inputs with expected outputs that a version must reproduce, and how an output is
compared with the expected one.

A publisher lists them in ``dlhub.test_vectors`` (each ``{"method": "run", "inputs", "parameters"?,
"expected", "tolerance"?: {"rel", "abs"}}``; ``dlhub.test_tolerance`` is the default tolerance). The
registry runs them on a worker after each build and on ``POST .../verify`` (``dlhub.registry.vectors``);
``dlhub test`` runs them on the publisher's machine before publishing. Both read the vectors with
``declared_vectors`` and compare with ``compare``, so a vector passes locally exactly when it passes served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

DEFAULT_REL_TOL: Final = 1e-9
DEFAULT_ABS_TOL: Final = 0.0
MAX_SHOWN_CHARS: Final = 120
NO_VECTORS_NOTE: Final = "no test vectors"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``math.isclose`` tolerances for numbers (defaults: those of ``math.isclose``)."""

    rel: float = DEFAULT_REL_TOL
    abs: float = DEFAULT_ABS_TOL

    def describe(self) -> str:
        return f"rel {self.rel:g}, abs {self.abs:g}"

    @staticmethod
    def parse(value: Any, default: Tolerance | None = None) -> Tolerance:
        """``{"rel"?, "abs"?}`` over ``default``; anything else is ``default`` (the schema checks it)."""
        base = default or Tolerance()
        if not isinstance(value, Mapping):
            return base
        rel = value.get("rel", base.rel)
        abs_ = value.get("abs", base.abs)
        return Tolerance(rel=float(rel), abs=float(abs_))


@dataclass(frozen=True, slots=True)
class Vector:
    index: int
    method: str
    inputs: Any
    parameters: dict[str, Any]
    expected: Any
    tolerance: Tolerance


@dataclass(frozen=True, slots=True)
class VectorOutcome:
    index: int
    passed: bool
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    tolerance: Tolerance = Tolerance()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "passed": self.passed}
        if self.message:
            out["message"] = self.message
        out["timings"] = self.timings
        return out


# -- comparison ----------------------------------------------------------------------------------------------


def shorten(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """A JSON-ish rendering of ``value`` cut to ``limit`` characters."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _numbers_close(expected: float, actual: float, tolerance: Tolerance) -> bool:
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected):
        return math.isnan(actual)  # NaN matches NaN only
    return math.isclose(expected, actual, rel_tol=tolerance.rel, abs_tol=tolerance.abs)


def compare(
    expected: Any, actual: Any, tolerance: Tolerance | None = None, path: str = "output"
) -> str | None:
    """Return None when ``actual`` matches ``expected``, else a message naming the first differing path.

    Dicts match by keys, lists and tuples elementwise (so nested ndarray lists too), numbers within
    ``tolerance`` (``math.isclose``; ints and floats compare numerically, booleans are never numbers),
    booleans, strings and null exactly. Other values (from unit tests) compare with ``==``.
    """
    tol = tolerance or Tolerance()
    expected_kind, actual_kind = _kind(expected), _kind(actual)
    if expected_kind != actual_kind:
        return f"{path}: expected {expected_kind} {shorten(expected)}, got {actual_kind} {shorten(actual)}"
    if expected_kind == "number":
        if _numbers_close(expected, actual, tol):
            return None
        return f"{path}: expected {shorten(expected)}, got {shorten(actual)} ({tol.describe()})"
    if expected_kind == "list":
        if len(expected) != len(actual):
            return (
                f"{path}: expected {len(expected)} items {shorten(expected)}, "
                f"got {len(actual)} {shorten(actual)}"
            )
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = compare(e, a, tol, f"{path}[{i}]")
            if problem is not None:
                return problem
        return None
    if expected_kind == "object":
        missing = [k for k in expected if k not in actual]
        if missing:
            return f"{path}: missing key {shorten(missing[0])}"
        extra = [k for k in actual if k not in expected]
        if extra:
            return f"{path}: unexpected key {shorten(extra[0])}"
        for key in expected:
            problem = compare(expected[key], actual[key], tol, f"{path}[{shorten(key)}]")
            if problem is not None:
                return problem
        return None
    if expected == actual:
        return None
    return f"{path}: expected {shorten(expected)}, got {shorten(actual)}"


# -- the vectors of a document ------------------------------------------------------------------------------


def declared_vectors(metadata: Mapping[str, Any]) -> list[Vector]:
    """The test vectors declared in a (validated) publication document, in order."""
    dlhub = metadata.get("dlhub") or {}
    raw = dlhub.get("test_vectors") or []
    default = Tolerance.parse(dlhub.get("test_tolerance"))
    return [
        Vector(
            index=i,
            method=str(item.get("method") or "run"),
            inputs=item.get("inputs"),
            parameters=dict(item.get("parameters") or {}),
            expected=item.get("expected"),
            tolerance=Tolerance.parse(item.get("tolerance"), default),
        )
        for i, item in enumerate(raw)
        if isinstance(item, Mapping)
    ]


def judge(vector: Vector, actual: Any, timings: dict[str, float]) -> VectorOutcome:
    """The outcome of ``vector`` whose run produced ``actual`` (the output as JSON decodes it)."""
    problem = compare(vector.expected, actual, vector.tolerance)
    if problem is None:
        return VectorOutcome(vector.index, True, "", timings, vector.tolerance)
    return VectorOutcome(vector.index, False, problem, timings, vector.tolerance)
