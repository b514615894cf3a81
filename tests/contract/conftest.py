"""Fixtures of the contract tests that need the Docker engine the test tooling starts."""

from __future__ import annotations

import os
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
