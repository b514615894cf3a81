"""Image exports (issue 11): a docker-environment version exported as an image runs outside DLHub and gives
the served result. The stack runs with the docker backend on the test engine (as in
tests/contract/test_docker_backend.py); `dlhub export --image --run` writes the `docker save` tarball and
prints the commands, the derived image is removed from the engine, and the printed commands are run for real
against the test engine (`docker load -i`, then `docker run --rm -i --network none ...`, DOCKER_HOST set to
the engine's URL; through the docker SDK when the docker CLI is missing).

Needs `scripts/test-servers start --only docker`; a missing engine skips these tests locally and fails them
in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.config import EnvironmentsConfig
from dlhub.common.errors import EnvironmentUnavailable
from dlhub.registry.http.openapi import build_openapi
from dlhub.registry.image_export import EXPORT_REPOSITORY, IMAGE_USER, LABEL_EXPORT, ImageExports
from dlhub.registry.store import StoredBuild, VersionRecord
from tests.support.stack import start_stack, stop_stack, unique

SPEC = build_openapi()
EXPORT_PATH = "/servables/{owner}/{name}/versions/{version}/export"
FUNCTIONS = """
def six_version(_):
    import six
    return six.__version__
"""


@dataclass
class ImageStack:
    url: str
    token: str
    env: dict[str, str]
    client: DLHubClient

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.url + "/api/v1" + path, headers=headers, params=params, timeout=120)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = self.env | {"DLHUB_URL": self.url, "DLHUB_TOKEN": self.token}
        return subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )


@pytest.fixture(scope="module")
def image_stack(docker_url: str) -> Iterator[ImageStack]:
    # Not under pytest's 0700 temp root: the containers' unprivileged user reads the servable store.
    base = Path(tempfile.mkdtemp(prefix="dlhub-image-export-test-"))
    base.chmod(0o755)
    env = {
        "DLHUB_ENVIRONMENTS__MODE": "auto",
        "DLHUB_ENVIRONMENTS__DOCKER_URL": docker_url,
        "DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE": os.environ.get(
            "DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm"
        ),
    }
    process, info = start_stack(base, workers=1, extra_env=env)
    try:
        yield ImageStack(info["url"], info["alice"], info["env"], DLHubClient(info["url"], info["alice"]))
    finally:
        code = stop_stack(process)
        log = (base / "up.log").read_text()[-4000:]
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log


def document(pins: dict[str, str], backend: str | None) -> dict[str, Any]:
    doc = python_function_document(
        name=unique("imgexp"),
        module="imgfns",
        function="six_version",
        files=["imgfns.py"],
        title="six_version, exported as an image",
        authors=["Doe, Jane"],
        dependencies=pins,
    )
    if backend:
        doc["dlhub"]["environment"] = {"backend": backend}
    return doc


def validate(body: Any, status: int) -> None:
    schema = SPEC["paths"][EXPORT_PATH]["get"]["responses"][str(status)]["content"]["application/json"]
    jsonschema.Draft202012Validator(dict(schema["schema"]) | {"components": SPEC["components"]}).validate(
        body
    )


def run_printed(commands: list[str], docker_url: str, engine: Any, inputs: str) -> str:
    """Follow the printed commands (the input filled in); the last line of what they print."""
    assert commands[-1].endswith("'<json input>'"), commands
    commands = [*commands[:-1], commands[-1].replace("'<json input>'", f"'{inputs}'")]
    if shutil.which("docker"):
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", " && ".join(commands)],
            env={"PATH": os.environ["PATH"], "DOCKER_HOST": docker_url, "HOME": tempfile.gettempdir()},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return ran.stdout.strip().splitlines()[-1]
    # No docker CLI here: the same two steps through the docker SDK.
    import shlex

    load, run = (shlex.split(c) for c in commands)
    assert load[:3] == ["docker", "load", "-i"] and run[:6] == [
        "docker",
        "run",
        "--rm",
        "-i",
        "--network",
        "none",
    ]
    with open(load[3], "rb") as handle:
        engine.images.load(handle)
    output = engine.containers.run(run[6], run[7:], network_mode="none", remove=True, stdin_open=True)
    return bytes(output).decode().strip().splitlines()[-1]


def test_an_exported_image_runs_the_version_outside_dlhub(
    image_stack: ImageStack, engine: Any, docker_url: str, tmp_path: Path
) -> None:
    client = image_stack.client
    (tmp_path / "imgfns.py").write_text(FUNCTIONS)
    reply = client.publish(document({"six": "1.16.0"}, "docker"), base_dir=tmp_path)
    assert reply["status"] == "ready"
    ref = f"{reply['shorthand_name']}@{reply['version']}"
    owner, name = reply["shorthand_name"].split("/")
    assert client.build_log(ref)["backend"] == "docker"
    served = client.run(ref, None)
    assert served == "1.16.0"

    # Export the image with the CLI; --run prints the load and run commands.
    target = tmp_path / "out" / "six.image.tar"
    target.parent.mkdir()
    exported = image_stack.cli("export", ref, "--image", "--run", "-o", str(target))
    assert exported.returncode == 0, exported.stderr
    commands = exported.stdout.strip().splitlines()
    assert len(commands) == 2, commands
    assert commands[0] == f"docker load -i {target.resolve()}"
    prefix = "docker run --rm -i --network none "
    assert commands[1].startswith(prefix), commands
    tag = commands[1][len(prefix) :].split()[0]
    assert tag.startswith(f"{EXPORT_REPOSITORY}:{owner}.{name}.{reply['version']}-"), tag
    with tarfile.open(target, "r:") as archive:
        names = set(archive.getnames())
    assert "manifest.json" in names and not list(target.parent.glob("*.part"))

    # The derived image: non-root, run.py as entry point, labelled with the version; cached by its tag.
    config = engine.images.get(tag).attrs["Config"]
    assert config["User"] == IMAGE_USER and config["Labels"][LABEL_EXPORT] == ref
    assert config["Entrypoint"] == ["/opt/env/bin/python", "/servable/run.py"] and not config.get("Cmd")
    path = EXPORT_PATH.format(owner=owner, name=name, version=reply["version"])
    with httpx.stream(
        "GET",
        image_stack.url + "/api/v1" + path,
        params={"format": "image"},
        headers={"Authorization": f"Bearer {image_stack.token}"},
        timeout=httpx.Timeout(30.0, read=600.0),
    ) as response:
        assert response.status_code == 200
        content_type = response.headers["Content-Type"]
        assert content_type == "application/x-tar"
        assert content_type in SPEC["paths"][EXPORT_PATH]["get"]["responses"]["200"]["content"]
        assert response.headers["DLHub-Image"] == tag  # the same image, not rebuilt
        assert (
            f'filename="{owner}-{name}-{reply["version"]}.image.tar"'
            in response.headers["Content-Disposition"]
        )
        next(response.iter_bytes())

    # The load must come from the file: remove the derived image from the engine first.
    engine.images.remove(tag)
    with pytest.raises(Exception, match="No such image"):
        engine.images.get(tag)
    output = run_printed(commands, docker_url, engine, "null")
    assert json.loads(output) == served
    assert engine.images.get(tag).attrs["Config"]["User"] == IMAGE_USER
    engine.images.remove(tag)  # the test's own image: not left on the shared engine


def test_only_docker_environment_versions_export_images(image_stack: ImageStack, tmp_path: Path) -> None:
    client = image_stack.client
    (tmp_path / "imgfns.py").write_text(FUNCTIONS)
    reply = client.publish(document({"six": "1.16.0"}, "venv"), base_dir=tmp_path)
    ref = f"{reply['shorthand_name']}@{reply['version']}"
    assert client.build_log(ref)["backend"] == "venv"
    owner, name = reply["shorthand_name"].split("/")
    path = f"/servables/{owner}/{name}/versions/{reply['version']}/export"
    response = image_stack.get(path, format="image")
    assert response.status_code == 400, response.text
    body = response.json()
    validate(body, 400)
    assert body["error"]["field"] == "format" and "venv environment" in body["error"]["message"]
    assert image_stack.get(path, format="tarball").status_code == 400
    assert image_stack.get(path, format="archive").headers["Content-Type"] == "application/gzip"
    missing = image_stack.get(f"/servables/{owner}/{name}/versions/9/export", format="image")
    assert missing.status_code == 404
    validate(missing.json(), 404)
    # The CLI fails with the registry's reason.
    cli = image_stack.cli("export", ref, "--image", "-o", str(tmp_path / "x.tar"))
    assert cli.returncode == 1 and "runs in a venv environment" in " ".join(cli.stderr.split())
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "x.tar.part").exists()
    parameter = next(p for p in SPEC["paths"][EXPORT_PATH]["get"]["parameters"] if p["name"] == "format")
    assert parameter["schema"]["enum"] == ["archive", "image"]


def test_no_engine_is_environment_unavailable_naming_the_pushed_image(tmp_path: Path) -> None:
    """No engine needed: an unreachable one answers 503 environment_unavailable, with the environment image's
    reference in the pushed registry."""
    config = EnvironmentsConfig(
        docker_url=f"unix://{tmp_path}/no-engine.sock", docker_registry="registry.example:5000"
    )
    record = VersionRecord(
        owner="alice",
        name="img",
        version=1,
        status="ready",
        metadata={"dlhub": {"name": "img"}, "servable": {"shim": "python.PythonStaticMethodServable"}},
        published_at_ms=0,
        environment="ab" * 16,
    )
    build = StoredBuild(
        servable=record.label, state="ready", environment="ab" * 16, backend="docker", python="3.11"
    )
    with pytest.raises(EnvironmentUnavailable) as raised:
        asyncio.run(ImageExports(config).prepare(record, build, b""))
    message = raised.value.message
    assert "no Docker engine answers" in message
    assert f"docker pull registry.example:5000/dlhub-env:{'ab' * 16}" in message
    assert (
        EnvironmentUnavailable.http_status == 503 and EnvironmentUnavailable.code == "environment_unavailable"
    )
