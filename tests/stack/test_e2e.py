"""End to end over HTTP against the real embedded stack (`dlhub up`: every service its own process)."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import python_function_document
from dlhub.common.errors import Gone, NotFound, PayloadTooLarge, ValidationFailed
from tests.support.e2e_servables import FUNCTIONS
from tests.support.polling import wait_until
from tests.support.sdk_documents import sdk_sklearn_document
from tests.support.stack import MAX_UPLOAD_BYTES, StackInfo, unique

AUTHORS = ["Doe, Jane"]


@pytest.fixture(scope="module")
def anonymous(stack: StackInfo) -> DLHubClient:
    client = DLHubClient(stack.url, None)
    client._http.headers.pop("Authorization", None)
    return client


def function_doc(name: str, function: str, **kwargs: Any) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module="e2efns",
        function=function,
        files=["e2efns.py"],
        title=kwargs.pop("title", f"{function} servable"),
        authors=AUTHORS,
        **kwargs,
    )


def publish_function(client: DLHubClient, pkg_dir: Path, function: str, **kwargs: Any) -> str:
    name = kwargs.pop("name", None) or unique(function)
    reply = client.publish(function_doc(name, function, **kwargs), base_dir=pkg_dir)
    assert reply["status"] == "ready"
    return str(reply["shorthand_name"])


@pytest.fixture(scope="module")
def noop(alice: DLHubClient, pkg_dir: Path) -> str:
    return publish_function(alice, pkg_dir, "noop")


# -- publish, discover, run --------------------------------------------------------------------------------


def test_python_function_publish_search_run_sync_and_async(alice: DLHubClient, pkg_dir: Path) -> None:
    name = unique("meanfn")
    doc = function_doc(name, "mean", title="Arithmetic mean of a vector", domains=["statistics"])
    reply = alice.publish(doc, base_dir=pkg_dir)
    assert reply["version"] == 1 and reply["shorthand_name"] == f"alice/{name}"

    record = alice.describe(f"alice/{name}")
    assert record["status"] == "ready" and record["version"] == 1
    assert record["metadata"]["dlhub"]["owner"] == "alice"
    assert record["metadata"]["datacite"]["titles"][0]["title"] == "Arithmetic mean of a vector"

    def found() -> list[dict[str, Any]]:
        hits: list[dict[str, Any]] = alice.search("arithm", domain="statistics")["hits"]
        return [h for h in hits if h["name"] == name]

    hits = wait_until(found, timeout_s=10, message="search to index the servable")
    assert hits[0]["owner"] == "alice" and hits[0]["version"] == 1
    assert not [h for h in alice.search("arithm", domain="biology")["hits"] if h["name"] == name]
    assert [h for h in alice.search(name)["hits"] if h["name"] == name]

    detailed = alice.run_detailed(f"alice/{name}", [1, 2, 3, 6])
    assert detailed["state"] == "completed" and detailed["output"] == 3
    timings = detailed["timings"]
    assert 0 < timings["inference_ms"] <= timings["invocation_ms"] <= timings["request_ms"]

    handle = alice.run_async(f"alice/{name}", [2, 4])
    assert handle.status()["state"] in {"pending", "running", "completed"}
    assert handle.result(timeout_s=30) == 3
    assert alice.status(handle.task_id)["state"] == "completed"


def test_sklearn_document_from_the_original_sdk_publishes_unchanged(
    alice: DLHubClient, tmp_path: Path
) -> None:
    iris = load_iris()
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.data, iris.target)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(clf))
    name = unique("iris_rf")
    doc = sdk_sklearn_document(name)  # exactly what DLHub SDK 2.1.0's ScikitLearnModel writes
    alice.publish(doc, base_dir=tmp_path)
    rows = iris.data[::30].tolist()
    output = np.asarray(alice.run(f"alice/{name}", rows))
    assert output.shape == (len(rows), 3)
    np.testing.assert_allclose(output, clf.predict_proba(np.asarray(rows)))

    hits = wait_until(
        lambda: alice.search("iris", model_type="RandomForestClassifier")["hits"],
        timeout_s=10,
        message="index",
    )
    assert any(h["name"] == name for h in hits)


def test_sklearn_joblib_predict(alice: DLHubClient, tmp_path: Path) -> None:
    iris = load_iris()
    clf = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    joblib.dump(clf, tmp_path / "model.joblib")
    from dlhub.client.metadata import sklearn_document

    name = unique("iris_lr")
    doc = sklearn_document(
        name=name, model_path="model.joblib", title="Iris logistic regression", authors=AUTHORS,
        n_input_columns=4, method="predict", serialization_method="joblib", model_type="LogisticRegression",
    )  # fmt: skip
    alice.publish(doc, base_dir=tmp_path)
    assert alice.run(f"alice/{name}", iris.data[:5].tolist()) == clf.predict(iris.data[:5]).tolist()


def test_sklearn_client_batch_of_10000_rows_is_one_model_call(alice: DLHubClient, tmp_path: Path) -> None:
    iris = load_iris()
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.data, iris.target)
    joblib.dump(clf, tmp_path / "model.joblib")
    from dlhub.client.metadata import sklearn_document

    name = unique("iris_batch")
    doc = sklearn_document(
        name=name, model_path="model.joblib", title="Iris forest, client batches", authors=AUTHORS,
        n_input_columns=4, method="predict_proba", serialization_method="joblib",
    )  # fmt: skip
    alice.publish(doc, base_dir=tmp_path)
    rng = np.random.default_rng(0)
    rows = np.tile(iris.data, (67, 1))[:10_000] + rng.normal(0, 0.05, (10_000, 4))
    record = alice.run_detailed(f"alice/{name}", rows.tolist(), timeout_s=120)
    assert record["state"] == "completed", record.get("error")
    np.testing.assert_allclose(np.asarray(record["output"]), clf.predict_proba(rows))
    assert record["timings"]["inference_ms"] > 0

    # Concurrent single-row requests are merged at the worker (batchable by default) and split back.
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> list[list[float]]:
        output: list[list[float]] = alice.run(f"alice/{name}", [rows[i].tolist()])
        return output

    with ThreadPoolExecutor(16) as threads:
        outputs = list(threads.map(one, range(48)))
    np.testing.assert_allclose(np.asarray(outputs)[:, 0, :], clf.predict_proba(rows[:48]))


def test_update_makes_a_new_version_and_delete_removes_it(alice: DLHubClient, pkg_dir: Path) -> None:
    name = unique("scalefn")
    alice.publish(function_doc(name, "scale"), base_dir=pkg_dir)
    doc = function_doc(name, "scale", title="Scale a vector, version 2")
    doc["servable"]["methods"]["run"]["parameters"] = {"factor": 10}
    reply = alice.update(f"alice/{name}", doc)
    assert reply["version"] == 2

    record = alice.describe(f"alice/{name}")
    assert record["version"] == 2 and [v["version"] for v in record["versions"]] == [1, 2]
    assert alice.run(f"alice/{name}@1", [1, 2]) == [1, 2]
    assert alice.run(f"alice/{name}", [1, 2]) == [10, 20]
    assert alice.run(f"alice/{name}", [1, 2], parameters={"factor": 3}) == [3, 6]
    assert alice.describe(f"alice/{name}@1")["version"] == 1

    alice.delete(f"alice/{name}")
    # Deleted versions are kept as tombstones: 410 Gone (was 404 before tombstones), see test_lifecycle.py.
    with pytest.raises(Gone):
        alice.describe(f"alice/{name}")
    with pytest.raises(Gone):
        alice.run(f"alice/{name}", [1])
    wait_until(
        lambda: not [h for h in alice.search(name)["hits"] if h["name"] == name],
        timeout_s=10,
        message="de-index",
    )


def test_only_the_owner_may_update_or_delete(alice: DLHubClient, bob: DLHubClient, noop: str) -> None:
    with pytest.raises(Exception) as excinfo:
        bob.delete(noop)
    assert getattr(excinfo.value, "code", "") in {"forbidden", "not_found"}
    assert alice.run(noop, None) == "hello world"


def test_private_servable_is_invisible_to_others(
    alice: DLHubClient, bob: DLHubClient, anonymous: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("private")
    alice.publish(function_doc(name, "noop", visible_to=["user:alice"]), base_dir=pkg_dir)
    assert alice.run(f"alice/{name}", 1) == "hello world"
    for outsider in (bob, anonymous):
        with pytest.raises(NotFound):
            outsider.describe(f"alice/{name}")
        with pytest.raises(NotFound):
            outsider.run(f"alice/{name}", 1)
    wait_until(
        lambda: [h for h in alice.search(name)["hits"] if h["name"] == name],
        timeout_s=10,
        message="owner sees it",
    )
    assert not [h for h in bob.search(name)["hits"] if h["name"] == name]


# -- bad input ---------------------------------------------------------------------------------------------


def test_unknown_servable_is_404(stack: StackInfo, alice: DLHubClient) -> None:
    with pytest.raises(NotFound):
        alice.describe("alice/does_not_exist")
    response = httpx.post(stack.api + "/servables/alice/does_not_exist/run", json={"inputs": 1})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_invalid_metadata_is_400_naming_the_field(stack: StackInfo, alice: DLHubClient) -> None:
    doc = function_doc(unique("bad"), "noop")
    del doc["datacite"]["creators"]
    with pytest.raises(ValidationFailed) as excinfo:
        alice.publish(doc, package=b"")
    assert excinfo.value.field is not None and "creators" in excinfo.value.field

    doc = function_doc("has whitespace", "noop")
    response = httpx.post(
        stack.api + "/servables",
        headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
        files={"metadata": (None, json.dumps(doc), "application/json")},
    )
    assert response.status_code == 400
    assert "name" in response.json()["error"]["field"]


def test_publish_without_token_is_401(stack: StackInfo) -> None:
    doc = function_doc(unique("anon"), "noop")
    response = httpx.post(stack.api + "/servables", files={"metadata": (None, json.dumps(doc))})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"


def test_wrong_input_fails_the_task_and_the_next_request_works(alice: DLHubClient, pkg_dir: Path) -> None:
    name = publish_function(alice, pkg_dir, "mean")
    record = alice.run_detailed(name, "not a list of numbers")
    assert record["state"] == "failed"
    assert record["error"]["type"] == "servable_error"
    assert record["error"]["exception_type"] == "TypeError"
    assert "Traceback" in record["error"]["traceback"]
    with pytest.raises(TaskFailed) as excinfo:
        alice.run(name, [])
    assert excinfo.value.exception_type == "ZeroDivisionError"
    handle = alice.run_async(name, "abc")
    record = handle.wait(30)
    assert record["state"] == "failed" and record["error"]["exception_type"] == "TypeError"
    assert alice.run(name, [4, 6]) == 5


def test_malformed_run_bodies_are_400(stack: StackInfo, noop: str) -> None:
    url = f"{stack.api}/servables/{noop}/run"
    for body in (b"{not json", b"[1, 2]", b'{"inputs": 1, "asynchronous": "maybe"}'):
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "validation_error"
    assert httpx.post(url, json={"inputs": 1}).json()["output"] == "hello world"


def test_oversize_upload_is_413(stack: StackInfo, alice: DLHubClient) -> None:
    doc = function_doc(unique("huge"), "noop")
    with pytest.raises(PayloadTooLarge):
        alice.publish(doc, package=os.urandom(MAX_UPLOAD_BYTES + 1024))
    assert alice.health()["status"] == "ok"


def test_tar_with_parent_entries_is_rejected_and_writes_nothing_outside(
    stack: StackInfo, alice: DLHubClient
) -> None:
    marker = unique("escaped")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for arcname, data in ((f"../../{marker}.txt", b"pwned"), ("e2efns.py", FUNCTIONS.encode())):
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    name = unique("evil")
    with pytest.raises(TaskFailed) as excinfo:
        alice.publish(function_doc(name, "noop"), package=buffer.getvalue())
    assert excinfo.value.error_type == "unsafe_package"
    assert alice.describe(f"alice/{name}")["status"] == "failed"
    root = stack.data_dir.parent
    assert not list(root.rglob(f"{marker}*")), "an archive member escaped the servable store"
    assert not (stack.data_dir / "servables" / "alice" / name / "1").exists()


# -- pipelines and the rest of the surface -----------------------------------------------------------------


def test_two_step_pipeline_chained_in_the_broker(alice: DLHubClient, pkg_dir: Path) -> None:
    double = publish_function(alice, pkg_dir, "double")
    add_one = publish_function(alice, pkg_dir, "add_one")
    assert alice.run_pipeline([double, add_one], [1, 2, 3]) == [3, 5, 7]
    assert alice.run_pipeline([add_one, double], [1, 2, 3]) == [4, 6, 8]
    handle = alice.run_pipeline([double, add_one], [10], asynchronous=True)
    assert handle.result(30) == [21]
    mean = publish_function(alice, pkg_dir, "mean")
    with pytest.raises(TaskFailed) as excinfo:
        alice.run_pipeline([double, mean, add_one], [1, 2])  # add_one gets a float: TypeError at step 2
    assert excinfo.value.step == 2


def test_list_and_openapi(stack: StackInfo, alice: DLHubClient, noop: str) -> None:
    assert noop in {s["shorthand_name"] for s in alice.list(owner="alice")}
    from openapi_spec_validator import validate

    document = httpx.get(stack.api + "/openapi.json").json()
    validate(document)
    assert "/servables/{owner}/{name}/run" in document["paths"]


def test_unknown_task_is_404(stack: StackInfo) -> None:
    response = httpx.get(f"{stack.api}/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
