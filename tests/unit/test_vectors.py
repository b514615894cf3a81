"""Test vectors: the comparison (unit); publish/verify through the real stack:
tests/stack/test_vectors_stack.py."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.errors import ValidationFailed
from dlhub.registry.metadata import validate_publication
from dlhub.registry.vectors import Tolerance, compare, declared_vectors

# -- comparison ----------------------------------------------------------------------------------------------


def test_equal_values_match() -> None:
    value = {"a": [1, 2.5, [True, None, "x"]], "b": {"c": -3}}
    assert compare(value, json.loads(json.dumps(value))) is None
    assert compare((1, 2), [1, 2]) is None  # tuples and lists are both sequences
    assert compare(1, 1.0) is None  # ints and floats compare numerically
    assert compare(math.nan, math.nan) is None


def test_numbers_within_tolerance() -> None:
    assert compare(1.0, 1.0000001) is not None  # default: math.isclose (rel 1e-9, abs 0)
    assert compare(1.0, 1.0000001, Tolerance(rel=1e-6)) is None
    assert compare(0.0, 1e-12) is not None
    assert compare(0.0, 1e-12, Tolerance(abs=1e-9)) is None
    message = compare([0.1, [0.2, 0.5]], [0.1, [0.2, 0.7]], Tolerance(rel=1e-6))
    assert message == "output[1][1]: expected 0.5, got 0.7 (rel 1e-06, abs 0)"
    assert compare(math.nan, 1.0) is not None and compare(1.0, math.nan) is not None


def test_ndarray_outputs_compare_as_nested_lists() -> None:
    actual = np.array([[1.0, 2.0], [3.0, 4.0000001]]).tolist()
    assert compare([[1, 2], [3, 4]], actual, Tolerance(rel=1e-6)) is None
    assert compare([[1, 2], [3, 4]], actual) == "output[1][1]: expected 4, got 4.0000001 (rel 1e-09, abs 0)"


def test_type_mismatches_name_both_kinds() -> None:
    assert compare(1, "1") == 'output: expected number 1, got string "1"'
    assert compare(True, 1) == "output: expected boolean true, got number 1"  # booleans are not numbers
    assert compare(0, False) == "output: expected number 0, got boolean false"
    assert compare(None, 0) == "output: expected null null, got number 0"
    assert compare([1], {"a": 1}) == 'output: expected list [1], got object {"a":1}'
    assert compare("a", "b") == 'output: expected "a", got "b"'
    assert compare(True, False) == "output: expected true, got false"


def test_structure_mismatches_name_the_path() -> None:
    assert compare([1, 2, 3], [1, 2]) == "output: expected 3 items [1,2,3], got 2 [1,2]"
    assert compare({"a": 1, "b": 2}, {"a": 1}) == 'output: missing key "b"'
    assert compare({"a": 1}, {"a": 1, "z": 0}) == 'output: unexpected key "z"'
    assert compare({"a": {"b": [0, "x"]}}, {"a": {"b": [0, "y"]}}) == (
        'output["a"]["b"][1]: expected "x", got "y"'
    )


def test_long_values_are_truncated() -> None:
    message = compare(list(range(100)), list(range(99)))
    assert message is not None and "..." in message and len(message) < 400


def test_declared_vectors_apply_default_and_per_vector_tolerance() -> None:
    metadata = {
        "dlhub": {
            "test_tolerance": {"rel": 1e-3},
            "test_vectors": [
                {"inputs": [1], "expected": [2]},
                {
                    "method": "other",
                    "inputs": 1,
                    "parameters": {"k": 1},
                    "expected": 2,
                    "tolerance": {"abs": 1},
                },
            ],
        }
    }
    first, second = declared_vectors(metadata)
    assert (first.index, first.method, first.parameters, first.tolerance) == (
        0,
        "run",
        {},
        Tolerance(1e-3, 0),
    )
    assert (second.method, second.parameters, second.tolerance) == ("other", {"k": 1}, Tolerance(1e-3, 1.0))
    assert declared_vectors({"dlhub": {}}) == []


# -- publication document validation -------------------------------------------------------------------------


def _doc(**dlhub: Any) -> dict[str, Any]:
    doc = python_function_document(
        name="vec", module="m", function="f", files=["m.py"], title="t", authors=["Doe, Jane"]
    )
    doc["dlhub"].update(dlhub)
    return doc


def test_schema_accepts_vectors_and_rejects_bad_shapes() -> None:
    validate_publication(_doc(test_vectors=[{"inputs": 1, "expected": 2, "tolerance": {"rel": 1e-6}}]))
    validate_publication(_doc(test_vectors=[], test_tolerance={"abs": 0.1}))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"test_vectors": [{"inputs": 1}]}, "dlhub.test_vectors[0].expected"),
        ({"test_vectors": [{"inputs": 1, "expected": 1, "expect": 2}]}, "dlhub.test_vectors[0]"),
        ({"test_vectors": [{"inputs": 1, "expected": 1, "tolerance": {"rel": -1}}]}, "dlhub.test_vectors[0]"),
        ({"test_vectors": [{"inputs": 1, "expected": 1, "method": "nope"}]}, "dlhub.test_vectors[0].method"),
        ({"test_vectors": [{"inputs": 1, "expected": 1}] * 101}, "dlhub.test_vectors"),
        ({"test_tolerance": {"relative": 1}}, "dlhub.test_tolerance"),
    ]
    for extra, field in bad:
        with pytest.raises(ValidationFailed) as info:
            validate_publication(_doc(**extra))
        assert info.value.field is not None and info.value.field.startswith(field), (extra, info.value.field)


# -- end to end ----------------------------------------------------------------------------------------------

VECFNS = """
def read_text(path):
    with open(path) as fh:
        return fh.read()
"""


def _publish(
    client: DLHubClient,
    pkg_dir: Path,
    function: str,
    vectors: list[dict[str, Any]] | None,
    module: str = "e2efns",
    **dlhub: Any,
) -> tuple[str, dict[str, Any]]:
    name = f"{function}_{uuid.uuid4().hex[:8]}"
    doc = python_function_document(
        name=name,
        module=module,
        function=function,
        files=[f"{module}.py"],
        title=f"{function} with test vectors",
        authors=["Doe, Jane"],
    )
    if vectors is not None:
        doc["dlhub"]["test_vectors"] = vectors
    doc["dlhub"].update(dlhub)
    reply = client.publish(doc, base_dir=pkg_dir, wait=False)
    return f"alice/{name}", reply
