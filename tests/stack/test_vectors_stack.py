"""Test vectors on the session's embedded stack: publishing runs them, verify re-runs them over REST, the SDK
and the CLI (split from tests/unit/test_vectors.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.common.errors import ServableNotReady
from tests.support.e2e_servables import FUNCTIONS
from tests.support.stack import StackInfo
from tests.unit.test_vectors import VECFNS, _publish


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vecpkg")
    (path / "e2efns.py").write_text(FUNCTIONS)
    (path / "vecfns.py").write_text(VECFNS)
    return path


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


def _at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_last_verification_in_describe(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path, tmp_path: Path
) -> None:
    """The publish-time check is stored, each verify replaces it, and describe shows the latest."""
    data = tmp_path / "data.txt"
    data.write_text("published")
    vectors: list[dict[str, Any]] = [
        {"inputs": str(data), "expected": "published"},
        {"inputs": str(data), "expected": "published"},
    ]
    before = time.time()
    servable, reply = _publish(alice, pkg_dir, "read_text", vectors, module="vecfns")
    assert alice._maybe_wait(reply, True, 120)["status"] == "ready"
    url = f"{stack.api}/servables/{servable}"
    at_publish = httpx.get(url).json()["last_verification"]
    assert at_publish["trigger"] == "publish" and at_publish["passed"] is True
    assert (at_publish["passed_count"], at_publish["total"]) == (2, 2)
    assert at_publish["vectors"] == [{"index": 0, "passed": True}, {"index": 1, "passed": True}]
    assert before - 1 <= _at(at_publish["at"]) <= time.time() + 1

    data.write_text("drifted")
    report = httpx.post(f"{url}/versions/1/verify").json()  # anonymous: public, like a run
    assert report["passed"] is False
    latest = httpx.get(f"{url}/versions/1").json()["last_verification"]
    assert latest["trigger"] == "verify" and latest["passed"] is False
    assert (latest["passed_count"], latest["total"]) == (0, 2)
    assert latest["vectors"][1] == {"index": 1, "passed": False, "message": report["vectors"][1]["message"]}
    assert _at(latest["at"]) >= _at(at_publish["at"])

    data.write_text("published")
    assert alice.verify(servable)["passed"] is True
    again = alice.describe(servable)["last_verification"]
    assert again["trigger"] == "verify" and again["passed"] is True and again["passed_count"] == 2


def test_last_verification_is_null_without_vectors(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path
) -> None:
    servable, reply = _publish(alice, pkg_dir, "noop", None)
    alice._maybe_wait(reply, True, 120)
    alice.verify(servable)  # "no test vectors": nothing ran, nothing is stored
    assert httpx.get(f"{stack.api}/servables/{servable}").json()["last_verification"] is None


def test_a_failed_publish_check_is_kept(alice: DLHubClient, pkg_dir: Path) -> None:
    servable, reply = _publish(alice, pkg_dir, "double", [{"inputs": [1], "expected": [3]}])
    with pytest.raises(TaskFailed):
        alice._maybe_wait(reply, True, 120)
    latest = alice.describe(servable)["last_verification"]
    assert latest["trigger"] == "publish" and latest["passed"] is False
    message = "output[0]: expected 3, got 2 (rel 1e-09, abs 0)"
    assert latest["vectors"] == [{"index": 0, "passed": False, "message": message}]


def test_verify_unknown_is_404(stack: StackInfo) -> None:
    response = httpx.post(f"{stack.api}/servables/alice/no_such_servable_xyz/verify")
    assert response.status_code == 404
