"""Files back out (issue 15, item 1) against the session's stack: a version's file list, one file, the package
as uploaded; ETag/304, Range/206/416, Repr-Digest; visibility like describe; unsafe paths refused; the
registry streams a 40 MB file without its memory growing by the file's size; `dlhub download` gives back the
published bytes.

The 40 MB file travels in a small .tar.gz (its bytes compress well), so the stack's 4 MiB upload limit holds
and the registry has to decompress up to the requested offset as it streams.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema  # type: ignore[import-untyped]
import psutil
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.registry.http.openapi import build_openapi
from tests.support.e2e_servables import FUNCTIONS
from tests.support.stack import StackInfo, unique

SPEC = build_openapi()
BIG_BYTES = 40 * 1024 * 1024
TABLE = b"x,y\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(2000))
ODD_NAME = "docs/notes été #1.txt"


def big_content() -> bytes:
    """40 MB that compress to little, yet no two 4 KiB blocks alike (a wrong offset shows)."""
    return b"".join(i.to_bytes(8, "big") + bytes(4088) for i in range(BIG_BYTES // 4096))


def package_files() -> dict[str, bytes]:
    return {
        "e2efns.py": FUNCTIONS.encode(),
        "data/table.csv": TABLE,
        "data/big.bin": big_content(),
        "data/empty.txt": b"",
        ODD_NAME: "accents été and a hash sign\n".encode(),
    }


def tar_gz(files: dict[str, bytes], links: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            archive.addfile(info, io.BytesIO(content))
        for path, target in links.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return buffer.getvalue()


def document(name: str, **kwargs: Any) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module="e2efns",
        function="noop",
        files=["e2efns.py"],
        title="Files back out",
        authors=["Curie, Marie"],
        **kwargs,
    )


@dataclass
class Published:
    name: str
    files: dict[str, bytes]
    package: bytes
    private: str
    zip_files: dict[str, bytes]
    zip_package: bytes

    def url(self, stack: StackInfo, tail: str, version: int | None = 1, name: str | None = None) -> str:
        base = f"{stack.api}/servables/alice/{name or self.name}"
        return base + (f"/versions/{version}" if version else "") + tail


@pytest.fixture(scope="module")
def published(alice: DLHubClient) -> Published:
    """alice's servable: v1 a .tar.gz (with a link), v2 a zip; and a private one with a file."""
    name, private = unique("files"), unique("files_private")
    files = package_files()
    package = tar_gz(files, {"data/latest.csv": "table.csv"})
    assert len(package) < 2 * 1024 * 1024
    assert alice.publish(document(name), package=package)["version"] == 1
    zip_files = {"e2efns.py": FUNCTIONS.encode(), "data/table.csv": TABLE, "readme.md": b"# zipped\n"}
    zip_package = zipped(zip_files)  # sent as package.tar.gz by the SDK: the registry goes by the bytes
    assert alice.update(f"alice/{name}", document(name), package=zip_package)["version"] == 2
    secret = {"e2efns.py": FUNCTIONS.encode(), "secret.txt": b"alice only\n"}
    alice.publish(document(private, visible_to=["user:alice"]), package=tar_gz(secret, {}))
    return Published(name, files, package, private, zip_files, zip_package)


def get(url: str, token: str | None, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=auth | headers, timeout=60)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_schema(body: Any, path: str, status: int) -> None:
    schema = SPEC["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator(dict(schema) | {"components": SPEC["components"]}).validate(body)


# -- the list ----------------------------------------------------------------------------------------------


def test_the_file_list_names_every_file_with_its_size_and_sha256(
    stack: StackInfo, published: Published
) -> None:
    response = get(published.url(stack, "/files"), stack.tokens["alice"])
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, "/servables/{owner}/{name}/versions/{version}/files", 200)
    listed = {f["path"]: f for f in body["files"]}
    expected = published.files | {"data/latest.csv": TABLE}
    assert set(listed) == set(expected)
    for path, content in expected.items():
        assert (listed[path]["size"], listed[path]["sha256"]) == (len(content), sha(content)), path
    assert listed["data/latest.csv"]["link"] == "data/table.csv"
    assert body["total_bytes"] == sum(len(c) for c in expected.values())
    assert body["package"]["sha256"] == sha(published.package) and body["package"]["format"] == "tar.gz"
    assert body["package"]["size"] == len(published.package)

    zipped_list = get(published.url(stack, "/files", 2), stack.tokens["alice"]).json()
    assert {f["path"]: f["sha256"] for f in zipped_list["files"]} == {
        p: sha(c) for p, c in published.zip_files.items()
    }
    assert zipped_list["package"]["format"] == "zip"


def test_latest_routes_serve_the_version_describe_shows(stack: StackInfo, published: Published) -> None:
    token = stack.tokens["alice"]
    listing = get(published.url(stack, "/files", None), token)
    assert listing.status_code == 200 and listing.json()["version"] == 2
    assert listing.headers["Content-Location"].endswith(f"/alice/{published.name}/versions/2/files")
    readme = get(published.url(stack, "/files/readme.md", None), token)
    assert readme.status_code == 200 and readme.content == b"# zipped\n"
    assert readme.headers["Content-Location"].endswith("/versions/2/files/readme.md")


# -- one file ----------------------------------------------------------------------------------------------


def test_a_file_comes_back_with_a_strong_etag_its_digest_and_304_when_unchanged(
    stack: StackInfo, published: Published
) -> None:
    token = stack.tokens["alice"]
    url = published.url(stack, "/files/data/table.csv")
    response = get(url, token)
    assert response.status_code == 200 and response.content == TABLE
    etag = f'"{sha(TABLE)}"'
    assert response.headers["ETag"] == etag
    digest = base64.b64encode(hashlib.sha256(TABLE).digest()).decode()
    assert response.headers["Repr-Digest"] == f"sha-256=:{digest}:"
    assert response.headers["Content-Length"] == str(len(TABLE))
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"].startswith('attachment; filename="table.csv"')
    assert response.headers["Accept-Ranges"] == "bytes"

    for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = get(url, token, **{"If-None-Match": held})
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag, held
    assert get(url, token, **{"If-None-Match": '"stale"'}).status_code == 200
    head = httpx.head(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert head.status_code == 200 and head.content == b"" and head.headers["ETag"] == etag
    assert head.headers["Content-Length"] == str(len(TABLE))

    # the link resolves inside the package; an odd name round-trips percent-encoded
    assert get(published.url(stack, "/files/data/latest.csv"), token).content == TABLE
    odd = get(published.url(stack, "/files/" + ODD_NAME.replace("#", "%23")), token)
    assert odd.status_code == 200 and odd.content == published.files[ODD_NAME]
    assert "filename*=UTF-8''notes%20%C3%A9t%C3%A9%20%231.txt" in odd.headers["Content-Disposition"]
    empty = get(published.url(stack, "/files/data/empty.txt"), token)
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["ETag"] == f'"{sha(b"")}"'
    missing = get(published.url(stack, "/files/data/nope.csv"), token)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert get(published.url(stack, "/files/data"), token).status_code == 404  # a folder is not a file


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=100-", 100, None), ("bytes=-5", None, None), ("bytes=10-999999", 10, None)],
)
def test_one_range_answers_206_with_its_content_range(
    stack: StackInfo, published: Published, header: str, start: int | None, end: int | None
) -> None:
    size = len(TABLE)
    first = size - 5 if start is None else start
    last = size - 1 if end is None else end
    for version in (1, 2):  # a member of a .tar.gz, and of a zip
        response = get(
            published.url(stack, "/files/data/table.csv", version), stack.tokens["alice"], Range=header
        )
        assert response.status_code == 206, response.text
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert response.content == TABLE[first : last + 1]
        assert response.headers["ETag"] == f'"{sha(TABLE)}"'  # the whole file's, as is the digest


def test_unsatisfiable_and_ignored_ranges(stack: StackInfo, published: Published) -> None:
    token, size = stack.tokens["alice"], len(TABLE)
    url = published.url(stack, "/files/data/table.csv")
    for header in (f"bytes={size}-", f"bytes={size + 50}-{size + 60}", "bytes=-0"):
        response = get(url, token, Range=header)
        assert response.status_code == 416, header
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert response.json()["error"]["type"] == "range_not_satisfiable"
    empty = get(published.url(stack, "/files/data/empty.txt"), token, Range="bytes=0-")
    assert empty.status_code == 416 and empty.headers["Content-Range"] == "bytes */0"
    # several ranges, another unit, a reversed range: ignored (RFC 9110), the whole file
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=9-2", "bytes=x-y"):
        response = get(url, token, Range=header)
        assert response.status_code == 200 and response.content == TABLE, header
    etag = f'"{sha(TABLE)}"'
    assert get(url, token, Range="bytes=0-3", **{"If-Range": etag}).content == TABLE[:4]
    stale = get(url, token, Range="bytes=0-3", **{"If-Range": '"older"'})
    assert stale.status_code == 200 and stale.content == TABLE


# -- the package -------------------------------------------------------------------------------------------


def test_the_package_comes_back_as_uploaded(stack: StackInfo, published: Published) -> None:
    token = stack.tokens["alice"]
    response = get(published.url(stack, "/package"), token)
    assert response.status_code == 200 and response.content == published.package
    assert response.headers["ETag"] == f'"{sha(published.package)}"'
    assert response.headers["Content-Type"] == "application/gzip"
    assert f'filename="alice-{published.name}-1.tar.gz"' in response.headers["Content-Disposition"]
    part = get(published.url(stack, "/package"), token, Range="bytes=10-19")
    assert part.status_code == 206 and part.content == published.package[10:20]
    assert (
        get(
            published.url(stack, "/package"), token, **{"If-None-Match": response.headers["ETag"]}
        ).status_code
        == 304
    )
    zipped_package = get(published.url(stack, "/package", 2), token)
    assert zipped_package.content == published.zip_package
    assert zipped_package.headers["Content-Type"] == "application/zip"


def test_a_pipeline_lists_no_files_and_has_no_package(
    stack: StackInfo, alice: DLHubClient, published: Published
) -> None:
    name = unique("files_pipe")
    alice.publish_pipeline(name, [f"alice/{published.name}@1"], title="A pipeline", authors=["Curie, Marie"])
    listing = get(published.url(stack, "/files", name=name), stack.tokens["alice"])
    assert listing.status_code == 200 and listing.json()["files"] == [] and listing.json()["package"] is None
    package = get(published.url(stack, "/package", name=name), stack.tokens["alice"])
    assert package.status_code == 404 and package.json()["error"]["type"] == "not_found"


# -- visibility and paths ----------------------------------------------------------------------------------


def test_a_private_versions_files_are_refused_to_others_as_describe_refuses(
    stack: StackInfo, published: Published
) -> None:
    name = published.private
    describe = get(published.url(stack, "", name=name), stack.tokens["bob"])
    assert describe.status_code == 404
    for tail in ("/files", "/files/secret.txt", "/package"):
        for version in (1, None):
            url = published.url(stack, tail, version, name=name)
            for token in (stack.tokens["bob"], None):
                refused = get(url, token)
                assert refused.status_code == describe.status_code, (tail, version, token)
                assert refused.json()["error"]["type"] == "not_found"
                assert b"alice only" not in refused.content
            assert get(url, stack.tokens["alice"]).status_code == 200
    assert (
        get(published.url(stack, "/files/secret.txt", name=name), stack.tokens["alice"]).content
        == b"alice only\n"
    )


def raw_get(stack: StackInfo, path: str, token: str) -> tuple[int, bytes]:
    """A request with its path sent byte for byte (httpx would normalise dot segments and encodings)."""
    parts = urlsplit(stack.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.putheader("Authorization", f"Bearer {token}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "tail",
    ["data%2Ftable.csv", "data%2ftable.csv", "data%5Ctable.csv", "data/table.csv%00", "/data/table.csv",
     "data//table.csv", "data/./table.csv", "data/%2E/table.csv", "data/%2E%2E/e2efns.py"],
)  # fmt: skip
def test_unsafe_file_paths_are_refused_with_a_typed_400(
    stack: StackInfo, published: Published, tail: str
) -> None:
    path = f"/api/v1/servables/alice/{published.name}/versions/1/files/{tail}"
    status, body = raw_get(stack, path, stack.tokens["alice"])
    if status == 404:
        # the HTTP layer resolved the dot segments before routing (RFC 3986): the handler never saw them
        assert "%2E" in tail.upper() or "/./" in tail, (tail, body)
        assert json.loads(body)["error"]["type"] == "not_found"
        return
    assert status == 400, (tail, body)
    error = json.loads(body)["error"]
    assert (error["type"], error["field"]) == ("invalid_path", "path"), error


def test_dot_segments_never_reach_outside_the_files(stack: StackInfo, published: Published) -> None:
    """Whatever the HTTP layer does with ``..``, no answer holds another servable's file or a host file."""
    secret = f"/api/v1/servables/alice/{published.private}/versions/1/files/secret.txt"
    base = f"/api/v1/servables/alice/{published.name}/versions/1/files/"
    for tail in ("../../../../../etc/passwd", "%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
                 f"../../../../..{secret}", "..%2F..%2F..%2Fetc%2Fpasswd"):  # fmt: skip
        status, body = raw_get(stack, base + tail, stack.tokens["bob"])
        assert 400 <= status < 500, (tail, status)
        assert b"root:" not in body and b"alice only" not in body, tail


# -- streaming ---------------------------------------------------------------------------------------------


def registry_process(stack: StackInfo) -> psutil.Process:
    for child in psutil.Process(stack.process.pid).children(recursive=True):
        if "dlhub.registry" in child.cmdline():
            return child
    raise AssertionError("no registry process under dlhub up")


class PeakRss:
    """The highest RSS of a process, sampled every 10 ms in a thread."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def streamed(url: str, token: str, **headers: str) -> Iterator[bytes]:
    with httpx.stream(
        "GET", url, headers={"Authorization": f"Bearer {token}"} | headers, timeout=120
    ) as response:
        assert response.status_code in (200, 206), response.read()
        yield from response.iter_bytes(1024 * 1024)


def test_a_40_mb_file_streams_without_the_registry_holding_it(stack: StackInfo, published: Published) -> None:
    token = stack.tokens["alice"]
    url = published.url(stack, "/files/data/big.bin")
    big = published.files["data/big.bin"]
    assert get(published.url(stack, "/files"), token).status_code == 200  # the index is built and cached
    registry = registry_process(stack)
    baseline = registry.memory_info().rss
    digest, received = hashlib.sha256(), 0
    started = time.perf_counter()
    with PeakRss(registry) as rss:
        for chunk in streamed(url, token):
            digest.update(chunk)
            received += len(chunk)
    elapsed_s = time.perf_counter() - started
    assert received == BIG_BYTES and digest.hexdigest() == sha(big)
    growth = rss.peak - baseline
    print(f"40 MB download: {elapsed_s:.2f} s, registry RSS {baseline / 2**20:.1f} MiB, peak growth "
          f"{growth / 2**20:.1f} MiB")  # fmt: skip
    assert growth < BIG_BYTES // 4, f"the registry's RSS grew by {growth} bytes for a {BIG_BYTES}-byte file"

    # a range deep inside: the gzip stream is decompressed up to it, not held
    start = 35 * 1024 * 1024 + 5
    with PeakRss(registry) as rss:
        tail = b"".join(streamed(url, token, Range=f"bytes={start}-{start + 99_999}"))
    assert tail == big[start : start + 100_000]
    assert rss.peak - baseline < BIG_BYTES // 4


# -- the SDK and the CLI -----------------------------------------------------------------------------------


def dlhub(stack: StackInfo, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    return subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip


def test_dlhub_download_gives_back_the_published_bytes(
    stack: StackInfo, published: Published, tmp_path: Path
) -> None:
    ref = f"alice/{published.name}"
    done = dlhub(stack, tmp_path, "download", f"{ref}@1", "-o", "v1")
    assert done.returncode == 0, done.stderr
    for path, content in published.files.items():
        assert (tmp_path / "v1" / path).read_bytes() == content, path
    assert (tmp_path / "v1" / "data/latest.csv").resolve() == (tmp_path / "v1" / "data/table.csv").resolve()
    assert not list((tmp_path / "v1").glob(".dlhub-package-*"))

    done = dlhub(stack, tmp_path, "download", ref)  # latest: v2, the zip, into ./NAME
    assert done.returncode == 0, done.stderr
    for path, content in published.zip_files.items():
        assert (tmp_path / published.name / path).read_bytes() == content, path

    done = dlhub(stack, tmp_path, "download", f"{ref}@1", "--file", ODD_NAME, "-o", "one")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one" / "notes été #1.txt").read_bytes() == published.files[ODD_NAME]

    listed = dlhub(stack, tmp_path, "download", f"{ref}@1", "--list")
    assert f"{sha(TABLE)}  data/table.csv" in listed.stdout

    refused = dlhub(stack, tmp_path, "download", f"{ref}@1", "--file", "data/nope.csv")
    assert refused.returncode == 1 and "not_found" in refused.stderr


def test_the_sdk_refuses_a_download_whose_bytes_do_not_match_the_digest(
    stack: StackInfo, published: Published, tmp_path: Path
) -> None:
    """A proxy that alters the body: the SDK keeps nothing (its digest check is the last line of defence)."""
    from dlhub.client.sdk import DigestMismatch

    def tamper(request: httpx.Request) -> httpx.Response:
        real = httpx.get(str(request.url), headers=dict(request.headers), timeout=30)
        headers = {
            k: v for k, v in real.headers.items() if k.lower() not in ("content-length", "content-encoding")
        }
        return httpx.Response(real.status_code, headers=headers, content=real.content[:-1] + b"!")

    client = DLHubClient(stack.url, stack.tokens["alice"])
    client._http = httpx.Client(base_url=stack.api, transport=httpx.MockTransport(tamper))
    with client, pytest.raises(DigestMismatch):
        client.download(f"alice/{published.name}@1", tmp_path, "data/table.csv")
    assert list(tmp_path.iterdir()) == []
    assert (
        DLHubClient(stack.url, stack.tokens["alice"])
        .download(f"alice/{published.name}@1", tmp_path, "data/table.csv")
        .read_bytes()
        == TABLE
    )
