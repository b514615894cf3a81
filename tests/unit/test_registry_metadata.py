"""Publication document validation and normalisation."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from dlhub.common.errors import ValidationFailed
from dlhub.common.payloads import MethodTypes, TypeSummary
from dlhub.registry.argtypes import method_types, type_summary
from dlhub.registry.metadata import (
    normalise_publication,
    publication_schema,
    search_document,
    validate_publication,
)
from tests.support.sdk_documents import SDK_EXAMPLE_PATH

# Verbatim from /work/shared/reference/dlhub-metadata.md: produced by the DLHub SDK 2.1.0 for scikit-learn.


def sdk_example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SDK_EXAMPLE_PATH.read_text())
    return doc


def field_of(doc: Any) -> str | None:
    with pytest.raises(ValidationFailed) as info:
        validate_publication(doc)
    assert info.value.http_status == 400
    return info.value.field


def test_schema_is_draft_2020_12() -> None:
    assert publication_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_sdk_example_validates_unchanged() -> None:
    doc = sdk_example()
    original = copy.deepcopy(doc)
    assert validate_publication(doc) is doc
    assert doc == original


def test_missing_creators_names_the_field() -> None:
    doc = sdk_example()
    del doc["datacite"]["creators"]
    assert field_of(doc) == "datacite.creators"


def test_empty_creators_names_the_field() -> None:
    doc = sdk_example()
    doc["datacite"]["creators"] = []
    assert field_of(doc) == "datacite.creators"


def test_missing_run_method_names_the_field() -> None:
    doc = sdk_example()
    doc["servable"]["methods"] = {"predict": doc["servable"]["methods"]["run"]}
    assert field_of(doc) == "servable.methods.run"


@pytest.mark.parametrize("name", ["iris rf", "", "-iris", "a/b", "x" * 129, "iris\n"])
def test_bad_name(name: str) -> None:
    doc = sdk_example()
    doc["dlhub"]["name"] = name
    assert field_of(doc) == "dlhub.name"


def test_missing_name() -> None:
    doc = sdk_example()
    del doc["dlhub"]["name"]
    assert field_of(doc) == "dlhub.name"


def test_nested_paths_use_indices() -> None:
    doc = sdk_example()
    doc["datacite"]["titles"] = [{"title": ""}]
    assert field_of(doc) == "datacite.titles[0].title"


def test_bad_visible_to_entry() -> None:
    doc = sdk_example()
    doc["dlhub"]["visible_to"] = ["everyone"]
    assert field_of(doc) == "dlhub.visible_to[0]"


def test_globus_urns_are_accepted() -> None:
    doc = sdk_example()
    doc["dlhub"]["visible_to"] = [
        "urn:globus:auth:identity:12345678-1234-1234-1234-123456789abc",
        "urn:globus:groups:id:12345678-1234-1234-1234-123456789abc",
        "user:bob",
    ]
    validate_publication(doc)


def test_not_an_object() -> None:
    assert field_of([1, 2]) == "metadata"


def test_servable_section_required_for_servables() -> None:
    doc = sdk_example()
    del doc["servable"]
    assert field_of(doc) == "servable"


def test_normalise_fills_service_fields_without_touching_input() -> None:
    doc = sdk_example()
    out = normalise_publication(doc, owner="alice", document_id="abc", published_at_ms=1234)
    assert out["dlhub"]["owner"] == "alice"
    assert out["dlhub"]["shorthand_name"] == "alice/iris_rf"
    assert out["dlhub"]["publication_date"] == 1234
    assert out["dlhub"]["id"] == "abc"
    assert "owner" not in doc["dlhub"]
    validate_publication(out)  # a described document can be sent back as an update


def test_search_document() -> None:
    doc = sdk_example()
    doc["datacite"]["descriptions"] = [
        {"description": "methods text", "descriptionType": "Methods"},
        {"description": "An iris classifier", "descriptionType": "Abstract"},
    ]
    doc["datacite"]["subjects"] = [{"subject": "flowers"}]
    doc["dlhub"]["domains"] = ["biology"]
    sd = search_document(owner="alice", name="iris_rf", version=2, metadata=doc, published_at_ms=5000)
    assert sd.id == "alice/iris_rf"
    assert sd.title == "Iris RF"
    assert sd.description == "An iris classifier"
    assert sd.authors == ["Jane Doe"]
    assert sd.keywords == ["flowers"]
    assert sd.domains == ["biology"]
    assert sd.model_type == "RandomForestClassifier"
    assert sd.servable_type == "Scikit-learn estimator"
    assert sd.publication_date_s == 5.0
    assert "public" in sd.visible_to and "user:alice" in sd.visible_to


def test_search_document_carries_the_method_types() -> None:
    """The SDK's scikit-learn document: rows of 4 floats in, rows of 3 class probabilities out."""
    sd = search_document(owner="alice", name="iris_rf", version=2, metadata=sdk_example(), published_at_ms=1)
    assert sd.methods == [
        MethodTypes(
            method="run",
            input=TypeSummary(type="ndarray", item_types=["float"], shape=[None, 4]),
            output=TypeSummary(type="ndarray", item_types=["float"], shape=[None, 3]),
        )
    ]


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ({"type": " NDArray ", "shape": [2, None]}, TypeSummary(type="ndarray", shape=[2, None])),
        ({"type": "ndarray", "item_type": {"type": "float"}},
         TypeSummary(type="ndarray", item_types=["float"])),
        ({"type": "ndarray", "shape": []}, TypeSummary(type="ndarray", shape=[])),
        ({"type": "ndarray", "shape": [-1, 4]}, TypeSummary(type="ndarray")),  # malformed: no shape
        ({"type": "ndarray", "shape": [2**64]}, TypeSummary(type="ndarray")),  # beyond 64 bits: no shape
        ({"type": "list", "shape": [3]}, TypeSummary(type="list")),  # only ndarrays have shapes
        (
            {"type": "list", "item_type": {"type": "ndarray", "shape": [3], "item_type": {"type": "Float"}}},
            TypeSummary(type="list", item_types=["ndarray", "float"]),
        ),
        (
            {"type": "tuple", "element_types": [{"type": "string"}]},
            TypeSummary(type="tuple"),  # the chain follows item_type only
        ),
        ({"type": "list", "item_type": {"type": "dict", "item_type": {"type": "x"}}},
         TypeSummary(type="list", item_types=["dict"])),
        ({"type": "python object"}, TypeSummary(type="python object")),
        ({"type": ""}, None),
        ({"type": "x" * 300}, None),
        ({"shape": [1]}, None),
        ("ndarray", None),
    ],
)  # fmt: skip
def test_type_summary(description: Any, expected: TypeSummary | None) -> None:
    assert type_summary(description) == expected


def test_method_types_skip_methods_without_types() -> None:
    doc = {"servable": {"methods": {"a": {"parameters": {}}, "b": {"output": {"type": "string"}}, "c": 3}}}
    assert method_types(doc) == [MethodTypes(method="b", output=TypeSummary(type="string"))]
    assert method_types({"servable": {"type": "pipeline", "steps": []}}) == []
    deep: dict[str, Any] = {"type": "float"}
    for _ in range(100):
        deep = {"type": "list", "item_type": deep}
    summary = type_summary(deep)
    assert summary is not None and len(summary.item_types) == 32 and summary.item_types[0] == "list"
