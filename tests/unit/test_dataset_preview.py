"""Tabular previews and file manifests computed by the builder, and the link terms search and store share."""

from __future__ import annotations

import hashlib
import json
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Literal

import msgspec
import pytest

from dlhub.builder.build import BuildLimits, build_version, compute_digest, digest_files
from dlhub.builder.preview import PreviewLimits, infer_type, preview_file, previews
from dlhub.common.links import link_terms, query_link_term, store_target
from dlhub.common.payloads import BuildRequest

LIMITS = PreviewLimits(rows=3, max_bytes=4096, max_cell_chars=8, max_columns=3, max_files=2, read_bytes=4096)


def test_csv_preview_types_truncation_and_quoting(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('\ufeffa,b,c\n1,2.5,"x, y"\n2,,true\n\n3,1e3,longer than eight\n4,5,6\n')
    preview = preview_file(path, "t.csv", "csv", LIMITS)
    assert preview is not None
    assert [(c.name, c.type) for c in preview.columns] == [("a", "integer"), ("b", "number"), ("c", "string")]
    assert preview.rows == [["1", "2.5", "x, y"], ["2", "", "true"], ["3", "1e3", "longer …"]]
    assert preview.truncated  # a fourth row exists


def test_tsv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("k\tflag\nx\tTrue\ny\tfalse\n")
    tsv = preview_file(tmp_path / "t.tsv", "t.tsv", "tsv", LIMITS)
    assert tsv is not None and not tsv.truncated
    assert [(c.name, c.type) for c in tsv.columns] == [("k", "string"), ("flag", "boolean")]
    lines = [{"id": 1, "v": [1, 2], "s": "a"}, {"id": 2, "w": None}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    jsonl = preview_file(tmp_path / "t.jsonl", "t.jsonl", "jsonl", LIMITS)
    assert jsonl is not None and [c.name for c in jsonl.columns] == ["id", "v", "s"]
    assert jsonl.truncated  # a fourth key ("w") did not fit max_columns
    assert jsonl.rows == [["1", "[1, 2]", "a"], ["2", "", ""]]
    assert jsonl.columns[0].type == "integer" and jsonl.columns[2].type == "string"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.jsonl", b"[1, 2]\n"),  # not an object per line
        ("bad.jsonl", b"{not json\n"),
        ("empty.csv", b""),
        ("blank.jsonl", b"\n\n"),
    ],
)
def test_unparseable_files_get_no_preview(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    fmt: Literal["csv", "jsonl"] = "jsonl" if name.endswith("jsonl") else "csv"
    assert preview_file(tmp_path / name, name, fmt, LIMITS) is None


def test_control_characters_stay_inert_text(tmp_path: Path) -> None:
    (tmp_path / "nul.csv").write_bytes(b"a,b\n1,\x002\xff\n")
    preview = preview_file(tmp_path / "nul.csv", "nul.csv", "csv", LIMITS)
    assert preview is not None and preview.rows == [["1", "\x002\ufffd"]]  # bad UTF-8 replaced, never raised


def test_only_the_head_of_a_large_file_is_read_and_the_byte_cap_holds(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,b\n" + "".join(f"{i},{'z' * 50}\n" for i in range(100_000)))
    limits = PreviewLimits(
        rows=50, max_bytes=600, max_cell_chars=100, max_columns=8, max_files=1, read_bytes=2048
    )
    preview = preview_file(path, "big.csv", "csv", limits)
    assert preview is not None and preview.truncated
    assert 0 < len(preview.rows) < 50 and len(msgspec.json.encode(preview)) <= 600
    assert all(len(row[1]) == 50 for row in preview.rows)  # whole lines only: the cut one was dropped
    assert preview_file(path, "big.csv", "csv", PreviewLimits(max_bytes=10)) is None  # header over the cap


def test_previews_pick_tabular_files_up_to_max_files(tmp_path: Path) -> None:
    for name in ("a.csv", "b.txt", "c.tsv", "d.csv"):
        (tmp_path / name).write_text("x\n1\n")
    found = previews(tmp_path, ["a.csv", "b.txt", "c.tsv", "d.csv"], LIMITS)
    assert [p.path for p in found] == ["a.csv", "c.tsv"]


def test_infer_type() -> None:
    assert infer_type(["1", " 2 ", ""]) == "integer"
    assert infer_type(["1", "2.0", "nan"]) == "number"
    assert infer_type(["TRUE", "false"]) == "boolean"
    assert infer_type(["", " "]) == "empty"
    assert infer_type(["1", "x"]) == "string"


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["dataset", "servable"])
def test_build_outcome_carries_the_manifest_and_dataset_previews(tmp_path: Path, kind: str) -> None:
    files = {"data/t.csv": b"a\n1\n", "README": b"hello"}
    metadata = {"dlhub": {"name": "d", "type": kind, "files": {"data": ["data/t.csv"]}}}
    request = BuildRequest(owner="alice", name="d", version=1, metadata=metadata, package=_tar(files))
    outcome = build_version(request, tmp_path, BuildLimits(max_package_bytes=10**6, max_extracted_bytes=10**6,
                                                           max_files=10))  # fmt: skip
    assert [(m.path, m.size_bytes, m.sha256) for m in outcome.manifest] == [
        (path, len(files[path]), hashlib.sha256(files[path]).hexdigest()) for path in ("README", "data/t.csv")
    ]
    assert [p.path for p in outcome.previews] == (["data/t.csv"] if kind == "dataset" else [])
    files_dir = Path(outcome.path) / "files"
    assert digest_files(files_dir)[:3] == compute_digest(files_dir)  # one read, the same digest as before


def test_link_terms() -> None:
    assert link_terms("alice/iris@03") == ["alice/iris", "alice/iris@3"]
    assert link_terms("alice/iris") == ["alice/iris"]
    assert link_terms("https://doi.org/10.5281/Zenodo.1") == ["10.5281/zenodo.1"]
    assert query_link_term(" doi:10.5281/ZENODO.1 ") == "10.5281/zenodo.1"
    assert query_link_term("alice/iris@007") == "alice/iris@7"
    assert query_link_term("alice/iris@²") == "alice/iris@²"  # not a version number, and never a crash
    assert link_terms("alice/iris@" + "9" * 40) == ["alice/iris"]
    assert store_target("alice/iris@2") == "alice/iris"
    assert store_target("10.5281/Zenodo.1") == "doi:10.5281/zenodo.1"
