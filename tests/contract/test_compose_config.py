"""`docker compose config` accepts the compose files: needs the docker CLI (split from
tests/unit/test_compose.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.unit.test_compose import (
    COMPOSE_FILE,
    COMPOSECHECK_DIR,
    DATASTORES,
    DLHUB_SERVICES,
    ENV_EXAMPLE,
    OVERLAY_FILE,
    ROOT,
    VOLUMES,
)


def _version(command: list[str]) -> tuple[int, ...] | None:
    try:
        result = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", result.stdout)
    return tuple(int(part) for part in match.groups()) if result.returncode == 0 and match else None


def run_compose_config(command: tuple[list[str], list[str]], *files: Path) -> dict[str, Any]:
    before, after = command
    args = [*before, *(part for path in files for part in ("-f", str(path))), *after]
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "DOCKER_CONFIG", "DOCKER_HOST"}
    }
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    model = yaml.safe_load(result.stdout)
    assert isinstance(model, dict)
    return model


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """(arguments before, arguments after) ``-f FILE...`` of a command printing the resolved model."""
    reasons = []
    docker = shutil.which("docker")
    for candidate in ([docker, "compose"] if docker else None, [shutil.which("docker-compose") or ""]):
        if candidate and candidate[0]:
            version = _version(candidate)
            if version is not None and version >= (2, 24, 4):
                return [*candidate, "--env-file", str(ENV_EXAMPLE)], ["config"]
            found = "not available" if version is None else "version " + ".".join(map(str, version))
            reasons.append(f"{' '.join(candidate)}: {found} (need >= 2.24.4)")
    go = shutil.which("go")
    if go is None:
        reasons.append("no Go toolchain to build compose/tools/composecheck")
        pytest.skip("no Compose validator: " + "; ".join(reasons))
    binary = tmp_path_factory.mktemp("composecheck") / "composecheck"
    env = {**os.environ, "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
    try:
        build = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=COMPOSECHECK_DIR,
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("building compose/tools/composecheck took over 240 s (Go module download?)")
    if build.returncode != 0:
        pytest.skip(
            f"could not build compose/tools/composecheck (no Go module proxy?): {build.stderr[-500:]}"
        )
    return [str(binary), "-e", str(ENV_EXAMPLE)], []


@pytest.mark.timeout(300)
def test_compose_accepts_the_stack(compose_config: tuple[list[str], list[str]]) -> None:
    model = run_compose_config(compose_config, COMPOSE_FILE)
    assert set(model["services"]) == {*DLHUB_SERVICES, *DATASTORES}
    assert model["services"]["worker"]["deploy"]["replicas"] == 2
    assert model["services"]["registry"]["depends_on"]["mongodb"]["condition"] == "service_healthy"
    assert model["services"]["worker"]["build"]["target"] == "worker"
    assert Path(model["services"]["worker"]["build"]["context"]).resolve() == ROOT
    assert set(model["volumes"]) == VOLUMES


@pytest.mark.timeout(300)
def test_compose_accepts_the_external_datastores_overlay(
    compose_config: tuple[list[str], list[str]],
) -> None:
    model = run_compose_config(compose_config, COMPOSE_FILE, OVERLAY_FILE)
    assert set(model["services"]) == set(DLHUB_SERVICES)
    assert set(model["services"]["registry"]["depends_on"]) == {"broker"}
