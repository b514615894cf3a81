"""The docker backend when the engine cannot see the services' files: a builder and a worker that reach the
engine only over ``tcp://`` with mutual TLS (as in a container, with no Docker socket) and the ``copy``
transfer. The build context and each executor's runtime and version directory go in through the engine API;
the executor speaks over the attach stream relayed by ``dlhub.worker.docker_relay``."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.client import DLHubClient
from dlhub.common.config import EnvironmentsConfig
from dlhub.common.docker_environments import LABEL_ENV, DockerBackend
from dlhub.common.environments import read_environment
from dlhub.common.servable_store import version_dir
from tests.contract.test_docker_backend import FUNCTIONS, docker_document
from tests.support.stack import running_stack


@pytest.fixture(scope="module")
def base_image(engine: Any) -> Iterator[str]:
    """The base image under a tag of this module only: the environment id digests it, so the image is built
    here (through the engine API over TLS), never found from an earlier test."""
    source = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    repository, tag = "dlhub-base", f"remote-{uuid.uuid4().hex[:8]}"
    engine.images.get(source).tag(repository, tag)
    yield f"{repository}:{tag}"
    engine.images.remove(f"{repository}:{tag}")


@pytest.fixture(scope="module")
def remote_stack(docker_tls: tuple[str, Path], base_image: str) -> Iterator[tuple[DLHubClient, Path]]:
    url, certs = docker_tls
    base = Path(tempfile.mkdtemp(prefix="dlhub-remote-engine-"))
    base.chmod(0o755)
    env = {
        "DLHUB_ENVIRONMENTS__MODE": "auto",
        "DLHUB_ENVIRONMENTS__DOCKER_URL": url,
        "DLHUB_ENVIRONMENTS__DOCKER_TLS_CERT_DIR": str(certs),
        "DLHUB_ENVIRONMENTS__DOCKER_TRANSFER": "copy",
        "DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE": base_image,
    }
    try:
        with running_stack(base, workers=1, extra_env=env) as info:
            yield DLHubClient(info.url, info.tokens["alice"]), info.data_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_build_and_run_through_the_engine_api_only(
    remote_stack: tuple[DLHubClient, Path], docker_tls: tuple[str, Path], engine: Any, tmp_path: Path
) -> None:
    client, data_dir = remote_stack
    url, certs = docker_tls
    (tmp_path / "dockerfns.py").write_text(FUNCTIONS)
    reply = client.publish(docker_document("six_version", {"six": "1.16.0"}), base_dir=tmp_path)
    assert reply["status"] == "ready", reply
    ref = reply["shorthand_name"]
    owner, name = ref.split("/")
    record = read_environment(version_dir(data_dir / "servables", owner, name, 1))
    assert record is not None and record.backend == "docker" and record.image
    try:
        assert engine.images.get(record.image).labels[LABEL_ENV] == record.id
        log = "\n".join(client.build_log(ref)["log"])
        assert f"image {record.image}:" in log, log[-2000:]  # built now, not found
        # The build container (and its volume holding the build files) is gone.
        assert not engine.containers.list(all=True, filters={"label": f"{LABEL_ENV}={record.id}"})

        assert client.run(ref, None) == "1.16.0"
        assert client.run_async(ref, None).result(timeout_s=60) == "1.16.0"

        containers = engine.containers.list(filters={"label": f"{LABEL_ENV}={record.id}"})
        assert len(containers) == 1
        attrs = containers[0].attrs
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "65534:65534"
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
        assert host["NetworkMode"] == "none" and host["LogConfig"]["Type"] == "none"
        # Copies in anonymous volumes, no bind mount: the engine never needed the worker's paths.
        mounts = attrs["Mounts"]
        assert mounts and {m["Type"] for m in mounts} == {"volume"}, mounts
        volumes = {m["Name"] for m in mounts}

        # Removing an executor (as the worker's reap does) takes its volumes, the copies, with it.
        backend = DockerBackend(EnvironmentsConfig(docker_url=url, docker_tls_cert_dir=certs))
        backend.remove_container(containers[0].name)
        remaining = {v.name for v in engine.volumes.list()}
        assert not volumes & remaining
    finally:
        engine.images.remove(record.image, force=True)
