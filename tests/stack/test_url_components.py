"""URL components through the whole stack: a publication names files by S3 (moto, scripts/test-servers) and
HTTP (a real server on 127.0.0.1 started here) URLs; the builder fetches them and the servable reads them.
A tampered file is refused by its checksum, a slow server by the time limit, a bad declaration with a 400;
through the REST API, the SDK and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import python_function_document
from dlhub.client.sdk import TaskHandle
from tests.support.file_server import FileServer, file_server
from tests.support.s3 import builder_s3_env, new_bucket, s3_client
from tests.support.stack import StackInfo, running_stack

MODULE = """
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with open(os.path.join(HERE, "data", name), "rb") as fh:
        return fh.read().decode()
"""
S3_TEXT = b"weights from S3\n" * 50
HTTP_TEXT = b"weights over HTTP\n" * 50
FETCH_TIMEOUT_S = 2.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    with file_server({"w.txt": HTTP_TEXT, "tampered.txt": HTTP_TEXT + b"tampered"}) as running:
        yield running


@pytest.fixture(scope="module")
def s3_object(s3_url: str) -> str:
    client = s3_client(s3_url)
    bucket = new_bucket(client)
    client.put_object(Bucket=bucket, Key="models/w.txt", Body=S3_TEXT)
    return f"s3://{bucket}/models/w.txt"


@pytest.fixture(scope="module")
def url_stack(s3_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A stack whose builder reaches the S3 test server, with a short fetch time limit."""
    base = tmp_path_factory.mktemp("url-stack")
    env = builder_s3_env(s3_url) | {"DLHUB_BUILDER__URL_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S)}
    with running_stack(base, workers=1, extra_env=env) as info:
        yield info


@pytest.fixture(scope="module")
def alice(url_stack: StackInfo) -> DLHubClient:
    return DLHubClient(url_stack.url, url_stack.tokens["alice"])


def document(name: str, url_files: list[dict[str, Any]]) -> dict[str, Any]:
    doc = python_function_document(
        name=name,
        module="urlfns",
        function="read",
        files=["urlfns.py", *(entry["path"] for entry in url_files)],
        title="Reads a file fetched from a URL",
        authors=["Doe, Jane"],
    )
    doc["dlhub"]["url_files"] = url_files
    return doc


def package_dir(tmp_path: Path) -> Path:
    (tmp_path / "urlfns.py").write_text(MODULE)
    return tmp_path


def test_s3_and_http_components_are_fetched_and_read_by_the_servable(
    alice: DLHubClient, server: FileServer, s3_object: str, tmp_path: Path
) -> None:
    name = f"urlfetch_{uuid.uuid4().hex[:8]}"
    url_files: list[dict[str, Any]] = [
        {"path": "data/s3.txt", "url": s3_object, "sha256": sha(S3_TEXT), "size_bytes": len(S3_TEXT)},
        {"path": "data/http.txt", "url": f"{server.url}/files/w.txt", "sha256": sha(HTTP_TEXT)},
    ]
    reply = alice.publish(document(name, url_files), base_dir=package_dir(tmp_path), timeout_s=120)
    assert reply["status"] == "ready"
    ref = f"alice/{name}"
    assert alice.run(ref, "s3.txt") == S3_TEXT.decode()
    assert alice.run(ref, "http.txt") == HTTP_TEXT.decode()
    log = alice.build_log(ref)["log"]
    assert any(line.startswith("fetched data/s3.txt") and sha(S3_TEXT) in line for line in log), log
    assert any(line.startswith("fetched data/http.txt") for line in log), log


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _post(stack: StackInfo, doc: dict[str, Any]) -> httpx.Response:
    files: dict[str, Any] = {
        "metadata": (None, json.dumps(doc), "application/json"),
        "package": ("package.tar.gz", _tar({"urlfns.py": MODULE.encode()}), "application/gzip"),
    }
    headers = {"Authorization": f"Bearer {stack.tokens['alice']}"}
    return httpx.post(stack.api + "/servables", files=files, headers=headers, timeout=30)


def test_a_tampered_component_fails_the_version_with_both_digests_over_rest(
    url_stack: StackInfo, alice: DLHubClient, server: FileServer
) -> None:
    name = f"tampered_{uuid.uuid4().hex[:8]}"
    declared = sha(HTTP_TEXT)
    doc = document(
        name, [{"path": "data/w.txt", "url": f"{server.url}/files/tampered.txt", "sha256": declared}]
    )
    response = _post(url_stack, doc)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    record = TaskHandle(alice, task_id).wait(timeout_s=60)
    assert record["state"] == "failed"
    assert record["error"]["type"] == "checksum_mismatch"
    actual = sha(HTTP_TEXT + b"tampered")
    assert declared in record["error"]["message"] and actual in record["error"]["message"]
    described = alice.describe(f"alice/{name}@1")
    assert described["status"] == "failed"
    build = alice.build_log(f"alice/{name}@1")
    assert build["state"] == "failed" and actual in build["error"] and "data/w.txt" in build["error"]


def test_a_slow_server_fails_the_version_at_the_time_limit(
    alice: DLHubClient, server: FileServer, tmp_path: Path
) -> None:
    name = f"slow_{uuid.uuid4().hex[:8]}"
    doc = document(name, [{"path": "data/w.txt", "url": f"{server.url}/slow/1000", "sha256": "0" * 64}])
    with pytest.raises(TaskFailed) as caught:
        alice.publish(doc, base_dir=package_dir(tmp_path), timeout_s=60)
    assert caught.value.error_type == "url_fetch_failed"
    assert f"longer than the {FETCH_TIMEOUT_S:g} s limit" in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"path": "data/w.txt", "url": "file:///etc/passwd", "sha256": "0" * 64}, "dlhub.url_files[0].url"),
        ({"path": "data/w.txt", "url": "https://example.org/w"}, "dlhub.url_files[0].sha256"),
        (
            {"path": "data/w.txt", "url": "https://example.org/w", "sha256": "xyz"},
            "dlhub.url_files[0].sha256",
        ),
        ({"path": "../w.txt", "url": "https://example.org/w", "sha256": "0" * 64}, "dlhub.url_files[0].path"),
    ],
)
def test_a_bad_declaration_is_a_typed_400(url_stack: StackInfo, entry: dict[str, Any], field: str) -> None:
    doc = document(f"bad_{uuid.uuid4().hex[:8]}", [])
    doc["dlhub"]["url_files"] = [entry]
    response = _post(url_stack, doc)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == field


def _cli(stack: StackInfo, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    return subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_publishes_a_url_component_and_refuses_a_tampered_one(
    url_stack: StackInfo, server: FileServer, s3_object: str, tmp_path: Path
) -> None:
    name = f"cliurl_{uuid.uuid4().hex[:8]}"
    good = [{"path": "data/w.txt", "url": s3_object, "sha256": sha(S3_TEXT)}]
    (package_dir(tmp_path) / "dlhub.json").write_text(json.dumps(document(name, good)))
    published = _cli(url_stack, tmp_path, "publish")
    assert published.returncode == 0, published.stdout + published.stderr
    ran = _cli(url_stack, tmp_path, "run", f"alice/{name}", "--input", '"w.txt"')
    assert ran.returncode == 0 and json.loads(ran.stdout) == S3_TEXT.decode(), ran.stdout + ran.stderr

    tampered = [{"path": "data/w.txt", "url": f"{server.url}/files/tampered.txt", "sha256": sha(HTTP_TEXT)}]
    (tmp_path / "dlhub.json").write_text(json.dumps(document(f"{name}_t", tampered)))
    refused = _cli(url_stack, tmp_path, "publish")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    output = refused.stdout + refused.stderr
    assert "checksum_mismatch" in output or sha(HTTP_TEXT + b"tampered") in output, output
