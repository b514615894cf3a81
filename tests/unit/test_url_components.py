"""URL components (``dlhub.url_files``): the declaration's checks, and the builder fetching over real HTTP
from a server on 127.0.0.1 (checksum, size, time and redirect limits), alone and inside a whole build."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.builder.build import BuildLimits, build_version
from dlhub.builder.remote import FetchSettings, UrlFetcher
from dlhub.client.metadata import python_function_document
from dlhub.client.packaging import declared_files
from dlhub.common.environments import BuildLog
from dlhub.common.errors import (
    BuildFailed,
    ChecksumMismatch,
    PayloadTooLarge,
    UrlFetchFailed,
    ValidationFailed,
)
from dlhub.common.servable_store import FILES_DIRNAME, build_record_path, version_dir
from dlhub.common.url_files import UrlFile, url_files
from dlhub.registry.metadata import validate_publication
from tests.support.file_server import FileServer, file_server
from tests.support.polling import wait_until

MiB = 1024 * 1024
WEIGHTS = b"0.25 0.5 0.25\n" * 100
WEIGHTS_SHA = hashlib.sha256(WEIGHTS).hexdigest()
GOOD_SHA = "a" * 64


def doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"dlhub": {"name": "model", "url_files": list(entries)}}


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    with file_server({"weights.txt": WEIGHTS, "tampered.txt": WEIGHTS + b"!"}) as running:
        yield running


def fetcher(**overrides: Any) -> UrlFetcher:
    settings = {"max_component_bytes": MiB, "timeout_s": 5.0, "connect_timeout_s": 2.0, "max_redirects": 3}
    return UrlFetcher(FetchSettings(**(settings | overrides)))


def fetch(tmp_path: Path, url: str, sha256: str = WEIGHTS_SHA, **overrides: Any) -> bytes:
    entry = UrlFile(path="w.txt", url=url, sha256=sha256, size_bytes=overrides.pop("size_bytes", None))
    limit = overrides.pop("limit_bytes", MiB)
    fetcher(**overrides).fetch(entry, tmp_path / "w.txt", limit)
    return (tmp_path / "w.txt").read_bytes()


# --- the declaration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"path": "w", "url": "https://h/w"}, "dlhub.url_files[0].sha256", "required"),
        ({"path": "w", "url": "https://h/w", "sha256": "abc"}, "dlhub.url_files[0].sha256", "64 hexadecimal"),
        (
            {"path": "w", "url": "https://h/w", "sha256": "g" * 64},
            "dlhub.url_files[0].sha256",
            "64 hexadecimal",
        ),
        ({"path": "w", "url": "file:///etc/passwd", "sha256": GOOD_SHA}, "dlhub.url_files[0].url", "scheme"),
        ({"path": "w", "url": "ftp://h/w", "sha256": GOOD_SHA}, "dlhub.url_files[0].url", "scheme"),
        ({"path": "w", "url": "gs://b/k", "sha256": GOOD_SHA}, "dlhub.url_files[0].url", "scheme"),
        (
            {"path": "w", "url": "https://u:p@h/w", "sha256": GOOD_SHA},
            "dlhub.url_files[0].url",
            "credentials",
        ),
        ({"path": "w", "url": "https:///w", "sha256": GOOD_SHA}, "dlhub.url_files[0].url", "no host"),
        ({"path": "w", "url": "s3://Bad_Bucket/k", "sha256": GOOD_SHA}, "dlhub.url_files[0].url", "bucket"),
        (
            {"path": "w", "url": "s3://bucket/", "sha256": GOOD_SHA},
            "dlhub.url_files[0].url",
            "s3://bucket/key",
        ),
        ({"path": "../w", "url": "https://h/w", "sha256": GOOD_SHA}, "dlhub.url_files[0].path", "'..'"),
        ({"path": "/etc/w", "url": "https://h/w", "sha256": GOOD_SHA}, "dlhub.url_files[0].path", "absolute"),
        ({"path": "a\\b", "url": "https://h/w", "sha256": GOOD_SHA}, "dlhub.url_files[0].path", "backslash"),
        (
            {"path": "./", "url": "https://h/w", "sha256": GOOD_SHA},
            "dlhub.url_files[0].path",
            "names no file",
        ),
        ({"path": "w", "url": "https://h/w", "sha256": GOOD_SHA, "size_bytes": -1}, "size_bytes", ">= 0"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_field(entry: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        url_files(doc(entry))
    assert caught.value.field is not None and caught.value.field.endswith(field)
    assert words in caught.value.message


def test_two_components_may_not_share_a_path() -> None:
    a = {"path": "data/w", "url": "https://h/a", "sha256": GOOD_SHA}
    for other in ("data/w", "data/./w", "data", "data/w/x"):
        with pytest.raises(ValidationFailed, match="collides"):
            url_files(doc(a, {"path": other, "url": "https://h/b", "sha256": GOOD_SHA}))


def test_a_good_declaration_is_normalised() -> None:
    entries = url_files(doc({"path": "./data//w.bin", "url": "s3://my-bucket/k/w.bin", "sha256": "AB" * 32}))
    assert entries == [UrlFile(path="data/w.bin", url="s3://my-bucket/k/w.bin", sha256="ab" * 32)]


def test_the_registry_refuses_a_bad_declaration_in_a_publication() -> None:
    document = python_function_document(
        name="m", module="fn", function="f", files=["fn.py"], title="t", authors=["Doe, Jane"]
    )
    document["dlhub"]["url_files"] = [{"path": "w", "url": "https://h/w", "sha256": GOOD_SHA}]
    validate_publication(document)
    for bad, field in (
        ({"path": "w", "url": "file:///etc/passwd", "sha256": GOOD_SHA}, "dlhub.url_files[0].url"),
        ({"path": "w", "url": "https://h/w"}, "dlhub.url_files[0].sha256"),
        ({"path": "w", "url": "https://h/w", "sha256": GOOD_SHA, "md5": "x"}, "dlhub.url_files[0]"),
        ({"path": "../w", "url": "https://h/w", "sha256": GOOD_SHA}, "dlhub.url_files[0].path"),
    ):
        document["dlhub"]["url_files"] = [bad]
        with pytest.raises(ValidationFailed) as caught:
            validate_publication(document)
        assert caught.value.field == field, caught.value.message


def test_the_sdk_does_not_upload_what_the_builder_fetches() -> None:
    metadata = {
        "dlhub": {
            "files": {"module": "fn.py", "weights": ["data/w.bin", "data/local.bin"]},
            "url_files": [{"path": "./data/w.bin", "url": "https://h/w", "sha256": GOOD_SHA}],
        }
    }
    assert declared_files(metadata) == ["data/local.bin", "fn.py"]


# --- fetching over real HTTP -------------------------------------------------------------------------------


def test_a_component_is_fetched_and_checked(server: FileServer, tmp_path: Path) -> None:
    assert fetch(tmp_path, f"{server.url}/files/weights.txt", size_bytes=len(WEIGHTS)) == WEIGHTS


def test_a_tampered_component_is_refused_naming_both_digests(server: FileServer, tmp_path: Path) -> None:
    tampered = hashlib.sha256(WEIGHTS + b"!").hexdigest()
    with pytest.raises(ChecksumMismatch) as caught:
        fetch(tmp_path, f"{server.url}/files/tampered.txt")
    assert caught.value.code == "checksum_mismatch"
    assert "'w.txt'" in caught.value.message
    assert WEIGHTS_SHA in caught.value.message and tampered in caught.value.message
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial download stays


def test_a_wrong_declared_size_is_refused(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch, match="declares 5 bytes"):
        fetch(tmp_path, f"{server.url}/files/weights.txt", size_bytes=5)


def test_an_announced_oversize_component_is_refused_without_downloading_it(
    server: FileServer, tmp_path: Path
) -> None:
    total = 256 * MiB
    began = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="announced at 268435456 bytes"):
        fetch(tmp_path, f"{server.url}/big/{total}")
    assert time.monotonic() - began < 5
    sent = wait_until(lambda: server.sent_for(f"/big/{total}"), timeout_s=10, message="the handler to end")
    assert sent < total // 4, f"{sent} of {total} bytes were sent"
    assert list(tmp_path.iterdir()) == []


def test_an_unannounced_oversize_component_stops_at_the_limit(server: FileServer, tmp_path: Path) -> None:
    total = 256 * MiB
    with pytest.raises(PayloadTooLarge, match="received at"):
        fetch(tmp_path, f"{server.url}/stream/{total}")
    sent = wait_until(lambda: server.sent_for(f"/stream/{total}"), timeout_s=10, message="the handler to end")
    assert sent < total // 4, f"{sent} of {total} bytes were sent"
    assert list(tmp_path.iterdir()) == []


def test_a_declared_size_over_the_limit_is_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge, match="declared at"):
        fetch(tmp_path, "http://127.0.0.1:9/never", size_bytes=2 * MiB)


def test_a_slow_server_hits_the_time_limit(server: FileServer, tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="longer than the 1 s limit"):
        fetch(tmp_path, f"{server.url}/slow/100", timeout_s=1.0)
    assert time.monotonic() - began < 3


def test_redirects_are_limited_and_stay_on_http(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(UrlFetchFailed, match="more than 3 redirects"):
        fetch(tmp_path, f"{server.url}/redirect/0")
    with pytest.raises(UrlFetchFailed):
        fetch(tmp_path, f"{server.url}/redirect-to?url=file:///etc/passwd")
    # A redirect within the limit is followed.
    target = f"{server.url}/files/weights.txt"
    assert fetch(tmp_path, f"{server.url}/redirect-to?url={target}") == WEIGHTS


def test_a_missing_file_or_server_is_a_fetch_failure(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(UrlFetchFailed, match="HTTP 404"):
        fetch(tmp_path, f"{server.url}/files/nothing.txt?signature=secret")
    with pytest.raises(UrlFetchFailed) as caught:
        fetch(tmp_path, "http://127.0.0.1:9/w.txt?signature=secret")
    assert "secret" not in caught.value.message


# --- inside a whole build ----------------------------------------------------------------------------------


def _package(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _request(url: str, sha256: str, *, package: dict[str, bytes] | None = None) -> Any:
    from dlhub.common.payloads import BuildRequest

    metadata = {
        "dlhub": {
            "name": "weighted",
            "files": {"module": "fn.py", "weights": "data/w.txt"},
            "url_files": [{"path": "data/w.txt", "url": url, "sha256": sha256}],
        }
    }
    return BuildRequest(
        owner="alice",
        name="weighted",
        version=1,
        metadata=metadata,
        package=_package(package if package is not None else {"fn.py": b"def f(x):\n    return x\n"}),
    )


LIMITS = BuildLimits(max_package_bytes=8 * MiB, max_extracted_bytes=4 * MiB, max_files=50)


def test_a_build_fetches_the_component_into_the_version(server: FileServer, tmp_path: Path) -> None:
    request = _request(f"{server.url}/files/weights.txt", WEIGHTS_SHA)
    outcome = build_version(request, tmp_path, LIMITS, fetcher=fetcher())
    assert outcome.files == ["data/w.txt", "fn.py"]
    files = version_dir(tmp_path, "alice", "weighted", 1) / FILES_DIRNAME
    assert (files / "data" / "w.txt").read_bytes() == WEIGHTS
    log = json.loads(build_record_path(tmp_path, "alice", "weighted", 1).read_text())["log"]
    assert any(f"sha256 {WEIGHTS_SHA}" in line for line in log)


def test_a_build_with_a_tampered_component_fails_with_the_reason_in_its_log(
    server: FileServer, tmp_path: Path
) -> None:
    request = _request(f"{server.url}/files/tampered.txt", WEIGHTS_SHA)
    with pytest.raises(ChecksumMismatch):
        build_version(request, tmp_path, LIMITS, fetcher=fetcher())
    record = json.loads(build_record_path(tmp_path, "alice", "weighted", 1).read_text())
    assert record["state"] == "failed" and WEIGHTS_SHA in record["error"]
    assert not version_dir(tmp_path, "alice", "weighted", 1).exists()


def test_a_component_may_not_overwrite_an_uploaded_file(server: FileServer, tmp_path: Path) -> None:
    package = {"fn.py": b"x = 1\n", "data/w.txt": b"uploaded"}
    request = _request(f"{server.url}/files/weights.txt", WEIGHTS_SHA, package=package)
    with pytest.raises(BuildFailed, match="already holds"):
        build_version(request, tmp_path, LIMITS, fetcher=fetcher())


def test_the_components_count_towards_the_version_size(server: FileServer, tmp_path: Path) -> None:
    limits = BuildLimits(max_package_bytes=8 * MiB, max_extracted_bytes=len(WEIGHTS), max_files=50)
    request = _request(f"{server.url}/files/weights.txt", WEIGHTS_SHA)
    with pytest.raises(PayloadTooLarge):
        build_version(request, tmp_path, limits, fetcher=fetcher())


def test_the_build_log_never_shows_a_query_string(server: FileServer, tmp_path: Path) -> None:
    lines: list[str] = []
    log = BuildLog("alice/x@1", tmp_path / "build.json", None)
    entry = UrlFile(
        path="w.txt", url=f"{server.url}/files/weights.txt?X-Amz-Signature=secret", sha256=WEIGHTS_SHA
    )
    fetcher().fetch_all([entry], tmp_path, MiB, log)
    lines = log.record.log
    assert lines and not any("secret" in line for line in lines)


def test_a_version_may_be_made_of_url_components_alone(server: FileServer, tmp_path: Path) -> None:
    from dlhub.common.payloads import BuildRequest

    metadata = {
        "dlhub": {
            "name": "data",
            "type": "dataset",
            "files": {"data": "w.txt"},
            "url_files": [{"path": "w.txt", "url": f"{server.url}/files/weights.txt", "sha256": WEIGHTS_SHA}],
        }
    }
    request = BuildRequest(owner="alice", name="data", version=1, metadata=metadata, package_format="none")
    outcome = build_version(request, tmp_path, LIMITS, fetcher=fetcher())
    assert outcome.files == ["w.txt"] and outcome.size_bytes == len(WEIGHTS)
