"""Pipelines published as servables: their documents, publish-time pinning and the step lookups runs share.

A pipeline document is a publication document whose ``servable`` section is ``{"type": "pipeline", "shim":
"pipeline", "steps": [{"servable": "owner/name[@v]", "method", "parameters"}]}``. Publishing pins every step
to the version it resolves to at that moment, so a pipeline version is as immutable as any other version:
new versions of its steps never change what it runs. A pipeline has no package and is never built; it is
ready at once. Running it expands the pinned steps into one broker route (``runs.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dlhub.common.errors import DLHubError, Gone, NotFound, ServableNotReady, ValidationFailed
from dlhub.common.ids import NAME_RE
from dlhub.registry.auth import Caller
from dlhub.registry.store import VersionRecord

PIPELINE_TYPE = "pipeline"
MAX_PIPELINE_STEPS = 64
DIGEST_PREFIX = "sha256:"
_LOOKUP_ERRORS = (NotFound, Gone, ServableNotReady)


class VersionLookup(Protocol):
    async def runnable(self, caller: Caller, owner: str, name: str, version: int | None) -> VersionRecord: ...


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step as written in a request or a stored pipeline document."""

    servable: str
    method: str = "run"
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PinnedPipeline:
    """A validated pipeline document with every step pinned, and the digest of what it runs."""

    document: dict[str, Any]
    digest: str
    steps: tuple[str, ...]


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # NAME_RE
SERVABLE_REF_PATTERN = rf"^{_NAME}/{_NAME}(@0*[1-9][0-9]*)?$"
"""What ``parse_servable_ref`` accepts, for the OpenAPI document: ``owner/name`` or ``owner/name@version``."""


def parse_servable_ref(ref: str, field: str) -> tuple[str, str, int | None]:
    """Split ``owner/name`` or ``owner/name@version``."""
    owner, sep, rest = ref.partition("/")
    name, at, version_text = rest.partition("@")
    if not sep or not NAME_RE.fullmatch(owner) or not NAME_RE.fullmatch(name):
        raise ValidationFailed(f"expected 'owner/name' or 'owner/name@version', got {ref!r}", field=field)
    if not at:
        return owner, name, None
    if not (version_text.isascii() and version_text.isdigit()) or int(version_text) < 1:  # not "²"
        raise ValidationFailed(f"invalid version in {ref!r}", field=field)
    return owner, name, int(version_text)


def is_pipeline(metadata: dict[str, Any]) -> bool:
    servable = metadata.get("servable")
    return isinstance(servable, dict) and servable.get("type") == PIPELINE_TYPE


def stored_steps(metadata: dict[str, Any]) -> list[StepSpec]:
    """The steps of a stored (validated, pinned) pipeline document."""
    steps = (metadata.get("servable") or {}).get("steps") or []
    return [
        StepSpec(
            servable=str(s["servable"]),
            method=str(s.get("method") or "run"),
            parameters=dict(s.get("parameters") or {}),
        )
        for s in steps
        if isinstance(s, dict)
    ]


def check_pipeline_document(document: dict[str, Any]) -> None:
    """What a pipeline document may not have (checked with the schema, before any step is looked up)."""
    if (document.get("dlhub") or {}).get("test_vectors"):
        raise ValidationFailed(
            "pipelines take no test vectors; declare them on the steps", field="dlhub.test_vectors"
        )


def check_step_count(count: int, field: str) -> None:
    if count == 0:
        raise ValidationFailed("a pipeline needs at least one step", field=field)
    if count > MAX_PIPELINE_STEPS:
        raise ValidationFailed(f"a pipeline has at most {MAX_PIPELINE_STEPS} steps, got {count}", field=field)


def method_spec(record: VersionRecord, method: str) -> dict[str, Any] | None:
    methods = (record.metadata.get("servable") or {}).get("methods") or {}
    spec = methods.get(method) if isinstance(methods, dict) else None
    return spec if isinstance(spec, dict) else None


def step_error(exc: DLHubError, index: int, ref: str, field: str) -> DLHubError:
    """The same error class, its message prefixed with the step (run time: 404, 409, 410 name the step)."""
    return type(exc)(f"step {index} ({ref}): {exc.message}", field=field)


async def resolve_step(
    lookup: VersionLookup, caller: Caller, ref: str, field: str, index: int
) -> VersionRecord:
    """The version a step runs: 404/409/410 like a run of it, naming the step."""
    owner, name, version = parse_servable_ref(ref, field)
    try:
        return await lookup.runnable(caller, owner, name, version)
    except _LOOKUP_ERRORS as exc:
        raise step_error(exc, index, ref, field) from None


async def pin_pipeline(lookup: VersionLookup, caller: Caller, document: dict[str, Any]) -> PinnedPipeline:
    """Validate a pipeline document for ``caller`` (the publisher) and pin every step; 400 naming the step.

    Each step must be a ready version the publisher can see, not a pipeline itself (no nesting), and have
    the method it names. ``servable.methods.run`` is derived: the first step's input, the last step's output.
    """
    doc = copy.deepcopy(document)
    servable: dict[str, Any] = doc["servable"]
    raw_steps: list[dict[str, Any]] = servable["steps"]
    check_step_count(len(raw_steps), "servable.steps")
    records: list[VersionRecord] = []
    pinned: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_steps):
        record, step = await _pin_step(lookup, caller, raw, index)
        records.append(record)
        pinned.append(step)
    servable["steps"] = pinned
    servable["shim"] = PIPELINE_TYPE
    servable["methods"] = {"run": _run_method(servable, records, pinned)}
    doc["dlhub"]["type"] = PIPELINE_TYPE
    return PinnedPipeline(
        document=doc, digest=pipeline_digest(records, pinned), steps=tuple(s["servable"] for s in pinned)
    )


async def _pin_step(
    lookup: VersionLookup, caller: Caller, raw: dict[str, Any], index: int
) -> tuple[VersionRecord, dict[str, Any]]:
    field = f"servable.steps[{index}]"
    ref = str(raw["servable"])
    try:
        record = await resolve_step(lookup, caller, ref, f"{field}.servable", index)
    except _LOOKUP_ERRORS as exc:  # at publish every unusable step is a bad document
        raise ValidationFailed(f"{field}.servable: {exc.message}", field=f"{field}.servable") from None
    if is_pipeline(record.metadata):
        raise ValidationFailed(
            f"{field}.servable: {record.label} is a pipeline; pipelines cannot be nested (list its steps)",
            field=f"{field}.servable",
        )
    method = str(raw.get("method") or "run")
    if method_spec(record, method) is None:
        raise ValidationFailed(
            f"{field}.method: {record.label} has no method {method!r}", field=f"{field}.method"
        )
    return record, {
        "servable": record.label,
        "method": method,
        "parameters": dict(raw.get("parameters") or {}),
    }


def _run_method(
    servable: dict[str, Any], records: Sequence[VersionRecord], pinned: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    given = (servable.get("methods") or {}).get("run")
    run: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    first = method_spec(records[0], pinned[0]["method"]) or {}
    last = method_spec(records[-1], pinned[-1]["method"]) or {}
    for role, spec in (("input", first), ("output", last)):
        if role in spec:
            run[role] = copy.deepcopy(spec[role])
        else:
            run.pop(role, None)
    run["parameters"] = {}
    return run


def pipeline_digest(records: Sequence[VersionRecord], pinned: Sequence[dict[str, Any]]) -> str:
    """sha256 over each step's pinned version, its package digest, method and parameters."""
    identity = [
        [record.label, record.digest, step["method"], step["parameters"]]
        for record, step in zip(records, pinned, strict=True)
    ]
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()
