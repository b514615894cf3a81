"""Test vectors: the comparison (unit), and publish/verify through the real stack (REST, SDK, CLI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import python_function_document
from dlhub.common.errors import ServableNotReady, ValidationFailed
from dlhub.registry.metadata import validate_publication
from dlhub.registry.vectors import Tolerance, compare, declared_vectors
from tests.support.e2e_servables import FUNCTIONS
from tests.support.stack import StackInfo

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


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vecpkg")
    (path / "e2efns.py").write_text(FUNCTIONS)
    (path / "vecfns.py").write_text(VECFNS)
    return path


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


@pytest.fixture(scope="module")
def doubler_published(alice: DLHubClient, pkg_dir: Path) -> tuple[str, str]:
    vectors: list[dict[str, Any]] = [
        {"inputs": [1, 2, 3], "expected": [2, 4, 6]},
        {"inputs": [0.5], "expected": [1.0000001], "tolerance": {"rel": 1e-6}},
        {"inputs": [], "expected": []},
    ]
    servable, reply = _publish(alice, pkg_dir, "double", vectors)
    record = alice._maybe_wait(reply, True, 120)
    assert record["status"] == "ready"
    return servable, str(reply["task_id"])


@pytest.fixture(scope="module")
def doubler(doubler_published: tuple[str, str]) -> str:
    return doubler_published[0]


def test_passing_vectors_make_the_version_ready(
    alice: DLHubClient, doubler_published: tuple[str, str]
) -> None:
    servable, build_task_id = doubler_published
    record = alice.describe(servable)
    assert record["status"] == "ready" and record["status_reason"] == ""
    assert alice.status(build_task_id)["output"]["test_vectors_passed"] == 3
    assert alice.run(servable, [4]) == [8]


def test_wrong_expected_value_fails_the_publish_naming_the_vector(alice: DLHubClient, pkg_dir: Path) -> None:
    vectors: list[dict[str, Any]] = [
        {"inputs": [1], "expected": [2]},
        {"inputs": [1, 2, 3], "expected": [2, 4, 7], "tolerance": {"rel": 1e-6, "abs": 1e-9}},
    ]
    servable, reply = _publish(alice, pkg_dir, "double", vectors)
    with pytest.raises(TaskFailed) as info:
        alice._maybe_wait(reply, True, 120)
    assert info.value.error_type == "test_vectors_failed"
    record = alice.describe(servable)
    assert record["status"] == "failed"
    assert record["status_reason"] == (
        "test vector 1 failed: output[2]: expected 7, got 6 (rel 1e-06, abs 1e-09)"
    )
    with pytest.raises(ServableNotReady):
        alice.run(servable, [1])
    with pytest.raises(ServableNotReady):  # verify needs a ready version: 409
        alice.verify(servable + "@1")


def test_default_tolerance_is_strict_and_test_tolerance_relaxes_it(alice: DLHubClient, pkg_dir: Path) -> None:
    strict, reply = _publish(alice, pkg_dir, "double", [{"inputs": [0.5], "expected": [1.0000001]}])
    with pytest.raises(TaskFailed):
        alice._maybe_wait(reply, True, 120)
    reason = alice.describe(strict)["status_reason"]
    assert reason == "test vector 0 failed: output[0]: expected 1.0000001, got 1.0 (rel 1e-09, abs 0)"

    _, reply = _publish(
        alice, pkg_dir, "double", [{"inputs": [0.5], "expected": [1.0000001]}], test_tolerance={"rel": 1e-6}
    )
    assert alice._maybe_wait(reply, True, 120)["status"] == "ready"


def test_a_failing_run_fails_the_version(alice: DLHubClient, pkg_dir: Path) -> None:
    servable, reply = _publish(alice, pkg_dir, "mean", [{"inputs": [], "expected": 0}])  # ZeroDivisionError
    with pytest.raises(TaskFailed):
        alice._maybe_wait(reply, True, 120)
    reason = alice.describe(servable)["status_reason"]
    assert reason.startswith("test vector 0 failed: run failed (") and "tolerance" in reason


def test_verify_via_rest_sdk_and_cli(
    stack: StackInfo, alice: DLHubClient, doubler: str, tmp_path: Path
) -> None:
    owner, name = doubler.split("/")
    response = httpx.post(f"{stack.api}/servables/{owner}/{name}/versions/1/verify")  # anonymous, public
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["servable"] == f"{doubler}@1" and body["passed"] is True
    assert [v["index"] for v in body["vectors"]] == [0, 1, 2]
    assert all(
        v["passed"] and "message" not in v and v["timings"]["inference_ms"] >= 0 for v in body["vectors"]
    )

    report = alice.verify(doubler)
    assert report["passed"] is True and report["servable"] == f"{doubler}@1" and len(report["vectors"]) == 3

    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "verify", doubler],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 3 test vector(s) passed" in result.stdout


def test_verify_without_vectors(stack: StackInfo, alice: DLHubClient, pkg_dir: Path, tmp_path: Path) -> None:
    servable, reply = _publish(alice, pkg_dir, "noop", None)
    alice._maybe_wait(reply, True, 120)
    report = alice.verify(servable)
    assert report == {"servable": f"{servable}@1", "passed": True, "vectors": [], "note": "no test vectors"}
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "verify", servable + "@1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "no test vectors" in result.stdout, result.stdout + result.stderr


def test_verify_reports_a_version_that_no_longer_reproduces(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("published")
    vectors: list[dict[str, Any]] = [
        {"inputs": str(data), "expected": "published", "description": "the file as published"},
        {"inputs": str(data), "expected": "published"},
    ]
    servable, reply = _publish(alice, pkg_dir, "read_text", vectors, module="vecfns")
    assert alice._maybe_wait(reply, True, 120)["status"] == "ready"
    assert alice.run(servable, str(data)) == "published"  # now in the result cache

    data.write_text("drifted")
    report = alice.verify(servable)  # bypasses the result cache
    assert report["passed"] is False
    assert [v["passed"] for v in report["vectors"]] == [False, False]
    assert report["vectors"][1]["message"] == 'output: expected "published", got "drifted"'

    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "verify", servable],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "2 of 2 test vector(s) failed" in result.stdout


def test_verify_unknown_is_404(stack: StackInfo) -> None:
    response = httpx.post(f"{stack.api}/servables/alice/no_such_servable_xyz/verify")
    assert response.status_code == 404
