"""Dataset jobs: rows read forward from chunks (CSV, TSV, JSON lines) and how a row becomes an input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dlhub.common.errors import ValidationFailed
from dlhub.registry.dataset_rows import RowReader, cell_value, tabular_format
from dlhub.registry.jobs import Mapping, input_mapping

pytestmark = pytest.mark.unit


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` cut every ``size`` bytes, so lines, quoted fields and UTF-8 characters straddle chunks."""
    return iter([data[i : i + size] for i in range(0, len(data), size)])


@pytest.mark.parametrize("size", [1, 3, 7, 4096])
def test_csv_rows_across_chunk_boundaries(size: int) -> None:
    data = '\ufeffid,x,text\n0,1.5,"a, b"\n1,-2e3,"two\nlines"\n\n2,,é\n'.encode()
    reader = RowReader(chunks(data, size), "csv")
    assert reader.columns == ["id", "x", "text"]
    rows = reader.take(10)
    assert [r.cells for r in rows] == [
        {"id": 0, "x": 1.5, "text": "a, b"},
        {"id": 1, "x": -2000.0, "text": "two\nlines"},
        {"id": 2, "x": None, "text": "é"},
    ]
    assert [r.index for r in rows] == [0, 1, 2]
    assert reader.take(10) == []


def test_tsv_and_counting() -> None:
    data = b"a\tb\n" + b"".join(f"{i}\tx{i}\n".encode() for i in range(1000))
    reader = RowReader(chunks(data, 100), "tsv")
    assert reader.take(2)[1].cells == {"a": 1, "b": "x1"}
    assert reader.count() == 1000


def test_json_lines_keep_values_and_report_bad_lines_as_rows() -> None:
    data = b'{"a": 1, "b": [1, 2]}\nnot json\n[1]\n{"a": "s"}\n'
    reader = RowReader(chunks(data, 5), "jsonl")
    assert reader.columns == ["a", "b"]
    rows = reader.take(10)
    assert rows[0].cells == {"a": 1, "b": [1, 2]} and rows[3].cells == {"a": "s"}
    assert rows[1].cells is None and "not JSON" in rows[1].error
    assert rows[2].cells is None and "not an object" in rows[2].error
    assert [r.index for r in rows] == [0, 1, 2, 3]


def test_cells_and_formats() -> None:
    assert [cell_value(v) for v in ("12", "-3.5e2", ".5", "", "nan", "1_000", "x")] == [
        12, -350.0, 0.5, None, "nan", "1_000", "x",
    ]  # fmt: skip
    assert tabular_format("d/rows.CSV") == "csv" and tabular_format("r.ndjson") == "jsonl"
    assert tabular_format("r.parquet") is None


MATRIX = {"type": "ndarray", "shape": [None, 2], "item_type": {"type": "float"}}


@pytest.mark.parametrize(
    ("declared", "columns", "expected"),
    [
        (MATRIX, 2, Mapping("batch", "list")),
        ({"type": "list", "item_type": {"type": "list"}}, 2, Mapping("batch", "list")),
        ({"type": "list", "item_type": {"type": "dict"}}, 2, Mapping("batch", "dict")),
        ({"type": "ndarray", "shape": [2]}, 2, Mapping("row", "list")),
        ({"type": "dict"}, 3, Mapping("row", "dict")),
        ({"type": "float"}, 1, Mapping("row", "value")),
        ({"type": "python object"}, 3, Mapping("row", "dict")),
        (None, 3, Mapping("row", "dict")),
    ],
)
def test_input_mapping_follows_the_declared_type(declared: Any, columns: int, expected: Mapping) -> None:
    assert input_mapping(declared, None, columns) == expected


def test_input_mapping_refusals_and_overrides() -> None:
    assert input_mapping({"type": "python object"}, "batch", 2) == Mapping("batch", "dict")
    with pytest.raises(ValidationFailed) as mode:
        input_mapping(MATRIX, "row", 2)
    assert mode.value.field == "mode"
    with pytest.raises(ValidationFailed) as columns:
        input_mapping({"type": "float"}, None, 2)
    assert columns.value.field == "columns"
