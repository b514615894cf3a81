"""``dlhub.client.describe``: documents built from live objects, and ``publish_model`` end to end."""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from dlhub.client.describe import (
    Described,
    argument_type,
    describe,
    function_signature,
    imported_top_level_modules,
    type_description,
)
from dlhub.registry.metadata import validate_publication

AUTHORS = ["Doe, Jane"]

FUNCTIONS = '''
"""Functions published by tests/unit/test_describe.py and tests/stack/test_describe_publish.py."""

import json
import os.path
from collections import Counter

import numpy as np


def weighted_sum(values: list[float], weight: float, *, offset: float = 0.0) -> float:
    return float(np.sum(values)) * weight + offset


def word_counts(text: str) -> dict[str, int]:
    return dict(Counter(text.split()))


def describe_matrix(rows: list[list[float]]) -> tuple[int, int]:
    return len(rows), len(rows[0]) if rows else 0


def dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True)
'''


def _describe(obj: Any, **kwargs: Any) -> Described:
    return describe(obj, name=kwargs.pop("name", "described"), title="Described", authors=AUTHORS, **kwargs)


# -- type hints -> argument types --------------------------------------------------------------------------


class Point(TypedDict):
    x: float
    label: str


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "float"}),
        (bool, {"type": "boolean"}),
        (str, {"type": "string"}),
        (complex, {"type": "complex"}),
        (dt.datetime, {"type": "datetime"}),
        (dt.timedelta, {"type": "timedelta"}),
        (list, {"type": "list"}),
        (list[int], {"type": "list", "item_type": {"type": "integer"}}),
        (
            list[list[float]],
            {"type": "list", "item_type": {"type": "list", "item_type": {"type": "float"}}},
        ),
        (tuple[int, str], {"type": "tuple", "element_types": [{"type": "integer"}, {"type": "string"}]}),
        (tuple[float, ...], {"type": "list", "item_type": {"type": "float"}}),
        (dict, {"type": "dict"}),
        (dict[str, int], {"type": "dict"}),
        (Point, {"type": "dict", "properties": {"x": {"type": "float"}, "label": {"type": "string"}}}),
        (np.ndarray, {"type": "ndarray"}),
        (npt.NDArray[np.float64], {"type": "ndarray", "item_type": {"type": "float"}}),
        (Any, {"type": "python object", "python_type": "builtins.object"}),
        (bytes, {"type": "python object", "python_type": "builtins.bytes"}),
        (Path, {"type": "python object", "python_type": "pathlib.Path"}),
    ],
)
def test_type_hints_map_to_argument_types(hint: Any, expected: dict[str, Any]) -> None:
    assert argument_type(hint) == expected


def test_optional_and_unions_are_python_objects() -> None:
    assert type_description(int | None)["type"] == "python object"


def _one(values: list[float]) -> float:
    return sum(values)


def _two(values: list[list[float]], scale: float, *, shift: int = 1, label: str = "x") -> list[float]:
    return [sum(v) * scale + shift for v in values]


def _none() -> str:
    return "hello"


def _untyped(a, b=2):  # type: ignore[no-untyped-def]
    return a


def test_single_input_is_not_unpacked() -> None:
    sig = function_signature(_one)
    assert sig.unpack is False and sig.parameters == {}
    assert sig.input == {"type": "list", "item_type": {"type": "float"}, "description": "values"}
    assert sig.output["type"] == "float"


def test_multiple_inputs_become_an_unpacked_tuple_and_defaults_parameters() -> None:
    sig = function_signature(_two)
    assert sig.unpack is True
    assert sig.input["type"] == "tuple"
    assert sig.input["element_types"] == [
        {
            "type": "list",
            "item_type": {"type": "list", "item_type": {"type": "float"}},
            "description": "values",
        },
        {"type": "float", "description": "scale"},
    ]
    assert sig.parameters == {"shift": 1, "label": "x"}
    assert sig.output["type"] == "list" and sig.output["item_type"] == {"type": "float"}


def test_no_inputs_is_an_empty_unpacked_tuple_and_untyped_is_python_object() -> None:
    sig = function_signature(_none)
    assert sig.unpack is True and sig.input["element_types"] == []
    untyped = function_signature(_untyped)
    assert untyped.input["type"] == "python object" and untyped.parameters == {"b": 2}


def test_var_positional_and_required_keyword_only_are_refused() -> None:
    def star(*values: float) -> float:
        return sum(values)

    def kwonly(x: int, *, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"\*values"):
        function_signature(star)
    with pytest.raises(TypeError, match="'y'"):
        function_signature(kwonly)


# -- functions ---------------------------------------------------------------------------------------------


def test_function_document_validates_and_ships_its_module(module_factory: Callable[[str], Any]) -> None:
    module = module_factory(FUNCTIONS)
    described = _describe(module.weighted_sum, domains=["math"], description="Weighted sum")
    doc = validate_publication(described.metadata)
    assert described.files == {f"{module.__name__}.py": FUNCTIONS.encode()}
    assert doc["dlhub"]["files"] == {"other": [f"{module.__name__}.py"]}
    assert doc["dlhub"]["domains"] == ["math"]
    run = doc["servable"]["methods"]["run"]
    assert doc["servable"]["shim"] == "python.PythonStaticMethodServable"
    assert run["method_details"] == {
        "module": module.__name__,
        "method_name": "weighted_sum",
        "autobatch": False,
        "unpack": True,
    }
    assert run["parameters"] == {"offset": 0.0}
    assert [e["type"] for e in run["input"]["element_types"]] == ["list", "float"]
    assert run["output"]["type"] == "float"
    # numpy is a third-party import with its installed version; json, os, collections are stdlib.
    assert doc["dlhub"]["dependencies"]["python"] == {"numpy": importlib_metadata.version("numpy")}

    with tarfile.open(fileobj=io.BytesIO(described.package()), mode="r:gz") as tar:
        assert tar.getnames() == [f"{module.__name__}.py"]


def test_dependencies_can_be_added_and_autobatch_wraps_types(module_factory: Callable[[str], Any]) -> None:
    module = module_factory(FUNCTIONS)
    described = _describe(module.word_counts, autobatch=True, dependencies={"extra-pkg": "1.0"})
    doc = validate_publication(described.metadata)
    run = doc["servable"]["methods"]["run"]
    assert run["method_details"]["autobatch"] is True and run["method_details"]["unpack"] is False
    assert run["input"]["type"] == "list" and run["input"]["item_type"]["type"] == "string"
    assert run["output"]["item_type"]["type"] == "dict"
    assert doc["dlhub"]["dependencies"]["python"]["extra-pkg"] == "1.0"


def test_imported_modules_are_parsed_with_ast() -> None:
    source = "import os.path, numpy as np\nfrom scipy import stats\nfrom . import sibling\n"
    source += "def f():\n    import sklearn.base\n"
    assert imported_top_level_modules(source) == {"os", "numpy", "scipy", "sklearn"}


def test_functions_that_cannot_be_imported_are_refused() -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="not importable"):
        _describe(local)
    with pytest.raises(TypeError, match="expected a fitted scikit-learn estimator"):
        _describe(42)


# -- scikit-learn ------------------------------------------------------------------------------------------


def test_sklearn_classifier_document() -> None:
    iris = load_iris()
    clf = RandomForestClassifier(n_estimators=5, random_state=0).fit(iris.data, iris.target)
    described = _describe(clf, name="iris_rf")
    doc = validate_publication(described.metadata)
    servable = doc["servable"]
    assert servable["shim"] == "sklearn.ScikitLearnServable"
    assert servable["model_type"] == "RandomForestClassifier"
    assert servable["model_summary"] == repr(clf)
    options = {"serialization_method": "pickle", "classes": [0, 1, 2], "is_classifier": True}
    assert servable["options"] == options
    methods = servable["methods"]
    assert set(methods) == {"run", "predict_proba"}
    assert methods["run"]["input"]["shape"] == [None, 4]
    assert methods["run"]["input"]["item_type"] == {"type": "float"}
    assert methods["run"]["output"]["shape"] == [None]
    assert methods["run"]["method_details"] == {"method_name": "predict"}
    assert methods["predict_proba"]["output"]["shape"] == [None, 3]
    assert methods["predict_proba"]["method_details"] == {"method_name": "predict_proba"}
    assert doc["dlhub"]["files"] == {"model": "model.pkl"}
    restored = pickle.loads(described.files["model.pkl"])
    np.testing.assert_allclose(restored.predict_proba(iris.data), clf.predict_proba(iris.data))
    python = doc["dlhub"]["dependencies"]["python"]
    for dist in ("scikit-learn", "numpy", "joblib"):
        assert python[dist] == importlib_metadata.version(dist)


def test_sklearn_string_classes_and_joblib() -> None:
    iris = load_iris()
    labels = iris.target_names[iris.target]
    clf = LogisticRegression(max_iter=500).fit(iris.data, labels)
    described = _describe(clf, serialization_method="joblib")
    doc = validate_publication(described.metadata)
    assert doc["dlhub"]["files"] == {"model": "model.joblib"} and set(described.files) == {"model.joblib"}
    assert doc["servable"]["options"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert doc["servable"]["options"]["serialization_method"] == "joblib"
    assert doc["servable"]["methods"]["run"]["output"]["item_type"] == {"type": "string"}
    json.dumps(doc)  # the whole document is JSON


def test_sklearn_regressor_document() -> None:
    data = load_diabetes()
    reg = LinearRegression().fit(data.data, data.target)
    doc = validate_publication(_describe(reg).metadata)
    servable = doc["servable"]
    assert servable["model_type"] == "LinearRegression"
    assert servable["options"] == {"serialization_method": "pickle", "is_classifier": False}
    assert set(servable["methods"]) == {"run"}
    assert servable["methods"]["run"]["input"]["shape"] == [None, 10]
    assert servable["methods"]["run"]["output"]["shape"] == [None]


def test_unfitted_estimator_and_unknown_serialization_are_refused() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        _describe(LinearRegression())
    iris = load_iris()
    with pytest.raises(ValueError, match="serialization_method"):
        _describe(LinearRegression().fit(iris.data, iris.target), serialization_method="cloudpickle")
