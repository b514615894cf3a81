"""Previews of a dataset's tabular files: the columns and the first rows, computed once at build time.

Contents are untrusted: only the first ``preview_read_bytes`` of a file are read, every cell is a string cut
to ``preview_max_cell_chars``, a row holds at most ``preview_max_columns`` cells, and rows are dropped from
the end until the preview's JSON fits ``preview_max_bytes``. A file that cannot be parsed gets no preview;
it never fails the build. Parquet is not previewed (pyarrow is not a dependency).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from dlhub.common.config import DLHubSettings
from dlhub.common.payloads import PreviewColumn, PreviewType, TablePreview

FORMATS: Final[dict[str, Literal["csv", "tsv", "jsonl"]]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_BOOLEANS: Final = frozenset({"true", "false"})


@dataclass(frozen=True, slots=True)
class PreviewLimits:
    rows: int = 10
    max_bytes: int = 16 * 1024
    max_cell_chars: int = 200
    max_columns: int = 64
    max_files: int = 8
    read_bytes: int = 1024 * 1024

    @classmethod
    def from_settings(cls, settings: DLHubSettings) -> PreviewLimits:
        c = settings.builder
        return cls(
            rows=c.preview_rows,
            max_bytes=c.preview_max_bytes,
            max_cell_chars=c.preview_max_cell_chars,
            max_columns=c.preview_max_columns,
            max_files=c.preview_max_files,
            read_bytes=c.preview_read_bytes,
        )


def is_dataset(metadata: dict[str, Any]) -> bool:
    dlhub = metadata.get("dlhub")
    return isinstance(dlhub, dict) and dlhub.get("type") == "dataset"


def previews(files_dir: Path, paths: list[str], limits: PreviewLimits) -> list[TablePreview]:
    """Previews of the tabular files among ``paths`` (relative to ``files_dir``), at most ``max_files``."""
    out: list[TablePreview] = []
    for rel in paths:
        if len(out) >= limits.max_files:
            break
        fmt = FORMATS.get(Path(rel).suffix.lower())
        path = files_dir / rel
        if fmt is None or path.is_symlink() or not path.is_file():
            continue
        preview = preview_file(path, rel, fmt, limits)
        if preview is not None:
            out.append(preview)
    return out


def preview_file(
    path: Path, rel: str, fmt: Literal["csv", "tsv", "jsonl"], limits: PreviewLimits
) -> TablePreview | None:
    """The preview of one file, or None when its head is not parseable as ``fmt``."""
    with path.open("rb") as handle:
        head = handle.read(limits.read_bytes + 1)
    cut = len(head) > limits.read_bytes
    text = head[: limits.read_bytes].decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if cut and lines:
        lines.pop()  # the last line may be cut in the middle
    try:
        header, rows, more = _jsonl(lines, limits) if fmt == "jsonl" else _delimited(lines, fmt, limits)
    except (csv.Error, ValueError):
        return None
    if not header:
        return None
    wide = len(header) > limits.max_columns or any(len(r) > limits.max_columns for r in rows)
    header = [_cell(h, limits) for h in header[: limits.max_columns]]
    rows = [[_cell(c, limits) for c in r[: limits.max_columns]] for r in rows]
    preview = TablePreview(
        path=rel,
        format=fmt,
        columns=[
            PreviewColumn(name=h, type=infer_type([r[i] if i < len(r) else "" for r in rows]))
            for i, h in enumerate(header)
        ],
        rows=rows,
        truncated=cut or more or wide,
    )
    return _fit(preview, limits.max_bytes)


def _cell(value: str, limits: PreviewLimits) -> str:
    return value if len(value) <= limits.max_cell_chars else value[: limits.max_cell_chars - 1] + "…"


def _delimited(lines: list[str], fmt: str, limits: PreviewLimits) -> tuple[list[str], list[list[str]], bool]:
    reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",", strict=False)
    header = next(reader, [])
    rows: list[list[str]] = []
    for row in reader:
        if not row:
            continue
        if len(rows) == limits.rows:
            return header, rows, True
        rows.append(row)
    return header, rows, False


def _jsonl(lines: list[str], limits: PreviewLimits) -> tuple[list[str], list[list[str]], bool]:
    objects: list[dict[str, Any]] = []
    more = False
    for line in lines:
        if not line.strip():
            continue
        if len(objects) == max(limits.rows, 1):
            more = True
            break
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("a JSON lines row is not an object")
        objects.append(value)
    header: list[str] = list(dict.fromkeys(k for obj in objects for k in obj))[: limits.max_columns + 1]
    rows = [[_text(obj.get(k)) for k in header] for obj in objects[: limits.rows]]
    return header, rows, more or len(objects) > limits.rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def infer_type(cells: list[str]) -> PreviewType:
    """The simplest type every non-empty cell parses as: integer, number, boolean, else string."""
    values = [c.strip() for c in cells if c.strip()]
    if not values:
        return "empty"
    if all(_is_int(v) for v in values):
        return "integer"
    if all(_is_number(v) for v in values):
        return "number"
    if all(v.lower() in _BOOLEANS for v in values):
        return "boolean"
    return "string"


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _fit(preview: TablePreview, max_bytes: int) -> TablePreview | None:
    """Drop rows from the end until the JSON fits ``max_bytes``; None if the header alone is too big."""
    rows = list(preview.rows)
    size = len(msgspec.json.encode(preview))
    if size <= max_bytes:
        return preview
    row_sizes = [len(msgspec.json.encode(r)) + 1 for r in rows]
    while rows and size > max_bytes:
        rows.pop()
        size -= row_sizes.pop()
    if size > max_bytes:
        return None
    return msgspec.structs.replace(preview, rows=rows, truncated=True)
