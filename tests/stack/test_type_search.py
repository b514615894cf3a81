"""Finding servables by what they accept, through the real stack: REST, SDK and the `dlhub` CLI.

Three servables are published with different declared input types (rows of 4 floats, a fixed 10x3 matrix,
"python object"); the type filters find exactly the ones whose declared types accept the data described.
A word unique to this module in every title keeps the other servables of the shared stack out of the way;
the filter-only CLI query checks membership, as other modules may publish matching servables too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.stack.test_cli import dlhub
from tests.support.polling import wait_until
from tests.support.stack import StackInfo

WORD = f"typesearch{uuid.uuid4().hex[:8]}"
ROWS = {"type": "ndarray", "shape": [None, 4], "item_type": {"type": "float"}}
MATRIX = {"type": "ndarray", "shape": [10, 3], "item_type": {"type": "float"}}
VECTOR = {"type": "ndarray", "shape": [None], "item_type": {"type": "float"}}


def publish(client: DLHubClient, pkg_dir: Path, label: str, **types: Any) -> str:
    name = f"{label}_{uuid.uuid4().hex[:6]}"
    doc = python_function_document(
        name=name,
        module="e2efns",
        function="noop",
        files=["e2efns.py"],
        title=f"{WORD} {label}",
        authors=["Doe, Jane"],
        **types,
    )
    reply = client.publish(doc, base_dir=pkg_dir)
    assert reply["status"] == "ready", reply
    return name


@pytest.fixture(scope="module")
def typed(alice: DLHubClient, pkg_dir: Path) -> dict[str, str]:
    names = {
        "rows": publish(alice, pkg_dir, "rows", input_type=ROWS, output_type=VECTOR),
        "matrix": publish(alice, pkg_dir, "matrix", input_type=MATRIX, output_type=MATRIX),
        "anything": publish(alice, pkg_dir, "anything"),  # "python object" in and out
    }
    wait_until(
        lambda: alice.search(WORD, limit=10)["total"] == 3, timeout_s=30, message="the three in the index"
    )
    return names


def found(client: DLHubClient, **filters: Any) -> set[str]:
    return {hit["name"] for hit in client.search(WORD, limit=10, **filters)["hits"]}


def test_cli_finds_servables_by_input_type_and_shape(
    stack: StackInfo, typed: dict[str, str], tmp_path: Path
) -> None:
    args = ("search", "--input-type", "ndarray", "--input-shape", "[null,4]", "--limit", "100", "--json")
    hits = {hit["name"] for hit in json.loads(dlhub(stack, tmp_path, *args))["hits"]}
    assert typed["rows"] in hits
    assert not {typed["matrix"], typed["anything"]} & hits
    narrowed = json.loads(dlhub(stack, tmp_path, *args[:-3], WORD, "--json"))["hits"]
    assert [hit["name"] for hit in narrowed] == [typed["rows"]]
    fixed = dlhub(
        stack, tmp_path, "search", WORD, "--input-shape", "[10, 3]", "--output-type", "ndarray", "--json"
    )
    assert [hit["name"] for hit in json.loads(fixed)["hits"]] == [typed["matrix"]]


def test_cli_reports_a_bad_shape(stack: StackInfo, tmp_path: Path) -> None:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "search", "--input-shape", "[null,4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "input_shape" in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"input_type": "ndarray"}, {"rows", "matrix"}),
        ({"input_type": "NDARRAY", "input_item_type": "Float"}, {"rows", "matrix"}),
        ({"input_shape": [None, 4]}, {"rows"}),  # any number of rows of 4
        ({"input_shape": [7, 4]}, {"rows"}),
        ({"input_shape": [10, 3]}, {"matrix"}),
        ({"input_shape": [None, 3]}, set()),  # the matrix takes exactly 10 rows, not any number
        ({"input_shape": [10, 4, 1]}, set()),
        ({"input_shape": "[null, 4]"}, {"rows"}),  # JSON text works too
        ({"output_shape": [5]}, {"rows"}),
        ({"input_type": "ndarray", "output_shape": [10, 3]}, {"matrix"}),
        ({"input_type": "python object"}, {"anything"}),
        ({"input_type": "string"}, set()),
    ],
)  # fmt: skip
def test_sdk_type_filters(
    alice: DLHubClient, typed: dict[str, str], filters: dict[str, Any], expected: set[str]
) -> None:
    assert found(alice, **filters) == {typed[label] for label in expected}


@pytest.mark.parametrize(
    ("param", "value"),
    [("input_shape", "[null,4"), ("input_shape", "[-1,4]"), ("output_shape", "{}"), ("input_shape", "[4.0]")],
)
def test_rest_refuses_bad_shapes_naming_the_parameter(stack: StackInfo, param: str, value: str) -> None:
    response = httpx.get(f"{stack.api}/search", params={param: value}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == param and param in error["message"]
