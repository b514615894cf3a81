"""Class-method and ONNX servables end to end: SDK-layout documents published and run over REST."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dlhub.client import DLHubClient
from tests.support.stack import StackInfo, unique
from tests.support.type_servables import (
    CLASS_SHIM,
    ONNX_SHIM,
    TWO_INPUTS,
    WEIGHTS,
    class_method,
    import_class_module,
    linear_relu_model,
    linear_relu_reference,
    onnx_method,
    pickled_scaler,
    two_input_model,
)


def sdk_document(
    name: str, servable_type: str, shim: str, files: dict[str, Any], methods: dict[str, Any], **servable: Any
) -> dict[str, Any]:
    """The document layout DLHub SDK 2.1.0 writes (see shared/reference/dlhub-metadata.md)."""
    return {
        "dlhub": {"version": "2.1.0", "domains": [], "visible_to": ["public"], "name": name, "files": files,
                  "dependencies": {"python": {}}, "type": "servable"},
        "datacite": {"identifier": {"identifier": "10.datacite/placeholder", "identifierType": "DOI"},
                     "creators": [{"nameIdentifiers": [], "affiliations": ["Argonne"], "familyName": "Doe",
                                   "givenName": "Jane"}],
                     "titles": [{"title": f"{servable_type} {name}"}], "publisher": "DLHub",
                     "publicationYear": "", "subjects": [],
                     "resourceType": {"resourceTypeGeneral": "InteractiveResource"}, "contributors": [],
                     "descriptions": [], "alternateIdentifiers": [], "relatedIdentifiers": [],
                     "rightsList": [], "fundingReferences": []},
        "servable": {"type": servable_type, "shim": shim, "methods": methods, **servable},
    }  # fmt: skip


def rest_run(stack: StackInfo, token: str, servable: str, inputs: Any, method: str | None = None) -> Any:
    body: dict[str, Any] = {"inputs": inputs}
    if method is not None:
        body["method"] = method
    response = httpx.post(
        f"{stack.api}/servables/{servable}/run",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["state"] == "completed", reply
    return reply["output"]


def test_python_class_method_document_publishes_and_runs(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path
) -> None:
    module_name = unique("e2escaler")
    module = import_class_module(tmp_path, module_name)
    try:
        (tmp_path / "scaler.pkl").write_bytes(pickled_scaler(module, factor=2, offset=1, weights=WEIGHTS))
    finally:
        del sys.modules[module_name]
    name = unique("scaler")
    class_name = f"{module_name}.Scaler"
    doc = sdk_document(
        name, "Python class method", CLASS_SHIM,
        {"pickle": "scaler.pkl", "other": [f"{module_name}.py"]},
        {
            "run": class_method("transform", class_name=class_name),
            "project": class_method("project", class_name=class_name),
            "pair": class_method("pair", unpack=True, class_name=class_name),
        },
        options={"serialization_method": "pickle"},
    )  # fmt: skip
    reply = alice.publish(doc, base_dir=tmp_path)
    assert reply["status"] == "ready"
    token = stack.tokens["alice"]
    assert rest_run(stack, token, f"alice/{name}", [1, 2, 3]) == [3, 5, 7]
    assert rest_run(stack, token, f"alice/{name}", [2, 3], method="pair") == 10
    projected = rest_run(stack, token, f"alice/{name}", [[1, 1, 1]], method="project")
    np.testing.assert_allclose(np.asarray(projected), [[2.0, 3.0]])
    assert alice.run(f"alice/{name}", [0]) == [1]


def test_onnx_document_publishes_and_runs(stack: StackInfo, alice: DLHubClient, tmp_path: Path) -> None:
    linear_relu_model(tmp_path / "linear.onnx")
    two_input_model(tmp_path / "two.onnx")
    token = stack.tokens["alice"]

    name = unique("onnx_linear")
    doc = sdk_document(
        name, "ONNX model", ONNX_SHIM, {"model": "linear.onnx"},
        {"run": onnx_method(), "relu": onnx_method(output_name="relu"), "all": onnx_method(all_outputs=True)},
        model_type="ONNX",
    )  # fmt: skip
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    rows = [[1, 2, 3], [-1, 0.5, 2]]
    linear, relu = linear_relu_reference(rows)
    np.testing.assert_allclose(np.asarray(rest_run(stack, token, f"alice/{name}", rows)), linear, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(rest_run(stack, token, f"alice/{name}", rows, method="relu")), relu, rtol=1e-6
    )
    both = rest_run(stack, token, f"alice/{name}", rows, method="all")
    np.testing.assert_allclose(np.asarray(both["relu"]), relu, rtol=1e-6)

    two = unique("onnx_two")
    doc = sdk_document(two, "ONNX model", ONNX_SHIM, {"model": "two.onnx"}, {"run": onnx_method(TWO_INPUTS)})
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    summed = rest_run(stack, token, f"alice/{two}", {"a": [[1, 2]], "b": [[0.5, 0.25]]})
    np.testing.assert_allclose(np.asarray(summed), [[1.5, 2.25]])
