"""Dataset jobs over files: which files a glob selects, how a file reaches the method, the signed URLs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.errors import Forbidden, ValidationFailed
from dlhub.registry.blobs import BlobStore
from dlhub.registry.dataset_files import PackageFileSigner, glob_regex, select_files
from dlhub.registry.jobs import FileItem, Mapping, RowOutcome, file_mapping
from dlhub.registry.package_files import FileEntry, IndexedPackage, PackageIndex

pytestmark = pytest.mark.unit

PATHS = [
    "README.md",
    "images/a.png",
    "images/b.PNG",
    "images/c.png",
    "images/sub/d.png",
    "labels.csv",
    "other/e.png",
]


def package(*, links: dict[str, str] | None = None) -> IndexedPackage:
    entries = [FileEntry(path=p, size=10, sha256="0" * 64, offset=0) for p in PATHS]
    for path, target in (links or {}).items():
        entries.append(FileEntry(path=path, size=10, sha256="0" * 64, offset=0, link=target))
    entries.append(FileEntry(path="broken-link", size=-1, link="../outside"))
    index = PackageIndex(format=1, archive="tar", compression="", files=list(reversed(entries)))
    return IndexedPackage(Path("/nonexistent.tar"), index)


def paths(pattern: str | None, pkg: IndexedPackage | None = None) -> list[str]:
    return [entry.path for entry in select_files(pkg or package(), pattern)]


def test_every_regular_file_by_default_sorted_links_left_out() -> None:
    pkg = package(links={"images/z-link.png": "images/a.png"})
    assert paths(None, pkg) == sorted(PATHS)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.png", ["images/a.png", "images/c.png", "images/sub/d.png", "other/e.png"]),
        ("images/*.png", ["images/a.png", "images/c.png"]),
        ("images/**/*.png", ["images/a.png", "images/c.png", "images/sub/d.png"]),
        ("images/**", ["images/a.png", "images/b.PNG", "images/c.png", "images/sub/d.png"]),
        ("images/[ab].*", ["images/a.png", "images/b.PNG"]),
        ("images/[!ab].png", ["images/c.png"]),
        ("images/?.png", ["images/a.png", "images/c.png"]),
        ("labels.csv", ["labels.csv"]),
        ("*", sorted(PATHS)),
        ("*/*.png", ["images/a.png", "images/c.png", "other/e.png"]),
    ],
)
def test_globs(pattern: str, expected: list[str]) -> None:
    assert paths(pattern) == expected


@pytest.mark.parametrize("pattern", ["", "/images/*.png", "images/[a.png", "x" * 1025])
def test_malformed_globs_are_a_400_on_files(pattern: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        glob_regex(pattern)
    assert raised.value.field == "files"


def test_a_glob_matching_nothing_is_a_400_naming_it() -> None:
    with pytest.raises(ValidationFailed) as raised:
        select_files(package(), "*.tif")
    assert raised.value.field == "files"
    assert "'*.tif'" in raised.value.message and "7 files" in raised.value.message


def test_regex_specials_in_a_glob_are_literal() -> None:
    assert glob_regex("a+b(1).png").fullmatch("a+b(1).png")
    assert not glob_regex("a+b(1).png").fullmatch("aab1.png")


FILE = {"type": "file"}


@pytest.mark.parametrize(
    ("input_type", "expected"),
    [
        (FILE, Mapping("row", "value")),
        ({"type": "File"}, Mapping("row", "value")),
        ({"type": "list", "item_type": FILE}, Mapping("batch", "value")),
    ],
)
def test_file_inputs_map_to_one_file_or_a_batch(input_type: dict[str, Any], expected: Mapping) -> None:
    assert file_mapping(input_type, None, "run", "bob/m@1") == expected
    assert file_mapping(input_type, expected.mode, "run", "bob/m@1") == expected


@pytest.mark.parametrize(
    ("input_type", "named"),
    [
        ({"type": "string"}, "'string'"),
        ({"type": "list", "item_type": {"type": "float"}}, "'list' of 'float'"),
        ({"type": "dict", "properties": {"image": FILE}}, "'dict'"),
        ({"type": "python object"}, "'python object'"),
        (None, "an undeclared input type"),
    ],
)
def test_other_input_types_are_a_400_naming_the_problem(input_type: Any, named: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        file_mapping(input_type, None, "predict", "bob/m@1")
    assert raised.value.field == "over"
    message = raised.value.message
    assert named in message and "'predict'" in message and "bob/m@1" in message and "'file'" in message


def test_a_mode_against_the_input_type_is_a_400_on_mode() -> None:
    with pytest.raises(ValidationFailed) as raised:
        file_mapping(FILE, "batch", "run", "bob/m@1")
    assert raised.value.field == "mode"


def test_results_lines_of_files_name_the_path() -> None:
    entry = FileEntry(path="images/a.png", size=1)
    item = FileItem(3, entry)
    assert RowOutcome(item.index, output=1, path=entry.path).line() == {
        "index": 3,
        "path": "images/a.png",
        "output": 1,
        "error": None,
    }
    assert list(RowOutcome(4, output=2).line()) == ["index", "output", "error"]


def test_signed_package_file_urls(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", max_bytes=1024, ttl_s=60)
    signer = PackageFileSigner(store)
    sha = "ab" * 32
    url = signer.signed_path(sha, "images/a b.png", 60)
    assert url.startswith(f"/api/v1/packages/{sha}/files/images/a%20b.png?expires=")
    query = dict(part.split("=") for part in url.partition("?")[2].split("&"))
    signer.check(sha, "images/a b.png", query["expires"], query["sig"])
    for args in (
        (sha, "images/c.png", query["expires"], query["sig"]),  # another file
        ("cd" * 32, "images/a b.png", query["expires"], query["sig"]),  # another package
        (sha, "images/a b.png", str(int(query["expires"]) + 1), query["sig"]),  # a later expiry
        (sha, "images/a b.png", query["expires"], None),
        (sha, "images/a b.png", "²", query["sig"]),
    ):
        with pytest.raises(Forbidden):
            signer.check(*args)
    expired = int(time.time()) - 1
    with pytest.raises(Forbidden, match="expired"):
        signer.check(sha, "x", str(expired), signer.signature(sha, "x", expired))
    # A blob's signature of the same text does not open a package file, nor the reverse.
    assert store.signature(sha, expired) != signer.signature(sha, "x", expired)
