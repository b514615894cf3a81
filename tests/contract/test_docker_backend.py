"""The docker backend of per-servable environments, for real: the engine and base image the test tooling
starts (``scripts/test-servers start --only docker``: dockerd without a bridge, ``dlhub-base:bookworm`` from
debootstrap). A missing engine skips these tests locally and fails them in CI."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.config import DLHubSettings, EnvironmentsConfig
from dlhub.common.docker_environments import LABEL_ENV
from dlhub.common.environments import ENVIRONMENT_FILENAME, EnvironmentRecord, read_environment, record_json
from dlhub.common.errors import EnvironmentUnavailable
from dlhub.common.servable_store import version_dir
from dlhub.worker.environments import EnvironmentPools
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutorPool
from tests.support.stack import running_stack, unique

FUNCTIONS = """
import sys


def six_version(_):
    import six
    return six.__version__


def prefix(_):
    return sys.prefix
"""


@pytest.fixture(scope="module")
def docker_stack(docker_url: str) -> Iterator[tuple[DLHubClient, Path]]:
    # Not under pytest's 0700 temp root: the containers' unprivileged user reads the servable store.
    base = Path(tempfile.mkdtemp(prefix="dlhub-docker-test-"))
    base.chmod(0o755)
    image = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    env = {
        "DLHUB_ENVIRONMENTS__MODE": "auto",
        "DLHUB_ENVIRONMENTS__DOCKER_URL": docker_url,
        "DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE": image,
    }
    try:
        with running_stack(base, workers=1, extra_env=env) as info:
            yield DLHubClient(info.url, info.tokens["alice"]), info.data_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


def docker_document(function: str, pins: dict[str, str], **environment: Any) -> dict[str, Any]:
    doc = python_function_document(
        name=unique(function),
        module="dockerfns",
        function=function,
        files=["dockerfns.py"],
        title=f"{function} in a container",
        authors=["Doe, Jane"],
        dependencies=pins,
    )
    doc["dlhub"]["environment"] = {"backend": "docker", **environment}
    return doc


def test_docker_servable_runs_end_to_end_in_a_locked_down_container(
    docker_stack: tuple[DLHubClient, Path], engine: Any, tmp_path: Path
) -> None:
    client, data_dir = docker_stack
    (tmp_path / "dockerfns.py").write_text(FUNCTIONS)
    reply = client.publish(docker_document("six_version", {"six": "1.16.0"}), base_dir=tmp_path)
    assert reply["status"] == "ready"
    assert client.run(reply["shorthand_name"], None) == "1.16.0"
    owner, name = reply["shorthand_name"].split("/")
    record = read_environment(version_dir(data_dir / "servables", owner, name, 1))
    assert record is not None and record.backend == "docker" and record.image == f"dlhub-env:{record.id}"
    assert engine.images.get(record.image).labels[LABEL_ENV] == record.id

    containers = engine.containers.list(filters={"label": f"{LABEL_ENV}={record.id}"})
    assert len(containers) == 1
    attrs = containers[0].attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert "/tmp" in host["Tmpfs"]
    assert host["LogConfig"]["Type"] == "none"  # the protocol on stdout is not logged by dockerd
    assert host["NetworkMode"] == "none"
    assert set(attrs["NetworkSettings"]["Networks"]) == {"none"}
    mounts = attrs["Mounts"]
    assert mounts and all(m["RW"] is False for m in mounts)
    assert not any("docker.sock" in m["Source"] for m in mounts)

    # Same lock, same image; a container of its own, since a container mounts only its version's directory.
    other = client.publish(docker_document("prefix", {"six": "1.16.0"}), base_dir=tmp_path)
    assert client.run(other["shorthand_name"], None) == "/opt/env"
    assert len(engine.containers.list(filters={"label": f"{LABEL_ENV}={record.id}"})) == 2


def test_docker_network_is_opt_in(
    docker_stack: tuple[DLHubClient, Path], engine: Any, tmp_path: Path
) -> None:
    client, data_dir = docker_stack
    (tmp_path / "dockerfns.py").write_text(FUNCTIONS)
    reply = client.publish(docker_document("six_version", {"six": "1.16.0"}, network=True), base_dir=tmp_path)
    assert client.run(reply["shorthand_name"], None) == "1.16.0"
    owner, name = reply["shorthand_name"].split("/")
    record = read_environment(version_dir(data_dir / "servables", owner, name, 1))
    assert record is not None and record.network
    found = engine.containers.list(filters={"label": f"{LABEL_ENV}={record.id}"})
    # The environment (image) is shared with the servables above; the container with network is its own.
    assert "host" in {c.attrs["HostConfig"]["NetworkMode"] for c in found}


def test_worker_without_an_engine_serves_venv_and_fails_docker_typed(tmp_path: Path) -> None:
    """No engine at all (no DLHUB_TEST_DOCKER_URL needed): a docker version fails with
    ``environment_unavailable``, a shared one still runs."""
    settings = DLHubSettings(
        data_dir=tmp_path,
        environments=EnvironmentsConfig(docker_url=f"unix://{tmp_path}/no-engine.sock"),
    )
    docker_version = tmp_path / "servables" / "alice" / "d" / "1"
    docker_version.mkdir(parents=True)
    record = EnvironmentRecord(
        kind="isolated", backend="docker", id="0" * 32, python="3.11", lock="six==1.16.0"
    )
    (docker_version / ENVIRONMENT_FILENAME).write_bytes(record_json(record))
    shared_version = tmp_path / "servables" / "alice" / "s" / "1"
    shared_version.mkdir(parents=True)

    async def scenario() -> None:
        shared = ExecutorPool(processes=1, max_message_bytes=1 << 20)
        pools = EnvironmentPools(settings, shared=shared, file_limits=FileLimits())
        try:
            with pytest.raises(EnvironmentUnavailable, match="no Docker engine answers"):
                await pools.backend_for(docker_version)
            assert await pools.backend_for(shared_version) is shared
        finally:
            await pools.close()

    asyncio.run(scenario())
