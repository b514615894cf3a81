"""Test vectors: example inputs with expected outputs that a version must reproduce.

A publisher lists them in ``dlhub.test_vectors`` (each ``{"method": "run", "inputs", "parameters"?,
"expected", "tolerance"?: {"rel", "abs"}}``; ``dlhub.test_tolerance`` is the default tolerance). Model files
are only ever loaded inside a worker, so after a successful build the registry sends every vector as a run to
the version's servable topic (exactly like ``POST .../run``, never through the memo), compares the outputs
(``dlhub.common.vectors``, shared with ``dlhub test``, the local check) and only then marks the version
``ready``; a mismatch or a failed run makes it ``failed`` with a reason naming the vector. ``POST .../verify``
re-runs them later (``VectorRunner.verify``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import BrokerUnavailable, DLHubError, InvalidMessage, ValidationFailed
from dlhub.common.ids import servable_topic
from dlhub.common.logging import get_logger
from dlhub.common.messages import RouteStep, Timings
from dlhub.common.vectors import (
    NO_VECTORS_NOTE,
    Tolerance,
    Vector,
    VectorOutcome,
    compare,
    declared_vectors,
    judge,
    shorten,
)
from dlhub.registry.argtypes import check_run_inputs
from dlhub.registry.outcomes import output_json, timings_dict
from dlhub.registry.placement import placement_of
from dlhub.registry.ports import Bus
from dlhub.registry.store import (
    MetadataStore,
    StoredVerification,
    VectorCheck,
    VersionRecord,
)
from dlhub.registry.store.interface import VerificationTrigger

__all__ = [
    "NO_VECTORS_NOTE",
    "Tolerance",
    "Vector",
    "VectorOutcome",
    "VectorRunner",
    "check_test_vectors",
    "compare",
    "declared_vectors",
    "failure_reason",
    "shorten",
]

log = get_logger(__name__)

MAX_TEST_VECTORS = 100
VECTOR_CONCURRENCY = 8


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

    def __init__(self, *, settings: DLHubSettings, bus: Bus, codec: Codec, store: MetadataStore) -> None:
        self._settings = settings
        self._bus = bus
        self._codec = codec
        self._store = store

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
            package=record.bundle_sha256,
            placement=placement_of(record.metadata),
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
        return judge(vector, actual, timings)

    async def verify(self, record: VersionRecord) -> dict[str, Any]:
        """The body of ``POST .../verify``: re-run the vectors of a ready version."""
        body: dict[str, Any] = {"servable": record.label}
        if not declared_vectors(record.metadata):
            body.update(passed=True, vectors=[], note=NO_VECTORS_NOTE)
            return body
        outcomes = await self.run_all(record)
        passed = all(o.passed for o in outcomes)
        log.info("test vectors verified", servable=record.label, passed=passed, vectors=len(outcomes))
        await self.remember(record, outcomes, "verify")
        body.update(passed=passed, vectors=[o.to_dict() for o in outcomes])
        return body

    async def remember(
        self, record: VersionRecord, outcomes: Sequence[VectorOutcome], trigger: VerificationTrigger
    ) -> StoredVerification:
        """Store ``outcomes`` as the version's latest verification (describe's ``last_verification``)."""
        verification = StoredVerification(
            at_unix_s=time.time(),
            passed=all(o.passed for o in outcomes),
            trigger=trigger,
            vectors=tuple(VectorCheck(index=o.index, passed=o.passed, message=o.message) for o in outcomes),
        )
        await self._store.save_verification(record.owner, record.name, record.version, verification)
        return verification


def _timings(started: float) -> dict[str, float]:
    return timings_dict(Timings(), (time.perf_counter() - started) * 1000.0)
