"""Pipeline step references parse or are validation errors, in-process (split from
tests/stack/test_pipelines.py)."""

from __future__ import annotations

import pytest

from dlhub.common.errors import ValidationFailed
from dlhub.registry.pipelines import parse_servable_ref


@pytest.mark.parametrize(
    "ref", ["alice/x@²", "alice/x@٣", "alice/x@0", "alice/x@", "alice/x@1.5", "alice", "a/b/c"]
)
def test_malformed_step_references_are_validation_errors(ref: str) -> None:
    with pytest.raises(ValidationFailed) as excinfo:
        parse_servable_ref(ref, "steps[0].servable")
    assert excinfo.value.field == "steps[0].servable"


def test_step_references_parse_owner_name_and_version() -> None:
    assert parse_servable_ref("alice/x@12", "f") == ("alice", "x", 12)
    assert parse_servable_ref("alice/x", "f") == ("alice", "x", None)
