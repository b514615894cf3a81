"""The `dlhub` CLI against the real stack: init, publish, run, ls, search, describe, status, update."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.e2e_servables import FUNCTIONS
from tests.support.polling import wait_until
from tests.support.stack import StackInfo


def dlhub(stack: StackInfo, cwd: Path, *args: str, user: str = "alice") -> str:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens[user])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"dlhub {' '.join(args)} failed: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_cli_round_trip(stack: StackInfo, tmp_path: Path) -> None:
    (tmp_path / "e2efns.py").write_text(FUNCTIONS)
    name = f"cli_{uuid.uuid4().hex[:8]}"
    out = dlhub(
        stack, tmp_path, "init", "--name", name, "--function", "e2efns:square", "--title", "Squares a number",
        "--author", "Curie, Marie", "--domain", "physics",
    )  # fmt: skip
    doc = json.loads((tmp_path / "dlhub.json").read_text())
    assert doc["dlhub"]["files"] == {"other": ["e2efns.py"]} and "dlhub.json" in out

    assert f"alice/{name}@1" in dlhub(stack, tmp_path, "publish")
    assert json.loads(dlhub(stack, tmp_path, "run", f"alice/{name}", "--input", "7")) == 49

    task_id = dlhub(stack, tmp_path, "run", f"alice/{name}", "--input", "3", "--async").strip()
    record = json.loads(dlhub(stack, tmp_path, "status", task_id, "--wait"))
    assert record["state"] == "completed" and record["output"] == 9

    assert name in dlhub(stack, tmp_path, "ls", "--owner", "alice")
    wait_until(
        lambda: name in dlhub(stack, tmp_path, "search", "squares", "--json"),
        timeout_s=10,
        message="search via CLI",
    )
    hits = json.loads(dlhub(stack, tmp_path, "search", "squa", "--author", "Curie", "--json"))["hits"]
    assert [h["name"] for h in hits] == [name]
    assert json.loads(dlhub(stack, tmp_path, "describe", f"alice/{name}"))["version"] == 1

    doc["datacite"]["titles"][0]["title"] = "Squares a number (v2)"
    (tmp_path / "dlhub.json").write_text(json.dumps(doc))
    assert "version 2" in dlhub(stack, tmp_path, "update", f"alice/{name}")
    assert json.loads(dlhub(stack, tmp_path, "run", f"alice/{name}@2", "--input", "5")) == 25


def test_cli_reports_errors_without_a_traceback(stack: StackInfo, tmp_path: Path) -> None:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "run", "alice/nope", "--input", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "not_found" in result.stderr and "Traceback" not in result.stderr


def test_cli_deprecate_and_undo(stack: StackInfo, tmp_path: Path) -> None:
    (tmp_path / "e2efns.py").write_text(FUNCTIONS)
    name = f"cli_{uuid.uuid4().hex[:8]}"
    dlhub(stack, tmp_path, "init", "--name", name, "--function", "e2efns:square", "--title", "Squares")
    dlhub(stack, tmp_path, "publish")
    out = json.loads(dlhub(stack, tmp_path, "deprecate", f"alice/{name}@1", "--reason", "too square"))
    assert out["deprecated"] is True and out["deprecation_reason"] == "too square"
    assert json.loads(dlhub(stack, tmp_path, "run", f"alice/{name}", "--input", "3")) == 9  # still runs
    out = json.loads(dlhub(stack, tmp_path, "deprecate", f"alice/{name}@1", "--undo"))
    assert out["deprecated"] is False


TRAINED_MODULE = """
import numpy as np
from sklearn.linear_model import LinearRegression

X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
y = 2.0 * X[:, 0] + 3.0 * X[:, 1] + 1.0
model = LinearRegression().fit(X, y)
"""


def test_cli_publish_model_round_trip(stack: StackInfo, tmp_path: Path) -> None:
    (tmp_path / "trained.py").write_text(TRAINED_MODULE)
    name = f"cli_model_{uuid.uuid4().hex[:8]}"
    out = dlhub(
        stack, tmp_path, "publish-model", "trained:model", "--name", name, "--title", "A linear model",
        "--author", "Curie, Marie", "--domain", "physics",
    )  # fmt: skip
    assert f"alice/{name}@1 (ready)" in out
    described = json.loads(dlhub(stack, tmp_path, "describe", f"alice/{name}"))
    assert described["metadata"]["servable"]["shim"] == "sklearn.ScikitLearnServable"
    assert described["metadata"]["datacite"]["titles"] == [{"title": "A linear model"}]
    output = json.loads(dlhub(stack, tmp_path, "run", f"alice/{name}", "--input", "[[1.0, 1.0], [0.0, 0.0]]"))
    assert output == [pytest.approx(6.0), pytest.approx(1.0)]


def test_cli_publish_model_errors(stack: StackInfo, tmp_path: Path) -> None:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    (tmp_path / "trained.py").write_text("model = 1\n")
    for ref, message in [
        ("no_such_module:model", "cannot import no_such_module"),
        ("trained:missing", "has no attribute 'missing'"),
        ("trained", "expected module:attribute"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", "publish-model", ref, "--name", "x"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "publish-model", "trained:model", "--name", "x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "cannot describe a builtins.int" in result.stderr
    assert "Traceback" not in result.stderr
