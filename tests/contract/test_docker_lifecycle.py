"""Docker executors end to end against the real engine (``scripts/test-servers start --only docker``):
containers never outlive their task or their worker, mounts and cgroup limits are least privilege, builds
leave no trace of the index settings, and unreferenced images are garbage collected.

One image is built for the whole module (the runtime only, with a unique comment in its lock so that its id
is this run's own); every container and tag made here is removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.builder.gc import collect
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings, EnvironmentsConfig
from dlhub.common.docker_environments import (
    LABEL_ENV,
    LABEL_HOME,
    LABEL_WORKER,
    SOCKET_MOUNT,
    DockerBackend,
    home_label,
)
from dlhub.common.environments import (
    ENVIRONMENT_FILENAME,
    RUNTIME_REQUIREMENT,
    BuildLog,
    Deadline,
    EnvironmentRecord,
    environment_id,
    lock,
    record_json,
)
from dlhub.common.errors import TaskTimeout
from dlhub.common.ids import new_id
from dlhub.worker.environments import EnvironmentPools
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutorPool
from tests.support.polling import await_until
from tests.support.worker_servables import PYTHON_SHIM, function_method, write_servable

CODEC = Codec()
MARKER = f"dlhub-secret-marker-{uuid.uuid4().hex}"
MEMORY_BYTES = 300 * 1024 * 1024
FUNCTIONS = textwrap.dedent(
    """
    import sys
    import time


    def noop(x):
        return "hello world"


    def sleep(seconds):
        sys.stderr.write("dlhub-test: sleeping\\n")
        sys.stderr.flush()
        time.sleep(seconds)
        return seconds
    """
)


class Index404(http.server.BaseHTTPRequestHandler):
    """An extra index that has nothing (pip moves on); records that pip asked it."""

    paths: list[str] = []

    def do_GET(self) -> None:
        Index404.paths.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Not under pytest's 0700 temp root: the containers' unprivileged user reads the servable.
    path = Path(tempfile.mkdtemp(prefix="dlhub-docker-life-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def built(docker_url: str, engine: Any, base: Path) -> Iterator[tuple[EnvironmentsConfig, EnvironmentRecord]]:
    """The module's image, built with an extra index URL and a CA bundle that carry a marker."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index404)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ca = base / "ca.pem"
    system_ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    ca.write_text(f"# {MARKER}\n" + system_ca.read_text())
    image = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    config = EnvironmentsConfig(
        docker_url=docker_url,
        docker_base_image=image,
        extra_index_urls=[f"http://127.0.0.1:{server.server_port}/{MARKER}/simple"],
        ca_bundle=ca,
        docker_memory_bytes=MEMORY_BYTES,
        docker_cpus=0.5,
        docker_pids_limit=64,
    )
    text = lock([RUNTIME_REQUIREMENT], config.docker_base_python, config, BuildLog("t"), Deadline(300))
    text += f"# {uuid.uuid4().hex}\n"  # this run's own environment id, so that it is built here
    env_id = environment_id("docker", config.docker_base_python, text, image)
    record = EnvironmentRecord(
        kind="isolated", backend="docker", id=env_id, python=config.docker_base_python, lock=text
    )
    try:
        tag = DockerBackend(config).ensure(record, BuildLog("t"), Deadline(600))
        record.image = tag
        assert Index404.paths, "the build did not use the configured extra index"
        yield config, record
    finally:
        server.shutdown()
        for container in engine.containers.list(all=True, filters={"label": f"{LABEL_ENV}={env_id}"}):
            container.remove(force=True)
        for found in engine.images.list(filters={"label": f"{LABEL_ENV}={env_id}"}):
            for tag in found.tags:
                engine.images.remove(tag, force=True)


def docker_version(root: Path, record: EnvironmentRecord, name: str) -> Path:
    methods = {
        "run": function_method("noop", module="lifefns"),
        "sleep": function_method("sleep", module="lifefns"),
    }
    directory = write_servable(
        root, "alice", name, 1, shim=PYTHON_SHIM, methods=methods, files={"lifefns.py": FUNCTIONS}
    )
    (directory / ENVIRONMENT_FILENAME).write_bytes(record_json(record))
    for path in [root, *directory.relative_to(root).parents, *directory.rglob("*")]:
        target = root / path if not path.is_absolute() else path
        target.chmod(0o755 if target.is_dir() else 0o644)
    return directory


def settings_for(data_dir: Path, config: EnvironmentsConfig) -> DLHubSettings:
    return DLHubSettings(data_dir=data_dir, environments=config)


async def run(pools: EnvironmentPools, directory: Path, method: str, value: Any, timeout_s: float) -> Any:
    backend = await pools.backend_for(directory)
    reply = await backend.execute(
        task_id=new_id(),
        servable=f"alice/{directory.parent.name}@1",
        version_dir=str(directory),
        method=method,
        inputs=CODEC.encode_value(value),
        parameters=CODEC.encode_value({}),
        timeout_s=timeout_s,
    )
    assert reply.ok, reply.error
    return CODEC.decode_value(reply.output)


def names(engine: Any, **labels: str) -> set[str]:
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return {c.name for c in engine.containers.list(all=True, filters=filters)}


async def wait_gone(engine: Any, name: str, timeout_s: float) -> None:
    await await_until(
        lambda: name not in {c.name for c in engine.containers.list(all=True)},
        timeout_s=timeout_s,
        interval_s=0.1,
        message=f"container {name} to be removed",
    )


def test_timeout_kills_the_container_and_limits_and_mounts_are_least_privilege(
    built: tuple[EnvironmentsConfig, EnvironmentRecord], engine: Any, base: Path
) -> None:
    config, record = built
    data_dir = base / "timeout"
    directory = docker_version(data_dir / "servables", record, "sleeper")

    async def scenario() -> None:
        shared = ExecutorPool(processes=1, max_message_bytes=1 << 20)
        pools = EnvironmentPools(settings_for(data_dir, config), shared=shared, file_limits=FileLimits())
        try:
            assert await run(pools, directory, "run", None, 60) == "hello world"
            (name,) = names(engine, **{LABEL_WORKER: pools.instance})
            attrs = engine.containers.get(name).attrs
            host = attrs["HostConfig"]
            assert host["Memory"] == MEMORY_BYTES and host["MemorySwap"] == MEMORY_BYTES
            assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
            assert host["AutoRemove"] is True and host["NetworkMode"] == "none"
            assert attrs["Config"]["Labels"][LABEL_HOME] == home_label(data_dir)
            mounts = {m["Source"]: m for m in attrs["Mounts"] if m["Type"] == "bind"}
            assert str(directory.resolve()) in mounts
            assert len(mounts) == 3 and all(m["RW"] is False for m in mounts.values())
            assert not any(Path(source) in directory.resolve().parents for source in mounts), (
                "a parent of the version directory (the servable store) is mounted"
            )
            # The protocol runs over a unix socket: its directory is mounted, holding nothing but the socket
            # (whose listener was closed and unlinked once the executor connected), inside a private 0700
            # directory of the worker's, so no other user of the host can connect.
            (socket_dir,) = [Path(m["Source"]) for m in mounts.values() if m["Destination"] == SOCKET_MOUNT]
            assert list(socket_dir.iterdir()) == []
            assert stat.S_IMODE(socket_dir.parent.stat().st_mode) == 0o700
            assert socket_dir.parent.stat().st_uid == os.getuid()
            assert attrs["Config"]["OpenStdin"] is False  # no `docker run -i` relay in the request path

            started = time.monotonic()
            with pytest.raises(TaskTimeout, match="passed its deadline"):
                await run(pools, directory, "sleep", 120, 3.0)
            await wait_gone(engine, name, 15)
            print(f"container gone {time.monotonic() - started:.1f} s after the task started")
            await await_until(
                lambda: not socket_dir.parent.exists(), timeout_s=15, message="the socket directory removed"
            )
            # The replacement executor serves the next task.
            assert await run(pools, directory, "run", None, 60) == "hello world"
            (replacement,) = names(engine, **{LABEL_WORKER: pools.instance})
            assert replacement != name
        finally:
            await pools.close()
        assert not names(engine, **{LABEL_WORKER: pools.instance}), "containers outlived the worker's close"

    asyncio.run(scenario())


WORKER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings, EnvironmentsConfig
from dlhub.worker.environments import EnvironmentPools
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutorPool

async def main():
    config = EnvironmentsConfig.model_validate_json(sys.argv[2])
    pools = EnvironmentPools(
        DLHubSettings(data_dir=Path(sys.argv[1]), environments=config),
        shared=ExecutorPool(processes=1, max_message_bytes=1 << 20), file_limits=FileLimits(),
    )
    directory = Path(sys.argv[3])
    backend = await pools.backend_for(directory)
    codec = Codec()
    await backend.execute(
        task_id="t", servable="alice/x@1", version_dir=str(directory), method="sleep",
        inputs=codec.encode_value(600), parameters=codec.encode_value({}), timeout_s=900,
    )

asyncio.run(main())
"""


def test_containers_of_a_killed_worker_are_removed_by_the_next_one(
    built: tuple[EnvironmentsConfig, EnvironmentRecord], engine: Any, base: Path
) -> None:
    config, record = built
    data_dir = base / "stale"
    directory = docker_version(data_dir / "servables", record, "stale")
    home = home_label(data_dir)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, str(data_dir), config.model_dump_json(), str(directory)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        deadline = time.monotonic() + 120
        for line in worker.stderr:  # the executor's stderr: the task is running in the container
            if "dlhub-test: sleeping" in line or time.monotonic() > deadline:
                break
        stale = names(engine, **{LABEL_HOME: home})
        assert len(stale) == 1
        mounts = engine.containers.get(next(iter(stale))).attrs["Mounts"]
        (socket_dir,) = [Path(m["Source"]) for m in mounts if m["Destination"] == SOCKET_MOUNT]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert names(engine, **{LABEL_HOME: home}) == stale, "the orphaned container should still run"

    async def scenario() -> None:
        settings = settings_for(data_dir, config)
        shared = ExecutorPool(processes=1, max_message_bytes=1 << 20)
        pools = EnvironmentPools(settings, shared=shared, file_limits=FileLimits())
        other = EnvironmentPools(settings, shared=shared, file_limits=FileLimits())
        try:
            cleanup = pools.start()
            assert cleanup is not None
            await cleanup
            assert not names(engine, **{LABEL_HOME: home}), "the stale container was not removed"
            assert not socket_dir.parent.exists(), "the stale container's socket directory was not removed"
            # A live worker's containers are not stale: a worker starting next to it leaves them alone.
            assert await run(pools, directory, "run", None, 60) == "hello world"
            live = names(engine, **{LABEL_HOME: home})
            assert len(live) == 1
            assert await asyncio.to_thread(other.remove_stale_containers) == []
            assert names(engine, **{LABEL_HOME: home}) == live
        finally:
            await pools.close()
            await other.close()

    asyncio.run(scenario())


def test_the_build_leaves_no_trace_of_the_index_settings(
    built: tuple[EnvironmentsConfig, EnvironmentRecord], engine: Any
) -> None:
    _, record = built
    image = engine.images.get(record.image)
    assert image.labels[LABEL_ENV] == record.id
    assert MARKER not in json.dumps(image.attrs)
    history = engine.api.history(record.image)
    assert MARKER not in json.dumps(history)
    assert not any("PIP_INDEX_URL" in (h.get("CreatedBy") or "") for h in history)
    # The layer the build added (the newest): no marker, no CA bundle, no pip.conf, no lock file.
    archive = b"".join(image.save())
    with tarfile.open(fileobj=io.BytesIO(archive)) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        top = outer.extractfile(manifest[0]["Layers"][-1])
        assert top is not None
        data = top.read()
    assert MARKER.encode() not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        files = layer.getnames()
    assert any(n.startswith("opt/env/") for n in files)
    # (The build files went in through the engine API into an anonymous volume: its empty mount point,
    # run/dlhub-build, is all that is left of them.)
    leftovers = ("pip.conf", "ca.pem", "requirements.lock", "install.sh")
    assert not any("dlhub-build/" in n or n.endswith(leftovers) for n in files), files
    assert [h["CreatedBy"] for h in history[:1]] == ["sh /run/dlhub-build/install.sh"]


def tags(engine: Any, repository: str) -> set[str]:
    found = engine.images.list(name=repository)
    return {t for image in found for t in image.tags if t.rpartition(":")[0] == repository}


def test_gc_removes_only_unreferenced_images_of_the_deployment(
    built: tuple[EnvironmentsConfig, EnvironmentRecord], engine: Any, base: Path
) -> None:
    config, record = built
    # A repository of its own (a registry prefix nothing else uses): the engine is shared with other tests.
    registry = f"127.0.0.1:9/gc-{uuid.uuid4().hex[:8]}"
    ours = config.model_copy(update={"docker_registry": registry})
    data_dir = base / "gc"
    used = uuid.uuid4().hex
    unused = uuid.uuid4().hex
    version = data_dir / "servables" / "alice" / "kept" / "1"
    version.mkdir(parents=True)
    (version / ENVIRONMENT_FILENAME).write_bytes(
        record_json(EnvironmentRecord(kind="isolated", backend="docker", id=used, python="3.11"))
    )
    image = engine.images.get(record.image)
    for env_id in (used, unused):
        image.tag(f"{registry}/dlhub-env", env_id)
    try:
        settings = DLHubSettings(data_dir=data_dir, environments=ours)
        dry = collect(settings, older_than_days=0, dry_run=True, say=lambda _: None)
        assert dry.images == [f"{registry}/dlhub-env:{unused}"]
        assert tags(engine, f"{registry}/dlhub-env") == {
            f"{registry}/dlhub-env:{used}",
            f"{registry}/dlhub-env:{unused}",
        }
        lines: list[str] = []
        done = collect(settings, older_than_days=0, dry_run=False, say=lines.append)
        assert done.images == [f"{registry}/dlhub-env:{unused}"]
        assert len(lines) == 1 and lines[0].startswith(f"removed image {registry}/dlhub-env:{unused}")
        left = tags(engine, f"{registry}/dlhub-env")
        assert left == {f"{registry}/dlhub-env:{used}"}
        assert engine.images.get(record.image).id == image.id, "the image itself stays under its own tag"
        assert not collect(settings, older_than_days=30, dry_run=False, say=lambda _: None).images
    finally:
        for env_id in (used, unused):
            with contextlib.suppress(Exception):
                engine.images.remove(f"{registry}/dlhub-env:{env_id}")
