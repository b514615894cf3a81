"""The registry's package file index and byte ranges (``dlhub.registry.package_files``, ``http.files``), and
the SDK's safe extraction: what a ready version never holds (links leaving the package) is still refused."""

from __future__ import annotations

import base64
import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

import pytest

from dlhub.client.sdk import extract_package, repr_digest_sha256
from dlhub.common.errors import InvalidPath, NotFound, PayloadTooLarge, RangeNotSatisfiable, UnsafePackage
from dlhub.registry.http.files import byte_range
from dlhub.registry.package_files import IndexedPackage, IndexLimits, build_index, check_request_path

LIMITS = IndexLimits(max_files=100, max_bytes=10**9)


TarMode = Literal["w:gz", "w:", "w:bz2", "w:xz"]


def write_tar(path: Path, files: dict[str, bytes], links: dict[str, str], mode: TarMode = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


def read_all(indexed: IndexedPackage, path: str, start: int = 0, length: int | None = None) -> bytes:
    entry = indexed.find(path)
    stream = indexed.open(entry, start, entry.size - start if length is None else length)
    try:
        return b"".join(stream)
    finally:
        stream.close()


@pytest.mark.parametrize("mode", ["w:gz", "w:", "w:bz2", "w:xz"])
def test_tar_members_read_back_whole_and_in_ranges(tmp_path: Path, mode: TarMode) -> None:
    files = {"a.txt": b"alpha" * 1000, "dir/b.bin": bytes(range(256)) * 2000, "dir/empty": b""}
    package = write_tar(tmp_path / "p.bin", files, {"dir/link": "b.bin", "up": "dir/link"}, mode)
    indexed = IndexedPackage(package, build_index(package, "tar", LIMITS))
    for name, content in files.items():
        entry = indexed.find(name)
        assert (entry.size, entry.sha256) == (len(content), hashlib.sha256(content).hexdigest())
        assert read_all(indexed, name) == content
    assert read_all(indexed, "dir/b.bin", 1000, 70_000) == files["dir/b.bin"][1000:71_000]
    assert read_all(indexed, "up") == files["dir/b.bin"]  # a link to a link, resolved in the index
    assert indexed.find("up").link == "dir/b.bin"


def test_links_that_leave_the_package_are_refused_not_followed(tmp_path: Path) -> None:
    links = {"out": "../../etc/passwd", "abs": "/etc/passwd", "loop": "loop", "dangling": "nothing"}
    package = write_tar(tmp_path / "p.bin", {"ok.txt": b"ok"}, links)
    indexed = IndexedPackage(package, build_index(package, "tar", LIMITS))
    for name in links:
        with pytest.raises(InvalidPath):
            indexed.find(name)
    assert [e.path for e in indexed.served()] == ["ok.txt"]
    with pytest.raises(NotFound):
        indexed.find("missing.txt")


def test_zip_members_and_links(tmp_path: Path) -> None:
    package = tmp_path / "p.bin"
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x/data.csv", b"a,b\n" * 5000)
        archive.writestr("x/", b"")
        link = zipfile.ZipInfo("x/alias")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, b"data.csv")
        escape = zipfile.ZipInfo("escape")
        escape.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(escape, b"../outside")
    indexed = IndexedPackage(package, build_index(package, "zip", LIMITS))
    assert read_all(indexed, "x/alias", 4, 8) == b"a,b\na,b\n"
    with pytest.raises(InvalidPath):
        indexed.find("escape")


def test_unsafe_member_names_and_limits(tmp_path: Path) -> None:
    bad = write_tar(tmp_path / "bad.bin", {"../evil": b"x"}, {})
    with pytest.raises(UnsafePackage):
        build_index(bad, "tar", LIMITS)
    many = write_tar(tmp_path / "many.bin", {f"f{i}": b"x" for i in range(5)}, {})
    with pytest.raises(PayloadTooLarge):
        build_index(many, "tar", IndexLimits(max_files=4, max_bytes=10**9))
    with pytest.raises(PayloadTooLarge):
        build_index(many, "tar", IndexLimits(max_files=100, max_bytes=4))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(UnsafePackage):
        build_index(garbage, "tar", LIMITS)


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "a//b", "a/./b", "a/../b", "..", "a\\b", "a\x00b", "x" * 5000],
)
def test_request_paths_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        check_request_path(path, path)


def test_encoded_slashes_refused_and_plain_paths_pass() -> None:
    for raw in ("a%2Fb", "a%2fb", "a%5Cb"):
        with pytest.raises(InvalidPath):
            check_request_path("a/b", raw)
    assert check_request_path("dir/été #1.txt", "dir/%C3%A9t%C3%A9%20%231.txt") == "dir/été #1.txt"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=5-", (5, 95)),
        ("bytes=-10", (90, 10)),
        ("bytes=-1000", (0, 100)),
        ("bytes=90-1000", (90, 10)),
        ("bytes=99-99", (99, 1)),
        ("BYTES=1-2", (1, 2)),
        ("bytes=9-2", None),
        ("bytes=0-1,3-4", None),
        ("items=0-1", None),
        ("bytes=-", None),
        ("bytes=" + "9" * 30 + "-", None),
    ],
)
def test_byte_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)


def test_repr_digest_parsing() -> None:
    digest = hashlib.sha256(b"x").digest()
    value = base64.b64encode(digest).decode()
    assert repr_digest_sha256(f"sha-512=:AAAA:, sha-256=:{value}:") == digest
    assert repr_digest_sha256("sha-256=notcolons") is None
    assert repr_digest_sha256("sha-256=:!!:") is None
    assert repr_digest_sha256("") is None


def test_the_sdk_refuses_a_package_whose_members_leave_the_folder(tmp_path: Path) -> None:
    evil_tar = write_tar(tmp_path / "evil.tar.gz", {"ok": b"1"}, {"link": "../../outside"})
    with pytest.raises(UnsafePackage):
        extract_package(evil_tar, tmp_path / "out1")
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    with pytest.raises(UnsafePackage):
        extract_package(evil_zip, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside").exists()
