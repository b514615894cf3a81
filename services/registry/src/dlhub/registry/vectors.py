"""Test vectors: example inputs with expected outputs that a version must reproduce.

A publisher lists them in ``dlhub.test_vectors`` (each ``{"method": "run", "inputs", "parameters"?,
"expected", "tolerance"?: {"rel", "abs"}}``; ``dlhub.test_tolerance`` is the default tolerance). Model files
are only ever loaded inside a worker, so after a successful build the registry sends every vector as a run to
the version's servable topic (exactly like ``POST .../run``, never through the memo), compares the outputs
with ``compare`` and only then marks the version ``ready``; a mismatch or a failed run makes it ``failed``
with a reason naming the vector. ``POST .../verify`` re-runs them later (``VectorRunner.verify``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import BrokerUnavailable, DLHubError, InvalidMessage, ValidationFailed
from dlhub.common.ids import servable_topic
from dlhub.common.logging import get_logger
from dlhub.common.messages import RouteStep, Timings
from dlhub.registry.argtypes import check_run_inputs
from dlhub.registry.outcomes import output_json, timings_dict
from dlhub.registry.ports import Bus
from dlhub.registry.store import VersionRecord

log = get_logger(__name__)

MAX_TEST_VECTORS = 100
DEFAULT_REL_TOL = 1e-9
DEFAULT_ABS_TOL = 0.0
MAX_SHOWN_CHARS = 120
VECTOR_CONCURRENCY = 8
NO_VECTORS_NOTE = "no test vectors"


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


# -- the vectors of a version --------------------------------------------------------------------------------


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


def check_test_vectors(document: Mapping[str, Any]) -> None:
    """Publish-time checks the schema cannot express: each vector's method is one the servable declares."""
    dlhub = document.get("dlhub") or {}
    raw = dlhub.get("test_vectors") or []
    if not raw:
        return
    methods = (document.get("servable") or {}).get("methods") or {}
    for i, item in enumerate(raw):
        method = str(item.get("method") or "run")
        if method not in methods:
            raise ValidationFailed(
                f"dlhub.test_vectors[{i}].method: the servable has no method {method!r}",
                field=f"dlhub.test_vectors[{i}].method",
            )


def failure_reason(record: VersionRecord, outcomes: Sequence[VectorOutcome]) -> str:
    """The ``status_reason`` of a version whose vectors did not all pass."""
    failed = [o for o in outcomes if not o.passed]
    first = failed[0]
    more = f"; {len(failed)} of {len(outcomes)} vectors failed" if len(failed) > 1 else ""
    tolerance = "" if "(rel " in first.message else f" (tolerance {first.tolerance.describe()})"
    return f"test vector {first.index} failed: {first.message}{tolerance}{more}"


class VectorRunner:
    """Send a version's test vectors to its servable topic and compare the outputs."""

    def __init__(self, *, settings: DLHubSettings, bus: Bus, codec: Codec) -> None:
        self._settings = settings
        self._bus = bus
        self._codec = codec

    async def run_all(self, record: VersionRecord) -> list[VectorOutcome]:
        """Run every vector of ``record`` (a few at a time); outcomes in vector order."""
        vectors = declared_vectors(record.metadata)
        gate = asyncio.Semaphore(VECTOR_CONCURRENCY)

        async def one(vector: Vector) -> VectorOutcome:
            async with gate:
                return await self.run_one(record, vector)

        return list(await asyncio.gather(*(one(v) for v in vectors)))

    async def run_one(self, record: VersionRecord, vector: Vector) -> VectorOutcome:
        """Run one vector; a failed run, a mismatch or a timeout is a failed outcome, never an exception
        (except ``BrokerUnavailable``)."""
        outcome = await self._run_one(record, vector)
        return dataclasses.replace(outcome, tolerance=vector.tolerance)

    async def _run_one(self, record: VersionRecord, vector: Vector) -> VectorOutcome:
        started = time.perf_counter()
        try:
            check_run_inputs(record, vector.method, vector.inputs)
        except ValidationFailed as exc:
            return VectorOutcome(vector.index, False, f"invalid inputs: {exc.message}", _timings(started))
        step = RouteStep(
            topic=servable_topic(record.owner, record.name, record.version),
            method=vector.method,
            parameters=self._codec.encode_value(vector.parameters),
        )
        try:
            result = await self._bus.call(
                [step],
                self._codec.encode_value(vector.inputs),
                timeout_s=self._settings.registry.sync_timeout_s,
            )
        except BrokerUnavailable:
            raise
        except DLHubError as exc:
            return VectorOutcome(vector.index, False, f"{exc.code}: {exc.message}", _timings(started))
        timings = timings_dict(result.timings, (time.perf_counter() - started) * 1000.0)
        if not result.ok:
            if result.error is not None and result.error.code == BrokerUnavailable.code:
                raise BrokerUnavailable(result.error.message)
            error = result.error
            detail = f"{error.code}: {error.message}" if error else "the run failed without an error"
            return VectorOutcome(vector.index, False, f"run failed ({detail})", timings)
        try:
            actual = msgspec.json.decode(output_json(self._codec, result))
        except (InvalidMessage, msgspec.DecodeError) as exc:
            return VectorOutcome(vector.index, False, f"undecodable output: {exc}", timings)
        problem = compare(vector.expected, actual, vector.tolerance)
        if problem is None:
            return VectorOutcome(vector.index, True, "", timings)
        return VectorOutcome(vector.index, False, problem, timings)

    async def verify(self, record: VersionRecord) -> dict[str, Any]:
        """The body of ``POST .../verify``: re-run the vectors of a ready version."""
        body: dict[str, Any] = {"servable": record.label}
        if not declared_vectors(record.metadata):
            body.update(passed=True, vectors=[], note=NO_VECTORS_NOTE)
            return body
        outcomes = await self.run_all(record)
        passed = all(o.passed for o in outcomes)
        log.info("test vectors verified", servable=record.label, passed=passed, vectors=len(outcomes))
        body.update(passed=passed, vectors=[o.to_dict() for o in outcomes])
        return body


def _timings(started: float) -> dict[str, float]:
    return timings_dict(Timings(), (time.perf_counter() - started) * 1000.0)
