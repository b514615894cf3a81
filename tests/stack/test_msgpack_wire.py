"""Run requests and answers as msgpack (NumPy arrays as raw buffers), against the real stack."""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from dlhub.client import DLHubClient
from dlhub.common.codec import EXT_NDARRAY, decode_body, encode_body
from tests.support.sdk_documents import sdk_sklearn_document
from tests.support.stack import StackInfo

MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def forest() -> RandomForestClassifier:
    iris = load_iris()
    return RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.data, iris.target)


@pytest.fixture(scope="module")
def iris_servable(
    alice: DLHubClient, forest: RandomForestClassifier, tmp_path_factory: pytest.TempPathFactory
) -> str:
    base = tmp_path_factory.mktemp("iris-msgpack")
    (base / "model.pkl").write_bytes(pickle.dumps(forest))
    name = f"iris_msgpack_{uuid.uuid4().hex[:8]}"
    assert alice.publish(sdk_sklearn_document(name), base_dir=base)["status"] == "ready"
    return f"alice/{name}"


def post_msgpack(stack: StackInfo, servable: str, body: bytes, accept: str = MSGPACK) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.tokens['alice']}", "Content-Type": MSGPACK, "Accept": accept}
    return httpx.post(f"{stack.api}/servables/{servable}/run", content=body, headers=headers, timeout=60)


def test_sdk_sends_numpy_inputs_as_msgpack_and_gets_arrays_back(
    alice: DLHubClient, iris_servable: str, forest: RandomForestClassifier
) -> None:
    rows = np.tile(load_iris().data, (20, 1))  # 3,000 rows
    record = alice.run_detailed(iris_servable, rows)
    assert record["state"] == "completed", record
    output = record["output"]
    assert isinstance(output, np.ndarray) and output.shape == (len(rows), 3)
    assert np.allclose(output, forest.predict_proba(rows))
    assert record["timings"]["inference_ms"] > 0

    # Lists still go as JSON and come back as lists.
    assert np.allclose(alice.run(iris_servable, rows[:3].tolist()), forest.predict_proba(rows[:3]))


def test_msgpack_request_with_a_json_answer(
    stack: StackInfo, iris_servable: str, forest: RandomForestClassifier
) -> None:
    rows = load_iris().data[::30]
    response = post_msgpack(stack, iris_servable, encode_body({"inputs": rows}), accept="application/json")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert np.allclose(response.json()["output"], forest.predict_proba(rows))


def test_memo_hits_answer_in_msgpack_too(
    stack: StackInfo, iris_servable: str, forest: RandomForestClassifier
) -> None:
    rows = load_iris().data[1:4] + (uuid.uuid4().int % 1000) / 1e6  # inputs no other run used
    body = encode_body({"inputs": rows})
    first = decode_body(post_msgpack(stack, iris_servable, body).content, dict[str, Any])
    second = decode_body(post_msgpack(stack, iris_servable, body).content, dict[str, Any])
    assert (first["cached"], second["cached"]) == (False, True)
    expected = forest.predict_proba(rows)
    assert isinstance(first["output"], np.ndarray) and np.allclose(first["output"], expected)
    assert np.allclose(second["output"], expected)  # the memo keeps JSON: an array comes back as lists


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        (np.zeros((2, 3)), "inputs", "expected 4 floats along axis 1, got 3"),
        (np.zeros(4), "inputs", "expected 2 dimensions, got 1"),
        (np.array([["a", "b", "c", "d"]]), "inputs", "expected an array of floats, got dtype <U1"),
    ],
)
def test_mistyped_arrays_are_a_400_naming_the_problem(
    stack: StackInfo, iris_servable: str, inputs: np.ndarray, field: str, message: str
) -> None:
    response = post_msgpack(stack, iris_servable, encode_body({"inputs": inputs}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == field
    assert message in error["message"]


def _truncated_array() -> bytes:
    header = msgspec.msgpack.encode(("<f8", [10, 4]))
    payload = len(header).to_bytes(4, "little") + header + b"\0" * 16  # 2 of the 40 values
    return msgspec.msgpack.encode({"inputs": msgspec.msgpack.Ext(EXT_NDARRAY, payload)})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xc1\xc1\xc1", "malformed msgpack"),
        (b"", "empty"),
        (msgspec.msgpack.encode([1, 2, 3]), "invalid request body"),
        (msgspec.msgpack.encode({"inputs": msgspec.msgpack.Ext(42, b"x")}), "malformed msgpack"),
        (_truncated_array(), "malformed ndarray"),
        (msgspec.msgpack.encode({"inputs": [[1.0, 2.0, 3.0, 4.0]], "timeout_s": "soon"}), "timeout_s"),
    ],
)
def test_malformed_msgpack_bodies_are_a_400_and_the_registry_keeps_serving(
    stack: StackInfo, iris_servable: str, forest: RandomForestClassifier, body: bytes, expected: str
) -> None:
    response = post_msgpack(stack, iris_servable, body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]
    rows = load_iris().data[:2]
    ok = post_msgpack(stack, iris_servable, encode_body({"inputs": rows, "memoize": False}))
    assert ok.status_code == 200
    assert np.allclose(decode_body(ok.content, dict[str, Any])["output"], forest.predict_proba(rows))
