"""Exports (issue 11): a version downloaded as a .tar.gz runs elsewhere with a plain Python venv and gives the
served result. The version's own environment is followed live while it builds (GET .../build?follow=true,
every line validated against the OpenAPI document), exported with `dlhub export --run`, and the printed
commands are run for real: create a venv, install the hash-pinned lock, run run.py.

The stack runs with environments mode "auto" (like tests/test_environments.py); downloads are small
pure-Python wheels (iniconfig, msgspec), cached after the first run.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.client.sdk import TaskHandle
from dlhub.registry.http.openapi import build_openapi
from tests.support.stack import start_stack, stop_stack, unique

SPEC = build_openapi()
VERSION_PATH = "/servables/{owner}/{name}/versions/{version}"
ENV_FUNCTIONS = """
import importlib.metadata


def package_version(name):
    return importlib.metadata.version(name)


def describe(values):
    return {"n": len(values), "total": sum(values), "first": values[0]}
"""


def validate(body: Any, path: str, status: int, content_type: str = "application/json") -> None:
    schema = SPEC["paths"][path]["get"]["responses"][str(status)]["content"][content_type]["schema"]
    jsonschema.Draft202012Validator(dict(schema) | {"components": SPEC["components"]}).validate(body)


class EnvStack:
    def __init__(self, info: dict[str, Any]) -> None:
        self.url: str = info["url"]
        self.env: dict[str, str] = info["env"]
        self.token: str = info["alice"]
        self.client = DLHubClient(self.url, self.token)

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.url + "/api/v1" + path, headers=headers, params=params, timeout=60)

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env | {"DLHUB_URL": self.url, "DLHUB_TOKEN": self.token}
        return subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=cwd,
        )


@pytest.fixture(scope="module")
def env_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvStack]:
    base = tmp_path_factory.mktemp("exportstack")
    process, info = start_stack(base, workers=1, extra_env={"DLHUB_ENVIRONMENTS__MODE": "auto"})
    try:
        yield EnvStack(info)
    finally:
        code = stop_stack(process)
        assert code == 0, (base / "up.log").read_text()[-4000:]


@pytest.fixture(scope="module")
def env_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exportpkg")
    (path / "envfns.py").write_text(ENV_FUNCTIONS)
    return path


def function_doc(name: str, function: str, pins: dict[str, str]) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module="envfns",
        function=function,
        files=["envfns.py"],
        title=f"{function}, exported",
        authors=["Doe, Jane"],
        dependencies=pins,
    )


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                out[member.name.split("/", 1)[1]] = handle.read()
        return out


def test_a_version_with_its_own_venv_is_followed_exported_and_runs_elsewhere(
    env_stack: EnvStack, env_pkg: Path, tmp_path: Path
) -> None:
    client = env_stack.client
    name = unique("exported")
    reply = client.publish(
        function_doc(name, "package_version", {"iniconfig": "1.1.1"}), base_dir=env_pkg, wait=False
    )
    ref = f"alice/{name}@{reply['version']}"
    path = f"/servables/alice/{name}/versions/{reply['version']}/build"

    # Follow the build live: the record so far, then events until it is ready.
    lines: list[dict[str, Any]] = []
    with httpx.stream(
        "GET",
        env_stack.url + "/api/v1" + path,
        params={"follow": "true"},
        headers={"Authorization": f"Bearer {env_stack.token}"},
        timeout=httpx.Timeout(10.0, read=600.0),
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        lines.extend(json.loads(line) for line in response.iter_lines() if line.strip())
    for line in lines:
        validate(line, VERSION_PATH + "/build", 200, "application/x-ndjson")
    assert "servable" in lines[0] and all("servable" not in line for line in lines[1:])
    seen = [s["state"] for s in lines[0]["states"]] + [e["state"] for e in lines[1:] if "state" in e]
    assert seen[0] == "queued" and seen[-1] == "ready", seen
    assert {"resolving", "installing"} <= set(seen), seen
    followed_log = list(lines[0]["log"]) + [x for e in lines[1:] for x in e.get("lines", [])]
    assert TaskHandle(client, reply["task_id"]).wait(120)["state"] == "completed"

    record = client.build_log(ref)
    assert record["state"] == "ready" and record["environment"] and record["backend"] == "venv"
    assert record["log"] == followed_log  # the stream carried every line, in order
    described = client.describe(ref)
    assert described["environment"] == record["environment"] and described["build_state"] == "ready"

    served = client.run(ref, "iniconfig")
    assert served == "1.1.1"

    # Export it with the CLI and follow the printed commands for real, somewhere else.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    archive = tmp_path / "download" / "x.tar.gz"
    archive.parent.mkdir()
    exported = env_stack.cli("export", "--run", ref, "-o", str(archive))
    assert exported.returncode == 0, exported.stderr
    commands = exported.stdout.strip().splitlines()
    assert any("--require-hashes" in c and "requirements.lock" in c for c in commands), commands
    assert commands[-1].endswith("run.py '<json input>'"), commands
    commands[-1] = commands[-1].replace("'<json input>'", "'\"iniconfig\"'")
    clean_env = {k: v for k, v in env_stack.env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", " && ".join(commands)],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == served

    files = members(archive)
    lock = files["requirements.lock"].decode()
    assert "iniconfig==1.1.1" in lock and "--hash=sha256:" in lock
    assert json.loads(files["dlhub.json"])["dlhub"]["name"] == name
    assert files["files/envfns.py"].decode() == ENV_FUNCTIONS
    assert "Dockerfile" not in files and "README.txt" in files and "run.py" in files
    assert json.loads(files["export.json"])["environment"] == record["environment"]


def test_a_shared_environment_version_exports_pinned_requirements(
    env_stack: EnvStack, env_pkg: Path, tmp_path: Path
) -> None:
    client = env_stack.client
    name = unique("sharedexp")
    reply = client.publish(function_doc(name, "describe", {}), base_dir=env_pkg)
    ref = f"alice/{name}@{reply['version']}"
    assert client.build_log(ref)["environment"] == ""
    served = client.run(ref, [3, 4, 5])
    response = env_stack.get(f"/servables/alice/{name}/versions/1/export")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/gzip"
    assert f"alice-{name}-1.tar.gz" in response.headers["Content-Disposition"]
    archive = tmp_path / "shared.tar.gz"
    archive.write_bytes(response.content)
    files = members(archive)
    requirements = files["requirements.txt"].decode().split()
    assert any(r.startswith("msgspec==") for r in requirements) and "requirements.lock" not in files
    # The interpreter running the tests has the pinned msgspec: run.py needs nothing else.
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    run = subprocess.run(
        [sys.executable, str(tmp_path / f"alice-{name}-1" / "run.py"), "[3, 4, 5]"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == served == {"n": 3, "total": 12, "first": 3}


def test_export_answers_follow_the_document(env_stack: EnvStack, env_pkg: Path) -> None:
    client = env_stack.client
    name = unique("unsat")
    metadata = env_pkg / f"{name}.json"
    metadata.write_text(json.dumps(function_doc(name, "package_version", {"six": "999.0.0"})))
    # `dlhub publish` of a build that fails: the log tail and the resolver's error, exit code 1.
    published = env_stack.cli("publish", str(metadata))
    assert published.returncode == 1, published.stdout + published.stderr
    assert "no version of six==999.0.0" in published.stderr
    assert "failed; last" in published.stderr
    record = client.build_log(f"alice/{name}@1")
    assert record["state"] == "failed" and "no version of six==999.0.0" in record["error"]
    assert record["error"] == client.versions(f"alice/{name}")[0]["status_reason"]
    # Only a ready version is exported.
    response = env_stack.get(f"/servables/alice/{name}/versions/1/export")
    assert response.status_code == 409, response.text
    validate(response.json(), VERSION_PATH + "/export", 409)
    missing = env_stack.get(f"/servables/alice/{name}/versions/9/export")
    assert missing.status_code == 404
    validate(missing.json(), VERSION_PATH + "/export", 404)


def test_a_docker_environment_export_has_a_dockerfile_that_installs_the_lock() -> None:
    from dlhub.registry.export import export_archive, shared_requirements
    from dlhub.registry.store import StoredBuild, VersionRecord

    record = VersionRecord(
        owner="alice",
        name="img",
        version=2,
        status="ready",
        metadata={"dlhub": {"name": "img"}, "servable": {"shim": "python.PythonStaticMethodServable"}},
        published_at_ms=0,
        environment="docker-abc",
    )
    lock = "iniconfig==1.1.1 \\\n    --hash=sha256:0123\n"
    build = StoredBuild(
        servable=record.label,
        state="ready",
        environment="docker-abc",
        backend="docker",
        python="3.11",
        lock=lock,
        base_image="dlhub-base:bookworm",
    )
    archive = export_archive(record, build, b"")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = {m.name for m in tar.getmembers()}
        dockerfile = tar.extractfile("alice-img-2/Dockerfile").read().decode()  # type: ignore[union-attr]
        manifest = json.loads(tar.extractfile("alice-img-2/export.json").read())  # type: ignore[union-attr]
    assert (
        "alice-img-2/requirements.lock" in names and "alice-img-2/runtime/dlhub/worker/executor.py" in names
    )
    assert dockerfile.startswith("# Rebuilds") and "FROM dlhub-base:bookworm" in dockerfile
    assert "--require-hashes --no-deps -r /tmp/requirements.lock" in dockerfile
    assert manifest["backend"] == "docker" and manifest["commands"][2] == "python3.11 -m venv env"
    # A shared scikit-learn version pins its framework to what is installed here.
    import importlib.metadata

    pinned = shared_requirements({"servable": {"shim": "sklearn.ScikitLearnServable"}})
    assert f"scikit-learn=={importlib.metadata.version('scikit-learn')}" in pinned
    assert f"msgspec=={importlib.metadata.version('msgspec')}" in pinned
