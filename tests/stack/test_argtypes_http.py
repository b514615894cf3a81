"""Argument types over HTTP on the session's stack: bad inputs are a 400 naming the path (split from
tests/unit/test_argtypes.py)."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.e2e_servables import FUNCTIONS
from tests.support.sdk_documents import sdk_sklearn_document
from tests.support.stack import StackInfo


def post_run(stack: StackInfo, servable: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.tokens['alice']}"}
    return httpx.post(f"{stack.api}/servables/{servable}/run", json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def iris_servable(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    iris = load_iris()
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.data, iris.target)
    base = tmp_path_factory.mktemp("iris")
    (base / "model.pkl").write_bytes(pickle.dumps(clf))
    name = f"iris_typed_{uuid.uuid4().hex[:8]}"
    assert alice.publish(sdk_sklearn_document(name), base_dir=base)["status"] == "ready"
    return f"alice/{name}"


def test_sdk_sklearn_servable_rejects_bad_inputs_with_a_400_naming_the_path(
    stack: StackInfo, iris_servable: str
) -> None:
    response = post_run(stack, iris_servable, {"inputs": [[1, 2, 3]]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == "inputs[0]"
    assert error["message"] == "inputs[0]: expected 4 floats, got 3"

    response = post_run(stack, iris_servable, {"inputs": "5.1,3.5,1.4,0.2"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "inputs"
    assert "got string" in response.json()["error"]["message"]

    response = post_run(stack, iris_servable, {"inputs": [[5.1, 3.5, 1.4, True]], "asynchronous": True})
    assert response.status_code == 400  # asynchronous runs are checked before a task exists
    assert response.json()["error"]["field"] == "inputs[0][3]"

    rows = load_iris().data[::50].tolist()
    response = post_run(stack, iris_servable, {"inputs": rows})
    assert response.status_code == 200 and response.json()["state"] == "completed"
    assert np.asarray(response.json()["output"]).shape == (len(rows), 3)
    response = post_run(stack, iris_servable, {"inputs": [[5, 3, 1, 0]]})  # integers are floats
    assert response.status_code == 200 and response.json()["state"] == "completed"


def test_typed_python_function_and_first_pipeline_step(
    stack: StackInfo, alice: DLHubClient, iris_servable: str, tmp_path: Path
) -> None:
    (tmp_path / "e2efns.py").write_text(FUNCTIONS)
    name = f"typed_mean_{uuid.uuid4().hex[:8]}"
    doc = python_function_document(
        name=name, module="e2efns", function="mean", files=["e2efns.py"], title="Typed mean",
        authors=["Doe, Jane"], input_type={"type": "list", "item_type": {"type": "number"}},
    )  # fmt: skip
    alice.publish(doc, base_dir=tmp_path)
    response = post_run(stack, f"alice/{name}", {"inputs": "not a list of numbers"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "inputs: expected list, got string"
    response = post_run(stack, f"alice/{name}", {"inputs": [1, False]})
    assert response.status_code == 400 and response.json()["error"]["field"] == "inputs[1]"
    assert alice.run(f"alice/{name}", [4, 6.0]) == 5

    headers = {"Authorization": f"Bearer {stack.tokens['alice']}"}
    pipeline = {"steps": [{"servable": iris_servable}, {"servable": f"alice/{name}"}], "inputs": [[1, 2, 3]]}
    response = httpx.post(f"{stack.api}/pipelines/run", json=pipeline, headers=headers, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "inputs[0]: expected 4 floats, got 3"
