"""The rows of a dataset's tabular file, read forward from the stored package in bounded chunks.

A dataset job (``jobs.py``) reads one file of a dataset version row by row without extracting the package
or holding the file: ``package_files`` seeks to the member and hands out 256 KiB chunks, decoded here
incrementally into lines and rows. Formats follow the builder's previews (by the file's suffix): CSV, TSV
(the first row is the header) and JSON lines (each line one object; the columns are the first object's
keys). A CSV cell becomes an integer or a float when it reads as one exactly (``12``, ``-3.5e2``), ``None``
when empty, else it stays a string; JSON values stay as they are. A row that cannot be read (a JSON line
that is not an object, a CSV field past the csv module's limit) is one failed item, not a failed job.

Everything here blocks: call it in a thread.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

TabularFormat = Literal["csv", "tsv", "jsonl"]
TABULAR_SUFFIXES: Final[dict[str, TabularFormat]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_INT_RE: Final = re.compile(r"[+-]?\d{1,18}")
_FLOAT_RE: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_json = msgspec.json.Decoder()


def tabular_format(path: str) -> TabularFormat | None:
    lowered = path.lower()
    return next((fmt for suffix, fmt in TABULAR_SUFFIXES.items() if lowered.endswith(suffix)), None)


def cell_value(text: str) -> Any:
    """A CSV cell as a number when it reads as one exactly, None when empty, else the string."""
    if not text:
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


@dataclass(frozen=True, slots=True)
class Row:
    index: int
    """0-based, the header not counted."""
    cells: dict[str, Any] | None
    error: str = ""
    """Why the row could not be read (``cells`` is then None)."""


def lines_of(chunks: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 lines (a leading BOM dropped, undecodable bytes replaced), each with its ``\\n`` kept so the
    csv module can join a quoted field spanning lines."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        cut = buffer.rfind("\n")
        if cut < 0:
            continue
        complete, buffer = buffer[: cut + 1], buffer[cut + 1 :]
        for line in complete.split("\n")[:-1]:
            yield line + "\n"
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer


class RowReader:
    """Rows of one file, in order; ``columns`` are the header's (CSV/TSV) or the first object's keys."""

    def __init__(self, chunks: Iterator[bytes], fmt: TabularFormat) -> None:
        self._lines = lines_of(chunks)
        self._fmt = fmt
        self._next_index = 0
        self.columns: list[str] = []
        self._first: Row | None = None
        if fmt == "jsonl":
            self._first = self._next_json()
            if self._first is not None and self._first.cells is not None:
                self.columns = list(self._first.cells)
        else:
            self._csv = csv.reader(self._lines, delimiter="," if fmt == "csv" else "\t")
            header = self._next_csv_cells()
            self.columns = [str(c) for c in header] if header is not None else []

    def _next_csv_cells(self) -> list[str] | None:
        try:
            return next(self._csv)
        except StopIteration:
            return None

    def _next_csv(self) -> Row | None:
        while True:
            try:
                cells = self._next_csv_cells()
            except csv.Error as exc:
                return self._row(None, f"the row cannot be read as {self._fmt.upper()}: {exc}")
            if cells is None:
                return None
            if cells:  # a blank line is no row
                return self._row({c: cell_value(v) for c, v in zip(self.columns, cells, strict=False)}, "")

    def _next_json(self) -> Row | None:
        for line in self._lines:
            if not line.strip():
                continue
            try:
                value = _json.decode(line)
            except msgspec.DecodeError as exc:
                return self._row(None, f"the line is not JSON: {exc}")
            if not isinstance(value, dict):
                return self._row(None, f"the line is a JSON {type(value).__name__}, not an object")
            return self._row(value, "")
        return None

    def _row(self, cells: dict[str, Any] | None, error: str) -> Row:
        row = Row(self._next_index, cells, error)
        self._next_index += 1
        return row

    def next_row(self) -> Row | None:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._next_json() if self._fmt == "jsonl" else self._next_csv()

    def take(self, count: int) -> list[Row]:
        out: list[Row] = []
        while len(out) < count and (row := self.next_row()) is not None:
            out.append(row)
        return out

    def count(self) -> int:
        """Read to the end; the number of rows (those already taken included)."""
        while self.next_row() is not None:
            pass
        return self._next_index
