"""Fixtures of the contract tests that need the Docker engine the test tooling starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import missing_test_server

ENGINE_TIMEOUT_S = 300
"""Long enough for an image build, a save or a push through the engine API."""


@pytest.fixture(scope="session")
def docker_url() -> str:
    """The test engine's URL (``scripts/test-servers``); missing: a failure in CI, a skip locally."""
    url = os.environ.get("DLHUB_TEST_DOCKER_URL", "").strip()
    if not url:
        missing_test_server("DLHUB_TEST_DOCKER_URL is not set")
    import docker

    try:
        docker.DockerClient(base_url=url).ping()
    except Exception as exc:
        missing_test_server(f"no Docker engine answers at {url}: {exc}")
    return url


@pytest.fixture(scope="session")
def engine(docker_url: str) -> Any:
    import docker

    return docker.DockerClient(base_url=docker_url, timeout=ENGINE_TIMEOUT_S)


@pytest.fixture(scope="session")
def docker_tls(docker_url: str) -> tuple[str, Path]:
    """The same engine over ``tcp://`` with mutual TLS (``scripts/test-servers``): its URL and the client
    certificate directory (``ca.pem``, ``cert.pem``, ``key.pem``); missing: a CI failure, a local skip."""
    url = os.environ.get("DLHUB_TEST_DOCKER_TLS_URL", "").strip()
    certs = os.environ.get("DLHUB_TEST_DOCKER_TLS_CERT_DIR", "").strip()
    if not url or not certs:
        missing_test_server("DLHUB_TEST_DOCKER_TLS_URL / DLHUB_TEST_DOCKER_TLS_CERT_DIR are not set")
    from dlhub.common.docker_environments import engine_client

    try:
        engine_client(url, Path(certs))
    except Exception as exc:
        missing_test_server(f"no Docker engine answers with TLS at {url}: {exc}")
    return url, Path(certs)
