"""Image references and the push/pull protocol of the docker backend, against a fake engine client (the real
registry is exercised by tests/contract/test_container_registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from dlhub.common.config import EnvironmentsConfig
from dlhub.common.docker_environments import DockerBackend, registry_of, split_tag
from dlhub.common.environments import BuildLog, Deadline, EnvironmentRecord
from dlhub.common.errors import BuildFailed, RegistryError, error_class

DIGEST = "sha256:" + "a" * 64
SECRET = "s3cr3t-registry-password"


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag"),
    [
        ("127.0.0.1:5000/dlhub-env:abc", "127.0.0.1:5000", "127.0.0.1:5000/dlhub-env", "abc"),
        ("reg.example.org/team/dlhub-env:abc", "reg.example.org", "reg.example.org/team/dlhub-env", "abc"),
        ("localhost/dlhub-env:x", "localhost", "localhost/dlhub-env", "x"),
        ("dlhub-env:abc", "docker.io", "dlhub-env", "abc"),
        ("127.0.0.1:5000/dlhub-env", "127.0.0.1:5000", "127.0.0.1:5000/dlhub-env", "latest"),
    ],
)
def test_references(reference: str, registry: str, repository: str, tag: str) -> None:
    assert registry_of(reference) == registry
    assert split_tag(reference) == (repository, tag)


def test_registry_error_is_a_typed_build_failure() -> None:
    assert error_class("registry_error") is RegistryError
    assert issubclass(RegistryError, BuildFailed) and RegistryError.http_status == 502


class FakeImage:
    def __init__(self, engine: FakeEngine, reference: str) -> None:
        self.engine = engine
        self.reference = reference
        self.attrs: dict[str, Any] = {"Size": 1, "RepoDigests": engine.repo_digests}

    def tag(self, repository: str, tag: str) -> None:
        self.engine.tags.add(f"{repository}:{tag}")


class FakeEngine:
    """``client.api.push/pull`` stream lines; ``client.images.get`` knows the tags and pulled digests."""

    def __init__(self, push_lines: list[Any], pull_lines: list[Any] | None = None) -> None:
        self.push_lines = push_lines
        self.pull_lines = pull_lines or []
        self.tags: set[str] = set()
        self.repo_digests: list[str] = []
        self.calls: list[tuple[str, str, str, Any]] = []
        self.api = self
        self.images = self

    def push(self, repository: str, *, tag: str, auth_config: Any, **_: Any) -> Iterator[Any]:
        self.calls.append(("push", repository, tag, auth_config))
        return iter(self.push_lines)

    def pull(self, repository: str, *, tag: str, auth_config: Any, **_: Any) -> Iterator[Any]:
        self.calls.append(("pull", repository, tag, auth_config))
        yield from self.pull_lines
        self.tags.add(f"{repository}@{tag}")

    def get(self, reference: str) -> FakeImage:
        import docker.errors

        if reference not in self.tags:
            raise docker.errors.ImageNotFound(f"No such image: {reference}")
        return FakeImage(self, reference)


def backend(engine: FakeEngine, **options: Any) -> DockerBackend:
    config = EnvironmentsConfig(docker_registry="127.0.0.1:5000/team", **options)
    docker = DockerBackend(config)
    docker._client = engine
    return docker


def test_push_returns_the_digest_reference_and_sends_credentials() -> None:
    engine = FakeEngine([{"status": "Pushed"}, {"aux": {"Tag": "abc", "Digest": DIGEST, "Size": 1}}])
    docker = backend(engine, docker_registry_username="jane", docker_registry_password=SecretStr(SECRET))
    assert docker.push("127.0.0.1:5000/team/dlhub-env:abc") == f"127.0.0.1:5000/team/dlhub-env@{DIGEST}"
    assert engine.calls == [
        ("push", "127.0.0.1:5000/team/dlhub-env", "abc", {"username": "jane", "password": SECRET})
    ]


def test_push_falls_back_to_the_repo_digests_and_refuses_without_any_digest() -> None:
    tag = "127.0.0.1:5000/team/dlhub-env:abc"
    engine = FakeEngine([{"status": "Pushed"}])
    engine.tags.add(tag)
    ours = f"127.0.0.1:5000/team/dlhub-env@{DIGEST}"
    engine.repo_digests = ["elsewhere/dlhub-env@sha256:" + "b" * 64, ours]
    assert backend(engine).push(tag) == f"127.0.0.1:5000/team/dlhub-env@{DIGEST}"
    engine.repo_digests = []
    with pytest.raises(RegistryError, match="reported no digest"):
        backend(engine).push(tag)


def test_an_error_line_of_the_push_is_a_registry_error_with_its_message() -> None:
    engine = FakeEngine([{"errorDetail": {"message": "unauthorized: authentication required"}}])
    docker = backend(engine, docker_registry_username="jane", docker_registry_password=SecretStr(SECRET))
    with pytest.raises(RegistryError) as failure:
        docker.push("127.0.0.1:5000/team/dlhub-env:abc")
    assert failure.value.message == (
        "pushing 127.0.0.1:5000/team/dlhub-env:abc to the registry 127.0.0.1:5000 failed: "
        "unauthorized: authentication required"
    )
    assert SECRET not in failure.value.message


def test_worker_pulls_by_the_recorded_digest_and_tags_it() -> None:
    engine = FakeEngine([], pull_lines=[{"status": "Downloaded newer image"}])
    record = EnvironmentRecord(
        kind="isolated",
        backend="docker",
        id="abc",
        python="3.11",
        image="127.0.0.1:5000/team/dlhub-env:abc",
        image_digest=f"127.0.0.1:5000/team/dlhub-env@{DIGEST}",
    )
    log = BuildLog("t")
    with structlog.testing.capture_logs() as events:
        assert backend(engine).ensure(record, log, Deadline(10)) == record.image
    assert engine.calls == [("pull", "127.0.0.1:5000/team/dlhub-env", DIGEST, None)]
    assert record.image in engine.tags
    assert [e["event"] for e in events] == ["pulled a missing environment image from the registry"]
    assert log.record.log == [f"pulled {record.image_digest} as {record.image}"]


def test_a_failed_pull_line_falls_back_to_the_lock_with_the_reason() -> None:
    engine = FakeEngine([], pull_lines=[{"error": "manifest unknown"}])
    record = EnvironmentRecord(
        kind="isolated",
        backend="docker",
        id="abc",
        python="3.10",  # not the base image's: the rebuild fails at once, without an engine
        image="127.0.0.1:5000/team/dlhub-env:abc",
        image_digest=f"127.0.0.1:5000/team/dlhub-env@{DIGEST}",
    )
    with structlog.testing.capture_logs() as events, pytest.raises(Exception) as failure:
        backend(engine).ensure(record, BuildLog("t"), Deadline(10))
    assert "rebuilding from the lock because the pull failed" in str(failure.value)
    assert "manifest unknown" in str(failure.value)
    [warning] = events
    assert warning["event"] == "rebuilding a missing environment image from its lock"
    assert warning["log_level"] == "warning" and "manifest unknown" in warning["reason"]
