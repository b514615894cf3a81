"""publish_model end to end on the session's stack (split from tests/unit/test_describe.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata as importlib_metadata
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from dlhub.client import DLHubClient
from dlhub.common.errors import ValidationFailed
from tests.support.stack import StackInfo, unique
from tests.unit.test_describe import AUTHORS, FUNCTIONS


def test_publish_model_random_forest_end_to_end(alice: DLHubClient, stack: StackInfo) -> None:
    iris = load_iris()
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.data, iris.target)
    name = unique("described_rf")
    reply = alice.publish_model(clf, name=name, title="Iris forest, described", authors=AUTHORS)
    assert reply["status"] == "ready" and reply["shorthand_name"] == f"alice/{name}"
    ref = f"alice/{name}"
    rows = iris.data[::25].tolist()
    np.testing.assert_allclose(
        np.asarray(alice.run(ref, rows, method="predict_proba")), clf.predict_proba(np.asarray(rows))
    )
    assert alice.run(ref, rows) == clf.predict(np.asarray(rows)).tolist()
    record = alice.describe(ref)
    assert record["metadata"]["servable"]["model_type"] == "RandomForestClassifier"
    deps = record["metadata"]["dlhub"]["dependencies"]["python"]
    assert deps["scikit-learn"] == importlib_metadata.version("scikit-learn")

    # The generated input type rejects a record of the wrong width before anything is queued.
    with pytest.raises(ValidationFailed) as excinfo:
        alice.run(ref, [[1.0, 2.0, 3.0]], method="predict_proba")
    assert excinfo.value.field == "inputs[0]"


def test_publish_model_type_hinted_function_end_to_end(
    alice: DLHubClient, stack: StackInfo, module_factory: Callable[[str], Any]
) -> None:
    module = module_factory(FUNCTIONS)
    name = unique("described_fn")
    reply = alice.publish_model(module.weighted_sum, name=name, title="Weighted sum", authors=AUTHORS)
    assert reply["status"] == "ready"
    ref = f"alice/{name}"
    assert alice.run(ref, [[1, 2, 3], 2.0]) == 12.0
    assert alice.run(ref, [[1, 2, 3], 2.0], parameters={"offset": 0.5}) == 12.5

    # A bad input type is a 400 from the registry's validation, thanks to the generated types.
    response = httpx.post(
        f"{stack.api}/servables/{ref}/run",
        headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
        json={"inputs": [["a", 2, 3], 2.0]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == "inputs[0][0]"
    with pytest.raises(ValidationFailed):
        alice.run(ref, [[1, 2, 3]])  # one argument short

    matrix = unique("described_matrix")
    alice.publish_model(module.describe_matrix, name=matrix, title="Matrix size", authors=AUTHORS)
    assert alice.run(f"alice/{matrix}", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) == [3, 2]
    with pytest.raises(ValidationFailed):
        alice.run(f"alice/{matrix}", [1.0, 2.0])


@pytest.fixture(scope="module")
def alice(stack: StackInfo) -> Iterator[DLHubClient]:
    client = DLHubClient(stack.url, stack.tokens["alice"])
    yield client
    client.close()
