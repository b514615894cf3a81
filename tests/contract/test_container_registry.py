"""Docker environment images through a real container registry: the CNCF Distribution registry and the Docker
engine of the test tooling (``scripts/test-servers start --only docker --only registry``).

The builder pushes every image it builds and records the pushed tag and repository digest; a worker that
lacks the image pulls it by that digest instead of rebuilding it (proved by making the recorded lock
uninstallable before the second run); a registry that is down fails a push with ``registry_error`` naming the
registry, and makes a worker fall back to the lock, saying so in its log. Every repository used here is under
a prefix of this run's own (``<registry>/dlhub-test-<random>/dlhub-env``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from pydantic import SecretStr

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.client.sdk import TaskFailed
from dlhub.common.config import EnvironmentsConfig
from dlhub.common.docker_environments import (
    IMAGE_REPOSITORY,
    LABEL_ENV,
    LABEL_HOME,
    DockerBackend,
    home_label,
)
from dlhub.common.environments import (
    ENVIRONMENT_FILENAME,
    BuildLog,
    Deadline,
    EnvironmentRecord,
    read_environment,
    record_json,
)
from dlhub.common.errors import BuildFailed, RegistryError
from dlhub.common.servable_store import version_dir
from tests.support.polling import wait_until
from tests.support.stack import start_stack, stop_stack, unique

FUNCTIONS = """
def six_version(_):
    import six
    return six.__version__
"""
SIX = "1.15.0"
"""Not the version test_docker_backend.py pins: an environment (and container label) of this module's own."""
UNINSTALLABLE_LOCK = "dlhub-no-such-package==0.0.0 --hash=sha256:" + "0" * 64 + "\n"
SECRET = f"dlhub-registry-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def registry(container_registry: str) -> str:
    """This module's own prefix in the test registry (``host:port/dlhub-test-<random>``)."""
    return f"{container_registry}/dlhub-test-{uuid.uuid4().hex[:12]}"


def dead_registry() -> str:
    """``127.0.0.1:<port>`` where nothing listens (a port the kernel just handed out and took back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def registry_tags(registry: str) -> list[str]:
    host, _, prefix = registry.partition("/")
    response = httpx.get(f"http://{host}/v2/{prefix}/{IMAGE_REPOSITORY}/tags/list", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json().get("tags") or [])


def manifest_digest(registry: str, tag: str) -> str:
    host, _, prefix = registry.partition("/")
    accept = ", ".join(
        [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        ]
    )
    url = f"http://{host}/v2/{prefix}/{IMAGE_REPOSITORY}/manifests/{tag}"
    response = httpx.head(url, headers={"Accept": accept}, timeout=10)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def six_document() -> dict[str, Any]:
    doc = python_function_document(
        name=unique("six_version"),
        module="dockerfns",
        function="six_version",
        files=["dockerfns.py"],
        title="six in a container, through a registry",
        authors=["Doe, Jane"],
        dependencies={"six": SIX},
    )
    doc["dlhub"]["environment"] = {"backend": "docker"}
    return doc


def stack_env(docker_url: str, registry: str) -> dict[str, str]:
    return {
        "DLHUB_ENVIRONMENTS__MODE": "auto",
        "DLHUB_ENVIRONMENTS__DOCKER_URL": docker_url,
        "DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE": os.environ.get(
            "DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm"
        ),
        "DLHUB_ENVIRONMENTS__DOCKER_REGISTRY": registry,
    }


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's 0700 temp root: the containers' unprivileged user reads the servable store.
    path = Path(tempfile.mkdtemp(prefix="dlhub-creg-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_published_image_is_pushed_and_a_worker_pulls_it_instead_of_rebuilding(
    docker_url: str, engine: Any, registry: str, base: Path, tmp_path: Path
) -> None:
    env = stack_env(docker_url, registry)
    (tmp_path / "dockerfns.py").write_text(FUNCTIONS)
    doc = six_document()
    record: EnvironmentRecord | None = None
    try:
        # 1. Publish: the builder builds the image and pushes it; the record names the pushed digest.
        process, info = start_stack(base, workers=1, extra_env=env)
        try:
            client = DLHubClient(info["url"], info["alice"])
            built_at = time.monotonic()
            reply = client.publish(doc, base_dir=tmp_path)
            build_s = time.monotonic() - built_at
            assert reply["status"] == "ready", reply
            assert client.run(reply["shorthand_name"], None) == SIX
        finally:
            assert stop_stack(process) == 0, (base / "up.log").read_text()[-4000:]
        owner, name = reply["shorthand_name"].split("/")
        vdir = version_dir(info["data_dir"] / "servables", owner, name, 1)
        record = read_environment(vdir)
        assert record is not None and record.backend == "docker"
        repository = f"{registry}/{IMAGE_REPOSITORY}"
        assert record.image == f"{repository}:{record.id}"
        assert record.image_digest.startswith(f"{repository}@sha256:"), record.image_digest
        build_log = json.loads((vdir / "build.json").read_text())["log"]
        assert any(line.startswith(f"pushed {record.image}") for line in build_log), build_log

        # ... and the registry has it, under that digest.
        assert record.id in registry_tags(registry)
        digest = record.image_digest.split("@", 1)[1]
        assert manifest_digest(registry, record.id) == digest
        local = engine.images.get(record.image)
        assert record.image_digest in local.attrs["RepoDigests"]
        image_id = local.id

        # 2. The image leaves the engine (its containers went with the stack) and the lock can no longer be
        # installed: a worker can only run the servable again by pulling the pushed image.
        ours = {"label": [f"{LABEL_ENV}={record.id}", f"{LABEL_HOME}={home_label(info['data_dir'])}"]}
        wait_until(
            lambda: not engine.containers.list(all=True, filters=ours),
            timeout_s=30,
            message="the executor containers to be removed with the stack",
        )
        engine.images.remove(record.image, force=True)
        assert not engine.images.list(name=repository)
        broken = msgspec.structs.replace(record, lock=UNINSTALLABLE_LOCK)
        (vdir / ENVIRONMENT_FILENAME).write_bytes(record_json(broken))
        (info["data_dir"] / "client.json").unlink()

        process, info = start_stack(base, workers=1, extra_env=env)
        try:
            client = DLHubClient(info["url"], info["alice"])
            ran_at = time.monotonic()
            assert client.run(reply["shorthand_name"], None) == SIX
            pull_s = time.monotonic() - ran_at
        finally:
            assert stop_stack(process) == 0, (base / "up.log").read_text()[-4000:]
        pulled = engine.images.get(record.image)
        assert pulled.id == image_id
        assert record.image_digest in pulled.attrs["RepoDigests"]
        logs = "".join(p.read_text(errors="replace") for p in (info["data_dir"] / "logs").glob("*.log"))
        assert "pulled a missing environment image" in logs
        assert "rebuilding a missing environment image" not in logs
        print(f"build+push {build_s:.1f} s; run after pull {pull_s:.1f} s")
    finally:
        if record is not None:
            ours = {"label": [f"{LABEL_ENV}={record.id}", f"{LABEL_HOME}={home_label(base / 'data')}"]}
            for leftover in engine.containers.list(all=True, filters=ours):
                leftover.remove(force=True)
            with contextlib.suppress(Exception):
                engine.images.remove(record.image, force=True)


def test_publish_with_the_registry_down_fails_the_version_with_registry_error(
    docker_url: str, engine: Any, base: Path, tmp_path: Path
) -> None:
    down = f"{dead_registry()}/dlhub-test-{uuid.uuid4().hex[:12]}"
    (tmp_path / "dockerfns.py").write_text(FUNCTIONS)
    doc = six_document()
    process, info = start_stack(base, workers=1, extra_env=stack_env(docker_url, down))
    try:
        client = DLHubClient(info["url"], info["alice"])
        with pytest.raises(TaskFailed) as failure:
            client.publish(doc, base_dir=tmp_path)
        assert failure.value.error_type == "registry_error"
        assert f"to the registry {down.partition('/')[0]} failed" in str(failure.value)
        assert "connection refused" in str(failure.value).lower()
        [version] = client.versions(f"alice/{doc['dlhub']['name']}")
        assert version["status"] == "failed" and "registry" in version["status_reason"]
    finally:
        assert stop_stack(process) == 0, (base / "up.log").read_text()[-4000:]
        for image in engine.images.list(name=f"{down}/{IMAGE_REPOSITORY}"):
            for tag in image.tags:
                engine.images.remove(tag, force=True)


def test_push_to_a_registry_that_is_down_fails_typed_naming_the_registry(
    docker_url: str, engine: Any
) -> None:
    down = dead_registry()
    base_image = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    config = EnvironmentsConfig(
        docker_url=docker_url,
        docker_base_image=base_image,
        docker_registry=f"{down}/dlhub-test",
        docker_registry_username="jane",
        docker_registry_password=SecretStr(SECRET),
    )
    record = EnvironmentRecord(kind="isolated", backend="docker", id=uuid.uuid4().hex, python="3.11")
    tag = f"{down}/dlhub-test/{IMAGE_REPOSITORY}:{record.id}"
    # The image is already in the engine (no build needed): only the push is left, and it cannot succeed.
    engine.images.get(base_image).tag(tag.rpartition(":")[0], record.id)
    build_log = BuildLog("t")
    try:
        with structlog.testing.capture_logs() as events, pytest.raises(RegistryError) as failure:
            DockerBackend(config).publish(record, build_log, Deadline(120))
    finally:
        engine.images.remove(tag)
    error = failure.value
    assert error.code == "registry_error" and isinstance(error, BuildFailed)
    assert f"pushing {tag} to the registry {down} failed" in error.message
    assert "connection refused" in error.message.lower(), error.message
    assert SECRET not in repr(config) and SECRET not in error.message
    assert SECRET not in "\n".join(build_log.record.log) + repr(events)


def test_worker_falls_back_to_the_lock_when_the_pull_fails_and_says_so(docker_url: str) -> None:
    down = dead_registry()
    base_image = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    env_id = uuid.uuid4().hex
    repository = f"{down}/dlhub-test/{IMAGE_REPOSITORY}"
    record = EnvironmentRecord(
        kind="isolated",
        backend="docker",
        id=env_id,
        python="3.11",
        lock=UNINSTALLABLE_LOCK,  # the rebuild fails fast: what matters is that it is attempted, and why
        image=f"{repository}:{env_id}",
        image_digest=f"{repository}@sha256:{'1' * 64}",
    )
    config = EnvironmentsConfig(docker_url=docker_url, docker_base_image=base_image, docker_registry=down)
    build_log = BuildLog("t")
    with structlog.testing.capture_logs() as events, pytest.raises(BuildFailed) as failure:
        DockerBackend(config).ensure(record, build_log, Deadline(300))
    assert not isinstance(failure.value, RegistryError)
    assert f"rebuilding from the lock because the pull failed: pulling {record.image_digest}" in (
        failure.value.message
    )
    assert f"from the registry {down} failed" in failure.value.message
    [warning] = [e for e in events if e["event"] == "rebuilding a missing environment image from its lock"]
    assert warning["log_level"] == "warning" and warning["environment"] == env_id
    assert warning["reason"].startswith("the pull failed: ") and down in warning["reason"]
    assert any(line.startswith(f"rebuilding {record.image} from the lock") for line in build_log.record.log)

    # Without a registry configured the worker does not try one, and says that instead.
    local = EnvironmentsConfig(docker_url=docker_url, docker_base_image=base_image)
    with structlog.testing.capture_logs() as events, pytest.raises(BuildFailed):
        DockerBackend(local).ensure(record, BuildLog("t"), Deadline(300))
    [warning] = [e for e in events if e["event"] == "rebuilding a missing environment image from its lock"]
    assert warning["reason"] == "no container registry is configured"
