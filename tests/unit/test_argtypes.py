"""DLHub argument types: validators compiled from method input descriptions (registry argtypes.py)."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from dlhub.common import argtypes as common_argtypes
from dlhub.common.errors import ValidationFailed
from dlhub.registry import argtypes
from dlhub.registry.argtypes import check_method_types, check_run_inputs, compile_type, validate
from dlhub.registry.metadata import validate_publication
from dlhub.registry.store import VersionRecord

FLOAT = {"type": "float"}


def fails(description: dict[str, Any], value: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as excinfo:
        validate(compile_type(description), value)
    assert excinfo.value.code == "validation_error"
    assert excinfo.value.field is not None
    assert excinfo.value.message.startswith(excinfo.value.field + ": ")
    return excinfo.value


def ok(description: dict[str, Any], value: Any) -> None:
    validate(compile_type(description), value)


# -- scalars -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "good", "bad"),
    [
        ("boolean", [True, False], [0, 1, "true", None, 1.0]),
        ("integer", [0, -3, 10**20], [1.5, True, "1", None]),
        ("float", [1.5, 0, -2, 10**20], [True, False, "1.5", None, [1.0]]),
        ("number", [1.5, 3], [True, "3", None]),
        ("complex", [[1, 2], [1.5, -0.5], {"real": 1, "imag": 2.5}, 3, 2.5], [[1], [1, 2, 3], [True, 1]]),
        ("string", ["", "abc"], [1, None, ["a"], True]),
        ("datetime", ["2024-05-01T12:30:00", "2024-05-01T12:30:00Z", "2024-05-01"], ["yesterday", 5, ""]),
        ("timedelta", [90, 1.5, "PT1H30M", "P1DT2H", "P2W", "-PT5S"], ["P", "PT", "1h", True, None]),
    ],
)
def test_scalar_types(type_name: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        ok({"type": type_name}, value)
    for value in bad:
        error = fails({"type": type_name}, value)
        assert error.field == "inputs"


def test_booleans_are_not_numbers_and_integers_are_floats() -> None:
    assert "expected float, got boolean" in fails(FLOAT, True).message
    assert "expected integer, got boolean" in fails({"type": "integer"}, False).message
    assert "expected number, got boolean" in fails({"type": "number"}, True).message
    ok(FLOAT, 3)
    error = fails({"type": "ndarray", "shape": [2], "item_type": FLOAT}, [1.0, True])
    assert error.field == "inputs[1]" and "expected float, got boolean" in error.message
    ok({"type": "ndarray", "shape": [3], "item_type": FLOAT}, [1, 2.5, -3])


def test_complex_messages_name_the_accepted_forms() -> None:
    error = fails({"type": "complex"}, {"real": 1})
    assert "real" in error.message and "imag" in error.message


# -- ndarray -----------------------------------------------------------------------------------------------

IRIS = {"type": "ndarray", "shape": [None, 4], "item_type": FLOAT}


def test_ndarray_rows_of_a_fixed_width() -> None:
    ok(IRIS, [[5.1, 3.5, 1.4, 0.2], [6, 3, 5, 2]])
    ok(IRIS, [])
    error = fails(IRIS, [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3]])
    assert error.field == "inputs[3]"
    assert error.message == "inputs[3]: expected 4 floats, got 3"
    error = fails(IRIS, [[1, 2, 3]])
    assert error.message == "inputs[0]: expected 4 floats, got 3"


def test_ndarray_dimensions() -> None:
    error = fails(IRIS, [1, 2, 3, 4])
    assert error.message == "inputs: expected 2 dimensions, got 1" and error.field == "inputs"
    error = fails(IRIS, [[[1, 2, 3, 4]]])
    assert error.message == "inputs: expected 2 dimensions, got 3"
    error = fails(IRIS, "1,2,3,4")
    assert error.field == "inputs" and "expected 2-dimensional array" in error.message
    assert "got string" in error.message


def test_ndarray_ragged_and_item_errors_name_the_element() -> None:
    error = fails(IRIS, [[1, 2, 3, 4], 5])
    assert error.field == "inputs[1]" and "expected list" in error.message and "got integer" in error.message
    error = fails(IRIS, [[1, 2, 3, 4], [1, 2, "x", 4]])
    assert error.message == "inputs[1][2]: expected float, got string"
    error = fails(IRIS, [[1, 2, 3, 4], [1, 2, None, 4]])
    assert error.field == "inputs[1][2]" and "got null" in error.message


def test_ndarray_fixed_outer_dimensions_and_nested_shapes() -> None:
    image = {"type": "ndarray", "shape": [2, None, 3], "item_type": {"type": "integer"}}
    ok(image, [[[1, 2, 3]], [[4, 5, 6], [7, 8, 9]]])
    error = fails(image, [[[1, 2, 3]]])
    assert error.message == "inputs: expected 2 lists, got 1"
    error = fails(image, [[[1, 2, 3]], [[4, 5, 6], [7, 8]]])
    assert error.message == "inputs[1][1]: expected 3 integers, got 2"
    error = fails(image, [[[1, 2, 3]], [[4, 5, 6.5]]])
    assert error.message == "inputs[1][0][2]: expected integer, got float"
    single = {"type": "ndarray", "shape": [1], "item_type": FLOAT}
    assert fails(single, [1, 2]).message == "inputs: expected 1 float, got 2"


def test_ndarray_without_item_type_zero_dimensions_and_complex_items() -> None:
    ok({"type": "ndarray", "shape": [None, 2]}, [["a", None], [{}, [1]]])
    ok({"type": "ndarray", "shape": []}, 4.5)
    ok({"type": "ndarray", "shape": [], "item_type": FLOAT}, 4.5)
    assert fails({"type": "ndarray", "shape": [], "item_type": FLOAT}, [4.5]).field == "inputs"
    complex_vector = {"type": "ndarray", "shape": [None], "item_type": {"type": "complex"}}
    ok(complex_vector, [[1, 2], {"real": 0, "imag": 1}, 3])
    assert fails(complex_vector, [[1, 2], [1]]).field == "inputs[1]"
    dates = {"type": "ndarray", "shape": [None], "item_type": {"type": "datetime"}}
    assert fails(dates, ["2024-01-01", "soon"]).field == "inputs[1]"


def test_large_arrays_validate_quickly() -> None:
    check = compile_type({"type": "ndarray", "shape": [None, 100], "item_type": FLOAT})
    rows = [[float(i)] * 100 for i in range(1000)]  # 100k floats
    started = time.perf_counter()
    validate(check, rows)
    assert time.perf_counter() - started < 0.5


# -- list, tuple, dict, file, python object ----------------------------------------------------------------


def test_list_item_types_and_paths() -> None:
    strings = {"type": "list", "item_type": {"type": "string"}}
    ok(strings, ["a", "b"])
    ok(strings, [])
    error = fails(strings, "a string where a list is expected")
    assert error.message == "inputs: expected list, got string"
    assert fails(strings, ["a", 1]).message == "inputs[1]: expected string, got integer"
    ok({"type": "list"}, [1, "a", None])
    nested = {"type": "list", "item_type": {"type": "list", "item_type": {"type": "boolean"}}}
    assert fails(nested, [[True], [False, 0]]).field == "inputs[1][1]"


def test_tuple_exact_length_and_element_types() -> None:
    pair = {"type": "tuple", "element_types": [{"type": "string"}, {"type": "integer"}]}
    ok(pair, ["x", 1])
    assert fails(pair, ["x"]).message == "inputs: expected tuple of 2 elements, got 1"
    assert fails(pair, ["x", 1, 2]).message == "inputs: expected tuple of 2 elements, got 3"
    assert fails(pair, [1, 1]).message == "inputs[0]: expected string, got integer"
    assert fails(pair, {"0": "x"}).field == "inputs"


def test_dict_properties_required_and_typed_extra_keys_allowed() -> None:
    record = {
        "type": "dict",
        "properties": {
            "name": {"type": "string"},
            "weights": {"type": "ndarray", "shape": [3], "item_type": FLOAT},
            "odd key": {"type": "integer"},
        },
    }
    ok(record, {"name": "a", "weights": [1, 2, 3], "odd key": 1, "extra": object()})
    assert fails(record, {"weights": [1, 2, 3], "odd key": 1}).message == "inputs: missing key 'name'"
    error = fails(record, {"name": "a", "weights": [1, 2], "odd key": 1})
    assert error.message == "inputs.weights: expected 3 floats, got 2"
    assert fails(record, {"name": "a", "weights": [1, 2, 3], "odd key": "1"}).field == "inputs['odd key']"
    assert fails(record, [1]).message == "inputs: expected dict, got list"


def test_file_references() -> None:
    file = {"type": "file", "file_types": ["image/png"]}
    ok(file, {"url": "https://example.org/a.png"})
    ok(file, {"url": "http://example.org/a.png", "headers": {"Authorization": "Bearer x"}})
    ok(file, {"blob": "abc123"})
    assert fails(file, "https://example.org/a.png").field == "inputs"
    assert fails(file, {"url": "ftp://example.org/a"}).field == "inputs.url"
    assert fails(file, {"url": "https://example.org", "headers": {"X": 1}}).field == "inputs.headers.X"
    assert fails(file, {"url": "https://example.org", "headers": ["X"]}).field == "inputs.headers"
    assert fails(file, {"blob": ""}).field == "inputs.blob"
    assert fails(file, {}).field == "inputs"


def test_python_object_and_unknown_types_accept_anything() -> None:
    assert compile_type({"type": "python object", "python_type": "builtins.object"}) is None
    assert compile_type({"description": "no type"}) is None
    assert compile_type("not even a dict") is None
    common_argtypes._warned_unknown.discard("quaternion")
    assert compile_type({"type": "quaternion"}) is None
    assert "quaternion" in common_argtypes._warned_unknown  # logged once
    assert compile_type({"type": "quaternion"}) is None
    wrapper = {"type": "list", "item_type": {"type": "quaternion"}}
    ok(wrapper, [1, "a"])
    assert fails(wrapper, "a").field == "inputs"


def test_deeply_nested_descriptions_stop_checking_beyond_the_limit() -> None:
    description: dict[str, Any] = {"type": "integer"}
    for _ in range(argtypes.MAX_TYPE_DEPTH + 5):
        description = {"type": "list", "item_type": description}
    value: Any = 1
    for _ in range(argtypes.MAX_TYPE_DEPTH + 5):
        value = [value]
    ok(description, value)
    with pytest.raises(ValidationFailed) as excinfo:
        check_method_types({"servable": {"methods": {"run": {"input": description}}}})
    assert excinfo.value.field is not None and excinfo.value.field.startswith("servable.methods.run.input")


# -- the run path: caching per version and method ----------------------------------------------------------


def record(input_type: dict[str, Any], name: str = "fn", published_at_ms: int = 1) -> VersionRecord:
    metadata = {"servable": {"methods": {"run": {"input": input_type}, "other": {}}}}
    return VersionRecord(
        owner="alice", name=name, version=1, status="ready", metadata=metadata,
        published_at_ms=published_at_ms,
    )  # fmt: skip


def test_check_run_inputs_compiles_once_per_version_and_method() -> None:
    argtypes._cache.clear()
    iris = record(IRIS)
    check_run_inputs(iris, "run", [[1, 2, 3, 4]])
    check_run_inputs(iris, "other", "anything")  # no declared input: accepted
    assert len(argtypes._cache) == 2
    compiled = argtypes._cache[("alice", "fn", 1, 1, "run")]
    with pytest.raises(ValidationFailed) as excinfo:
        check_run_inputs(iris, "run", [[1, 2, 3]])
    assert excinfo.value.to_dict() == {
        "type": "validation_error",
        "message": "inputs[0]: expected 4 floats, got 3",
        "field": "inputs[0]",
    }
    assert argtypes._cache[("alice", "fn", 1, 1, "run")] is compiled
    # The same version number published again (after a delete) is a different document.
    check_run_inputs(record({"type": "string"}, published_at_ms=2), "run", "x")


def test_python_object_run_path_costs_next_to_nothing() -> None:
    noop = record({"type": "python object", "python_type": "builtins.object"}, name="noop")
    check_run_inputs(noop, "run", None)
    rounds = 20000
    started = time.perf_counter()
    for _ in range(rounds):
        check_run_inputs(noop, "run", None)
    per_call_us = (time.perf_counter() - started) / rounds * 1e6
    assert per_call_us < 20, per_call_us


# -- publish time ------------------------------------------------------------------------------------------


def publication(input_type: Any) -> dict[str, Any]:
    return {
        "dlhub": {"name": "typed", "type": "servable"},
        "datacite": {
            "identifier": {"identifier": "10.datacite/placeholder", "identifierType": "DOI"},
            "creators": [{"givenName": "Jane", "familyName": "Doe"}],
            "titles": [{"title": "Typed"}],
            "publisher": "DLHub",
            "publicationYear": "2024",
            "resourceType": {"resourceTypeGeneral": "InteractiveResource"},
        },
        "servable": {"methods": {"run": {"input": input_type, "output": {"type": "python object"}}}},
    }


def test_publish_accepts_well_formed_and_unknown_types() -> None:
    for input_type in (
        IRIS,
        {"type": "ndarray", "shape": [], "item_type": FLOAT},
        {"type": "tuple", "element_types": [{"type": "string"}, {"type": "timedelta"}]},
        {"type": "dict", "properties": {"a": {"type": "file", "file_types": ["text/csv"]}}},
        {"type": "some future type", "whatever": 1},
    ):
        validate_publication(copy.deepcopy(publication(input_type)))


RUN_INPUT = "servable.methods.run.input"


@pytest.mark.parametrize(
    ("input_type", "field"),
    [
        ({"type": "ndarray", "shape": [None, -4]}, f"{RUN_INPUT}.shape"),
        ({"type": "ndarray", "shape": [None, 4.5]}, f"{RUN_INPUT}.shape[1]"),
        ({"type": "ndarray", "shape": "[None, 4]"}, f"{RUN_INPUT}.shape"),
        ({"type": "ndarray", "shape": [1] * 33}, f"{RUN_INPUT}.shape"),
        ({"type": "list", "item_type": {"type": "ndarray", "shape": [-1]}}, f"{RUN_INPUT}.item_type.shape"),
        ({"type": "tuple", "element_types": [{"type": 3}]}, f"{RUN_INPUT}.element_types[0].type"),
        ({"type": "dict", "properties": {"a": {"shape": [1]}}}, f"{RUN_INPUT}.properties.a.type"),
        ({"description": "no type"}, f"{RUN_INPUT}.type"),
    ],
)
def test_publish_rejects_malformed_type_descriptions(input_type: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as excinfo:
        validate_publication(publication(input_type))
    assert excinfo.value.field == field, excinfo.value.message
