"""The compose/ stack built and run for real: Docker Compose v2 on the test engine of scripts/test-servers.

Images of compose/Dockerfile are built on the locally made base image (``DLHUB_TEST_COMPOSE_PYTHON_IMAGE``);
the whole stack runs with host networking on 127.0.0.1 (compose/host-network.yml) against the MongoDB-wire
and Elasticsearch test servers (compose/external-datastores.yml). Through the registry's port: publish
(built by the builder container), search, run sync and async, verify, cite; then three workers share a load,
each service is restarted during a bounded load without losing an accepted task or a published version, and
``down`` + ``up`` on the same volumes keeps servables, tokens and search entries. A missing engine or
Compose fails in CI and skips locally (tests/support/servers.missing_test_server).

The tests of this module run in order on one stack (module fixture); the persistence test is last.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.docker_environments import LABEL_ENV
from dlhub.common.errors import DLHubError
from tests.support.compose import (
    DLHUB_SERVICES,
    IMAGE_PREFIX,
    IMAGE_TAG,
    ROOT,
    ComposeProject,
    ensure_bus_keys,
    extra_ca_pem,
    write_ca_overlay,
    write_env_file,
)
from tests.support.net import free_port
from tests.support.polling import wait_until
from tests.support.servers import missing_test_server

# Builds (the first run: about a minute and a half) and restarts are slow; each test stays bounded.
pytestmark = pytest.mark.timeout(900)

MIN_COMPOSE = (2, 24, 4)  # the !override / !reset tags of the overlays
HEALTHY_TIMEOUT_S = 180.0
TERMINAL = {"completed", "failed"}

FUNCTIONS = '''
import time


def double(values):
    return [2 * v for v in values]


def whoami(seconds):
    """Which container ran this: its id, from the container's own /etc/hostname mount."""
    time.sleep(seconds)
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            if "/containers/" in line and "/hostname " in line:
                return line.split("/containers/")[1].split("/")[0]
    return "unknown"


def six_version(x):
    import six  # 1.16.0 only in the servable's own environment (the worker image has another or none)

    return six.__version__
'''


# -- fixtures ------------------------------------------------------------------------------------------------


def _compose_binary() -> str:
    candidates = [
        os.environ.get("DLHUB_TEST_DOCKER_COMPOSE", "").strip(),
        shutil.which("docker-compose") or "",
    ]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run(
                [candidate, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except OSError:
            continue
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
        if out.returncode == 0 and match and tuple(int(p) for p in match.groups()) >= MIN_COMPOSE:
            return candidate
    missing_test_server(f"no Docker Compose >= {'.'.join(map(str, MIN_COMPOSE))} (DLHUB_TEST_DOCKER_COMPOSE)")


@pytest.fixture(scope="module")
def compose(
    docker_url: str,
    docker_tls: tuple[str, Path],
    engine: Any,
    mongodb_url: str,
    elasticsearch_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ComposeProject]:
    """Images built, the stack up and healthy with one worker; a project, database and index of its own."""
    python_image = os.environ.get("DLHUB_TEST_COMPOSE_PYTHON_IMAGE", "dlhub-python:trixie")
    try:
        engine.images.get(python_image)
    except Exception as exc:
        missing_test_server(f"the engine lacks the base image {python_image}: {exc}")
    run_id = uuid.uuid4().hex[:8]
    base = tmp_path_factory.mktemp("compose")
    registry_port = free_port()
    values = {
        "PYTHON_IMAGE": python_image,
        "BUILD_CA_PEM": extra_ca_pem(),
        "IMAGE_PREFIX": IMAGE_PREFIX,
        "IMAGE_TAG": IMAGE_TAG,
        "BROKER_PORT": str(free_port()),
        "REGISTRY_PORT": str(registry_port),
        "REGISTRY_PUBLIC_URL": f"http://127.0.0.1:{registry_port}/api/v1",
        "REGISTRY_ADMIN_USERS": '["alice"]',
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": f"dlhub_compose_{run_id}",
        "ELASTICSEARCH_URL": elasticsearch_url,
        "ELASTICSEARCH_INDEX_ALIAS": f"dlhub-compose-{run_id}",
        "WORKER_REPLICAS": "1",
        "WORKER_PROCESSES": "1",
        "LOG_LEVEL": "info",
        # compose/docker-environments.yml: the builder and workers reach the engine over mutual TLS only
        "DOCKER_ENGINE_URL": docker_tls[0],
        "DOCKER_TLS_CERT_DIR": str(docker_tls[1]),
        "DOCKER_BASE_IMAGE": os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm"),
    }
    env_file = base / "compose.env"
    write_env_file(env_file, values)
    ca_overlay = base / "ca-at-runtime.yml"
    write_ca_overlay(ca_overlay)
    project = ComposeProject(
        _compose_binary(),
        docker_url,
        f"dlhub-test-{run_id}",
        env_file,
        base,
        url=f"http://127.0.0.1:{registry_port}",
        extra_files=[ROOT / "compose" / "docker-environments.yml", ca_overlay],
    )
    ensure_bus_keys()
    try:
        project.timed("build", "build")
        project.timed("up_to_healthy", "up", "-d", "--wait", "--wait-timeout", str(int(HEALTHY_TIMEOUT_S)))
        project.wait_healthy({service: 1 for service in DLHUB_SERVICES})
        yield project
    finally:
        print(f"\ncompose timings (s): {json.dumps({k: round(v, 1) for k, v in project.timings.items()})}")
        (base / "stack.log").write_text(project.run("logs", "--no-color", "--timestamps", check=False))
        project.run("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        _drop_datastores(
            mongodb_url, values["MONGODB_DATABASE"], elasticsearch_url, values["ELASTICSEARCH_INDEX_ALIAS"]
        )


def _drop_datastores(mongodb_url: str, database: str, es_url: str, alias: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongodb_url, serverSelectionTimeoutMS=5000
    )
    try:
        client.drop_database(database)
    finally:
        client.close()
    request = urllib.request.Request(f"{es_url}/{alias}*?expand_wildcards=all", method="DELETE")
    with contextlib.suppress(OSError):  # nothing was indexed
        urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="module")
def alice(compose: ComposeProject) -> DLHubClient:
    token = compose.run("exec", "-T", "registry", "dlhub", "token", "create", "alice", "--data-dir", "/data")
    compose.token = token.strip().splitlines()[-1]
    return DLHubClient(compose.url, compose.token)


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("composepkg")
    (path / "composefns.py").write_text(FUNCTIONS)
    return path


def publish(client: DLHubClient, pkg_dir: Path, function: str, **dlhub: Any) -> str:
    name = f"{function}_{uuid.uuid4().hex[:8]}"
    doc = python_function_document(
        name=name,
        module="composefns",
        function=function,
        files=["composefns.py"],
        title=f"compose {function} servable",
        authors=["Doe, Jane"],
        domains=["testing"],
    )
    doc["dlhub"].update(dlhub)
    reply = client.publish(doc, base_dir=pkg_dir, wait=True, timeout_s=180)
    assert reply["status"] == "ready", reply
    return f"alice/{name}"


@pytest.fixture(scope="module")
def sleeper(alice: DLHubClient, pkg_dir: Path) -> str:
    """Sleeps as long as asked and returns the id of the worker container that ran it."""
    return publish(alice, pkg_dir, "whoami")


@pytest.fixture(scope="module")
def doubler(alice: DLHubClient, pkg_dir: Path) -> str:
    vectors = [{"inputs": [1, 2, 3], "expected": [2, 4, 6]}, {"inputs": [], "expected": []}]
    return publish(alice, pkg_dir, "double", test_vectors=vectors)


# -- images --------------------------------------------------------------------------------------------------


def test_images_are_non_root_with_readiness_health_checks(compose: ComposeProject, engine: Any) -> None:
    sizes = {}
    for service in DLHUB_SERVICES:
        image = engine.images.get(f"{IMAGE_PREFIX}/{service}:{IMAGE_TAG}")
        config = image.attrs["Config"]
        assert config["User"] == "dlhub", service
        assert config["Healthcheck"]["Test"][-1] == service, config["Healthcheck"]
        history = json.dumps(image.history())
        assert "BEGIN CERTIFICATE" not in history and "BUILD_CA_PEM" not in history, service
        sizes[service] = image.attrs["Size"]
    # The ML stack (scikit-learn, SciPy) is the worker's alone.
    assert all(sizes[s] < sizes["worker"] - 100 * 2**20 for s in DLHUB_SERVICES if s != "worker"), sizes
    print(f"\nimage sizes (MB): { {s: round(b / 2**20) for s, b in sizes.items()} }")
    for row in compose.ps():
        assert row["Health"] == "healthy", row


# -- end to end through the registry's port ------------------------------------------------------------------


def test_publish_search_run_verify_cite(alice: DLHubClient, doubler: str) -> None:
    owner, name = doubler.split("/")
    record = alice.describe(doubler)
    assert record["status"] == "ready" and record["metadata"]["dlhub"]["owner"] == owner

    def found() -> list[dict[str, Any]]:
        return [h for h in alice.search(name)["hits"] if h["name"] == name]

    wait_until(found, timeout_s=30, message="the search service (Elasticsearch) to index the servable")
    assert [h for h in alice.search("compose", domain="testing")["hits"] if h["name"] == name]

    assert alice.run(doubler, [1, 2, 3]) == [2, 4, 6]
    handle = alice.run_async(doubler, [5])
    assert handle.result(timeout_s=60) == [10]
    assert alice.status(handle.task_id)["state"] == "completed"

    report = alice.verify(doubler)
    assert report["passed"] is True and len(report["vectors"]) == 2

    bibtex = alice.citation(doubler)
    assert isinstance(bibtex, str) and "Doe, Jane" in bibtex and name in bibtex


@pytest.fixture(scope="module")
def with_own_environment(alice: DLHubClient, pkg_dir: Path) -> str:
    """Declares a dependency that the images lack: it gets its own environment (an image)."""
    return publish(alice, pkg_dir, "six_version", dependencies={"python": {"six": "1.16.0"}})


def test_per_servable_environment_built_by_the_builder_container(
    compose: ComposeProject, engine: Any, alice: DLHubClient, with_own_environment: str
) -> None:
    """The deployment's docker backend (compose/docker-environments.yml): the builder container builds the
    image through the engine's TLS port (no Docker socket in any container), the worker container runs it
    with the version's files copied in."""
    servable = with_own_environment
    build = alice.build_log(servable)
    assert build["state"] == "ready" and build["backend"] == "docker" and build["environment"], build
    assert alice.describe(servable)["environment"] == build["environment"]
    assert alice.run(servable, 0) == "1.16.0"
    assert alice.run_async(servable, 0).result(timeout_s=60) == "1.16.0"
    probe = compose.call(
        "exec", "-T", "worker", "python", "-c", "import six; assert six.__version__ != '1.16.0'"
    )
    assert probe.returncode == 0 or "ModuleNotFoundError" in probe.stderr, probe.stderr  # not the worker's
    runs = engine.containers.list(filters={"label": f"{LABEL_ENV}={build['environment']}"})
    assert runs and all({m["Type"] for m in c.attrs["Mounts"]} == {"volume"} for c in runs)
    for service in ("builder", "worker"):
        for container in engine.containers.list(filters={"label": f"com.docker.compose.service={service}"}):
            mounts = container.attrs["Mounts"]
            assert not any("docker.sock" in str(m.get("Source")) for m in mounts), mounts
            assert container.attrs["Config"]["User"] == "dlhub"


def test_logs_are_json_with_task_ids(compose: ComposeProject, alice: DLHubClient, doubler: str) -> None:
    handle = alice.run_async(doubler, [7])
    assert handle.result(timeout_s=60) == [14]
    lines = [line for line in compose.logs(*DLHUB_SERVICES) if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all("event" in r and "level" in r and "service" in r for r in records)
    assert {r["service"] for r in records} >= set(DLHUB_SERVICES)
    publish_task = [r for r in records if r.get("event") == "version published"]
    assert publish_task and all(r.get("task_id") for r in publish_task)


# -- scale ---------------------------------------------------------------------------------------------------


def worker_container_ids(compose: ComposeProject) -> set[str]:
    return {row["ID"] for row in compose.ps() if row["Service"] == "worker" and row["State"] == "running"}


def test_scale_to_three_workers_spreads_the_load(
    compose: ComposeProject, alice: DLHubClient, sleeper: str
) -> None:
    compose.timed("scale_to_3", "up", "-d", "--scale", "worker=3", "--wait", "--wait-timeout", "120")
    compose.wait_healthy({"worker": 3})

    def three_workers() -> list[dict[str, Any]] | None:
        workers = [h for h in alice.health()["broker"]["handlers"] if h["kind"] == "worker"]
        return workers if len(workers) == 3 else None

    workers = wait_until(three_workers, timeout_s=30, message="three workers registered at the broker")
    assert len({w["handler_id"] for w in workers}) == 3
    with ThreadPoolExecutor(max_workers=12) as pool:
        handles = list(pool.map(lambda _: alice.run_async(sleeper, 0.5), range(36)))
        ran_on = [h.result(timeout_s=120) for h in handles]
    # Every task ran in one of the three worker containers, and each of them ran some.
    short = {c[:12] for c in worker_container_ids(compose)}
    assert len(short) == 3 and {c[:12] for c in ran_on} == short, (ran_on, short)


# -- restarts during a bounded load --------------------------------------------------------------------------


class Load:
    """Asynchronous runs of ``servable`` (the sleeper: 0.3 s each, so that tasks are in flight at any moment)
    submitted at a bounded rate, at most ``max_tasks``; remembers every accepted task id."""

    def __init__(
        self,
        client: DLHubClient,
        token: str,
        servable: str,
        *,
        rate_per_s: float = 10.0,
        max_tasks: int = 400,
    ) -> None:
        self.client = client
        self.token = token
        self.servable = servable
        self.interval_s = 1.0 / rate_per_s
        self.max_tasks = max_tasks
        self.accepted: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        client = DLHubClient(self.client.url, self.token, timeout_s=10)
        while not self._stop.is_set() and len(self.accepted) < self.max_tasks:
            try:
                self.accepted.append(client.run_async(self.servable, 0.3).task_id)
            except (DLHubError, httpx.HTTPError):
                self.refused += 1  # refused or unreachable: never accepted, so not a lost task
            self._stop.wait(self.interval_s)

    def wait_for_accepted(self, count: int, timeout_s: float = 60.0) -> None:
        wait_until(
            lambda: len(self.accepted) >= count, timeout_s=timeout_s, message=f"{count} accepted tasks"
        )


def _state(client: DLHubClient, task_id: str) -> str | None:
    try:
        return str(client.status(task_id)["state"])
    except (DLHubError, httpx.HTTPError):
        return None


@pytest.mark.parametrize(
    "service",
    [
        "worker",
        "builder",
        "search",
        "broker",
        "registry",
    ],
)
def test_restart_loses_no_accepted_task_and_no_version(
    compose: ComposeProject, alice: DLHubClient, doubler: str, sleeper: str, service: str
) -> None:
    before = alice.versions(doubler)
    with Load(alice, compose.token, sleeper) as load:
        load.wait_for_accepted(10)
        compose.run("restart", "--timeout", "30", service)
        compose.wait_healthy(
            {s: len(worker_container_ids(compose)) if s == "worker" else 1 for s in DLHUB_SERVICES}
        )
        seen = len(load.accepted)
        load.wait_for_accepted(seen + 10, timeout_s=90)  # serving again after the restart
    assert load.accepted

    def states() -> dict[str, str] | None:
        found = {task_id: _state(alice, task_id) for task_id in load.accepted}
        return (
            {k: v for k, v in found.items() if v is not None}
            if all(v in TERMINAL for v in found.values())
            else None
        )

    final = wait_until(
        states, timeout_s=120, interval_s=1.0, message=f"every accepted task terminal ({service})"
    )
    failed = {k: v for k, v in final.items() if v != "completed"}
    assert not failed, (
        f"{len(failed)} of {len(final)} accepted tasks did not complete after restarting {service}"
    )
    assert alice.versions(doubler) == before
    assert alice.run(doubler, [2]) == [4]


def test_health_checks_report_readiness_not_a_live_port(compose: ComposeProject) -> None:
    """With the broker stopped, every other service's process still runs (and the registry still serves
    HTTP), but none of them is ready: their health checks say so."""
    workers = len(worker_container_ids(compose))
    compose.run("stop", "--timeout", "30", "broker")
    try:
        for service in ("registry", "builder", "search", "worker"):
            proc = compose.call("exec", "-T", service, "python", "/opt/dlhub/healthcheck.py", service)
            assert proc.returncode == 1 and proc.stdout.startswith("not ready:"), (service, proc.stdout)
    finally:
        compose.run("start", "broker")
    compose.wait_healthy({s: workers if s == "worker" else 1 for s in DLHUB_SERVICES})
    for service in ("broker", "registry", "builder", "search", "worker"):
        proc = compose.call("exec", "-T", service, "python", "/opt/dlhub/healthcheck.py", service)
        assert proc.returncode == 0 and proc.stdout.strip() == "ready", (service, proc.stdout)


# -- backups -------------------------------------------------------------------------------------------------


def test_backup_commands_of_the_readme_archive_the_volumes(compose: ComposeProject, doubler: str) -> None:
    """compose/README.md, "Backups": the servables volume and the registry's data directory as archives,
    through the same commands (the store is the external test server here: its dump is its own tooling's)."""
    owner, name = doubler.split("/")
    tar_of = ("run", "--rm", "--no-deps", "-T", "--entrypoint", "tar")
    servables = compose.output_bytes(*tar_of, "builder", "-C", "/data", "-cz", "servables")
    with tarfile.open(fileobj=io.BytesIO(servables), mode="r:gz") as archive:
        files = archive.getnames()
    assert any(f"servables/{owner}/{name}/" in n and n.endswith("composefns.py") for n in files), files[:20]
    registry = compose.output_bytes(*tar_of, "registry", "-C", "/data", "-cz", ".")
    with tarfile.open(fileobj=io.BytesIO(registry), mode="r:gz") as archive:
        packages = [n for n in archive.getnames() if n.startswith("./packages/") and n.endswith(".bin")]
    assert packages  # every uploaded package, as the registry keeps it


# -- persistence (last: it recreates every container) --------------------------------------------------------


def test_down_then_up_keeps_servables_tokens_and_search(
    compose: ComposeProject, alice: DLHubClient, doubler: str, with_own_environment: str, pkg_dir: Path
) -> None:
    name = doubler.split("/")[1]
    published = {s["name"] for s in alice.list("alice")}
    compose.run("down", "--timeout", "30")
    assert not [row for row in compose.ps() if row["State"] == "running"]
    compose.timed("up_after_down", "up", "-d", "--wait", "--wait-timeout", str(int(HEALTHY_TIMEOUT_S)))
    compose.wait_healthy({service: 1 for service in DLHUB_SERVICES})
    again = DLHubClient(compose.url, compose.token)  # the same token, from the store
    assert {s["name"] for s in again.list("alice")} == published
    assert again.describe(doubler)["status"] == "ready"
    assert [h for h in again.search(name)["hits"] if h["name"] == name]
    assert again.run(doubler, [3]) == [6]  # the servable files are still in the servables volume
    assert again.run(with_own_environment, 0) == "1.16.0"  # and its venv in the envs volume
    assert publish(again, pkg_dir, "double")  # the token still authorizes a publish
