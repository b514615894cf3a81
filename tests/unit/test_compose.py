"""The production stack in compose/: its structure, its settings, and its validation by Compose itself.

The structural tests always run: they parse compose/docker-compose.yml with PyYAML (anchors and merge keys
resolved), interpolate ``${VAR:-default}`` with the defaults, and check the result against the Dockerfile and
against ``DLHubSettings`` (a misspelt ``DLHUB_*`` key would otherwise be silently ignored by the settings).
The last tests hand the files to a real Compose loader: ``docker compose``, a v2 ``docker-compose``, or
compose/tools/composecheck built with Go (the loader Docker Compose v2 uses); they skip when none exists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel

from dlhub.common.config import DLHubSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
OVERLAY_FILE = COMPOSE_DIR / "external-datastores.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = COMPOSE_DIR / "Dockerfile.dockerignore"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
COMPOSECHECK_DIR = COMPOSE_DIR / "tools" / "composecheck"

DLHUB_SERVICES = ("broker", "registry", "builder", "search", "worker")
DATASTORES = ("mongodb", "elasticsearch")
HEALTHCHECKED = {"mongodb", "elasticsearch", "broker", "registry", "builder", "search", "worker"}
HEALTHCHECK_SCRIPT = "/opt/dlhub/healthcheck.py"
VOLUMES = {"mongodb-data", "elasticsearch-data", "registry-data", "servables", "envs"}
# DLHUB_* variables that are read directly rather than as settings fields.
NON_FIELD_VARIABLES = {"DLHUB_CONFIG", "DLHUB_HOME", "DLHUB_URL", "DLHUB_TOKEN"}

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}$]*))?\}")


# -- loading -------------------------------------------------------------------------------------------------


class Override(dict[str, Any]):
    """A mapping tagged ``!override`` in a Compose file: it replaces, rather than merges into, the base."""


class Reset(dict[str, Any]):
    """A value tagged ``!reset`` in a Compose file: it removes the base value."""


def _construct_override(loader: Any, node: Any) -> Override:
    return Override(loader.construct_mapping(node, deep=True))


def _construct_reset(loader: Any, node: Any) -> Reset:
    return Reset()


_ComposeLoader: Any = type("_ComposeLoader", (yaml.SafeLoader,), {})
_ComposeLoader.add_constructor("!override", _construct_override)
_ComposeLoader.add_constructor("!reset", _construct_reset)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
    assert isinstance(data, dict), path
    return data


def variables(value: Any) -> Iterator[tuple[str, str | None]]:
    """Every ``${NAME}`` / ``${NAME:-default}`` in a loaded document, as (name, default)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from variables(item)
    elif isinstance(value, list):
        for item in value:
            yield from variables(item)
    elif isinstance(value, str):
        for match in _VARIABLE.finditer(value):
            yield match["name"], match["default"]


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${NAME}`` and ``${NAME:-default}`` (default when unset or empty); other forms fail."""
    if isinstance(value, dict):
        items = {key: interpolate(item, env) for key, item in value.items()}
        return type(value)(items) if isinstance(value, Override | Reset) else items
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        given = env.get(match["name"], "")
        if given:
            return given
        assert match["default"] is not None, f"${{{match['name']}}} has no default"
        return match["default"]

    result = _VARIABLE.sub(replace, value)
    assert "$" not in result, f"unsupported interpolation in {value!r}"
    return result


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose model with every variable at its default (no .env)."""
    resolved = interpolate(raw, {})
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a map (so that x-dlhub-env can be merged into it)"
    return {str(key): str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    """(source, target, read_only) for each entry of ``volumes``, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            result.append((source, PurePosixPath(target), "ro" in (mode[0].split(",") if mode else [])))
        else:
            result.append((entry["source"], PurePosixPath(entry["target"]), bool(entry.get("read_only"))))
    return result


def settings_for(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> DLHubSettings:
    """The settings a service sees with exactly ``env`` (nothing inherited from the test's environment)."""
    for key in list(os.environ):
        if key.startswith("DLHUB_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each named stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            current = stages.setdefault(match[2], [f"FROM {match[1]}"])
        elif current is not None:
            current.append(line)
    return stages


def stage_chain(stages: dict[str, list[str]], name: str) -> list[str]:
    """A stage's instructions after those of the stages it is built FROM."""
    parent = stages[name][0].split()[1]
    return (stage_chain(stages, parent) if parent in stages else []) + stages[name]


def exec_form(instruction: str, keyword: str) -> list[str]:
    """The JSON exec form after ``keyword`` (e.g. ``CMD [...]``)."""
    payload = instruction[instruction.index(keyword) + len(keyword) :].strip()
    command = json.loads(payload)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), instruction
    return command


def check_python_command(command: list[str]) -> None:
    """``python -c CODE`` health checks must at least compile."""
    if command[:2] == ["python", "-c"]:
        compile(command[2], "<healthcheck>", "exec")


# -- services and images -------------------------------------------------------------------------------------


def test_every_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*DLHUB_SERVICES, *DATASTORES}


def test_each_dlhub_service_builds_its_own_dockerfile_target(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    assert "base" in stages
    for name in DLHUB_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT, "build context must be the repository root"
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name
        assert name in stages, f"Dockerfile has no stage {name!r}"
        assert services[name]["image"].endswith(f"/{name}:latest")


def test_dockerfile_targets_run_their_service_as_non_root() -> None:
    stages = dockerfile_stages()
    base_image = stages["base"][0].split()[1]
    assert re.search(r"python:3\.11-slim", DOCKERFILE.read_text()), base_image
    for name in DLHUB_SERVICES:
        chain = stage_chain(stages, name)
        cmd = [line for line in chain if line.upper().startswith("CMD")]
        assert cmd, f"stage {name} has no CMD"
        assert exec_form(cmd[-1], "CMD") == ["python", "-m", f"dlhub.{name}"]
        assert (ROOT / "services" / name / "src" / "dlhub" / name / "__main__.py").is_file()
        users = [line.split()[1] for line in chain if line.upper().startswith("USER ")]
        assert users and users[-1] not in {"root", "0"}, f"stage {name} runs as root"
        for line in chain:
            if line.upper().startswith("HEALTHCHECK"):
                check_python_command(exec_form(line, "CMD"))


def test_dockerfile_installs_from_pyproject_and_copies_only_allowed_paths() -> None:
    stages = dockerfile_stages()
    deps = stages["deps"]
    assert any("requirements.py core" in line and line.startswith("RUN") for line in deps)
    assert any(re.search(r"pip install --no-deps --no-build-isolation \./", line) for line in deps)
    # The images copy the finished venv: the build arguments (CA certificates, index URLs) stay in `deps`.
    assert any(line.startswith("COPY --from=deps /opt/dlhub") for line in stages["base"])
    assert not [line for line in stages["base"] if line.startswith("ARG")]
    allowed = {
        line.strip()[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")
    }
    # The classic builder (no buildx) reads the context root's .dockerignore only: keep both the same.
    assert (ROOT / ".dockerignore").read_text() == DOCKERIGNORE.read_text()
    for lines in stages.values():
        for line in lines:
            if line.upper().startswith("COPY") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert any(
                        source.rstrip("/") == path or source.startswith(path + "/") for path in allowed
                    ), f"{source} is excluded by {DOCKERIGNORE.name}"


def test_every_service_has_a_restart_policy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("restart") in {"always", "unless-stopped"}, name


# -- health checks and start-up order ------------------------------------------------------------------------


def test_health_checks_where_intended(services: dict[str, dict[str, Any]]) -> None:
    checked = {name for name, service in services.items() if "healthcheck" in service}
    assert checked == HEALTHCHECKED
    probes = {
        "mongodb": "ping",
        "elasticsearch": "_cluster/health",
        **{name: f"{HEALTHCHECK_SCRIPT} {name}" for name in DLHUB_SERVICES},
    }
    for name, probe in probes.items():
        test = services[name]["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert probe in " ".join(test), name
        check_python_command(test[1:])


def test_health_checks_of_the_images_and_the_compose_file_agree(services: dict[str, dict[str, Any]]) -> None:
    """Both run compose/healthcheck.py, which reads the service's own DLHUB_* settings (so ports follow)."""
    stages = dockerfile_stages()
    for name in DLHUB_SERVICES:
        checks = [line for line in stage_chain(stages, name) if line.upper().startswith("HEALTHCHECK")]
        assert checks, f"stage {name} has no HEALTHCHECK"
        assert exec_form(checks[-1], "CMD") == ["python", HEALTHCHECK_SCRIPT, name]
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", HEALTHCHECK_SCRIPT, name]


def test_start_up_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    registry = services["registry"]["depends_on"]
    assert set(registry) == {"mongodb", "elasticsearch", "broker"}
    assert services["search"]["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    for name in DLHUB_SERVICES:
        if name != "broker":
            assert services[name]["depends_on"]["broker"]["condition"] == "service_healthy", name
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, never healthy"


# -- ports, scaling, volumes ---------------------------------------------------------------------------------


def test_only_the_registry_publishes_a_port(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"registry"}
    registry = settings_for(environment(services["registry"]), monkeypatch)
    assert services["registry"]["ports"] == [f"8642:{registry.registry.port}"]


def test_workers_scale(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["deploy"]["replicas"] == "2"
    assert not any("container_name" in service for service in services.values())


def test_volumes_are_declared_and_used(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose["volumes"])
    assert declared == VOLUMES
    used = {source for service in services.values() for source, _, _ in mounts(service)}
    assert used == declared


def test_builder_and_workers_share_the_servable_store(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    servable_dirs = {}
    for name, writable in (("builder", True), ("worker", False)):
        settings = settings_for(environment(services[name]), monkeypatch)
        target = PurePosixPath(settings.servable_dir)
        mounted = [(source, ro) for source, path, ro in mounts(services[name]) if path == target]
        assert mounted == [("servables", not writable)], f"{name}: servable dir {target} not on the volume"
        servable_dirs[name] = target
    assert servable_dirs["builder"] == servable_dirs["worker"]


def test_registry_shares_nothing_with_the_builder_but_the_bus(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_volumes = {source for source, _, _ in mounts(services["registry"])}
    builder_volumes = {source for source, _, _ in mounts(services["builder"])}
    assert registry_volumes == {"registry-data"}
    assert not registry_volumes & builder_volumes
    settings = settings_for(environment(services["registry"]), monkeypatch)
    assert [path for source, path, _ in mounts(services["registry"])] == [PurePosixPath(settings.data_dir)]
    assert settings.data_dir == Path("/data")  # what `dlhub token create <user> --data-dir /data` opens


# -- configuration -------------------------------------------------------------------------------------------


def field_error(key: str) -> str | None:
    """Why ``DLHUB_A__B`` names no settings field, or None when it does."""
    model: type[BaseModel] = DLHubSettings
    parts = key.removeprefix("DLHUB_").lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return f"{key}: {model.__name__} has no field {part!r}"
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(parts) - 1:
            if not is_section:
                return f"{key}: {model.__name__}.{part} is not a section"
            assert isinstance(annotation, type)
            model = annotation
        elif is_section:
            return f"{key}: names the whole section {part!r}, not a field"
    return None


def test_field_error_catches_typos() -> None:
    assert field_error("DLHUB_BUS__BROKER_URL") is None
    assert field_error("DLHUB_DATA_DIR") is None
    assert field_error("DLHUB_BUS__BROKER_URI") is not None
    assert field_error("DLHUB_BUSS__BROKER_URL") is not None
    assert field_error("DLHUB_BUS") is not None
    assert field_error("DLHUB_DATA_DIR__X") is not None


def test_common_env_anchor_reaches_every_dlhub_service(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    common = interpolate(raw["x-dlhub-env"], {})
    assert common["DLHUB_BUS__BROKER_URL"] == "tcp://broker:5560"
    assert common["DLHUB_LOGGING__FORMAT"] == "json"
    for name in DLHUB_SERVICES:
        env = environment(services[name])
        assert {key: env[key] for key in common} == {key: str(value) for key, value in common.items()}, name


def test_env_keys_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    errors = [
        f"{name}: {error}"
        for name in DLHUB_SERVICES
        for key in environment(services[name])
        if key.startswith("DLHUB_") and key not in NON_FIELD_VARIABLES
        if (error := field_error(key)) is not None
    ]
    assert not errors, errors


def test_env_parses_into_the_intended_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = settings_for(environment(services["broker"]), monkeypatch)
    bind = urlsplit(broker.broker.bind_url)
    assert bind.scheme == "tcp" and bind.hostname == "0.0.0.0"
    registry = settings_for(environment(services["registry"]), monkeypatch)
    assert registry.registry.host == "0.0.0.0"
    for name in DLHUB_SERVICES:
        settings = settings_for(environment(services[name]), monkeypatch)
        target = urlsplit(settings.bus.broker_url)
        assert (target.hostname, target.port) == ("broker", bind.port), name
        assert settings.logging.format == "json"
        assert settings.store.backend == "mongodb"
        assert urlsplit(settings.store.mongodb_url).hostname == "mongodb"
        assert settings.search.backend == "elasticsearch"
        assert urlsplit(settings.search.elasticsearch_url).hostname == "elasticsearch"


def test_env_example_documents_every_variable_with_its_default(raw: dict[str, Any]) -> None:
    documented = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            documented[key.strip()] = value.strip()
    defaults: dict[str, set[str | None]] = {}
    for name, default in variables(raw):
        defaults.setdefault(name, set()).add(default)
    assert set(documented) == set(defaults)
    for name, values in defaults.items():
        assert values == {documented[name]}, f"{name}: defaults {values} vs .env.example {documented[name]!r}"
    python_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert python_image is not None and python_image[1] == documented["PYTHON_IMAGE"]


def test_elasticsearch_is_single_node_without_security(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["elasticsearch"])
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] == "false"
    assert env["ES_JAVA_OPTS"] == "-Xms512m -Xmx512m"
    assert re.fullmatch(
        r"docker\.elastic\.co/elasticsearch/elasticsearch:8\.19\.\d+", services["elasticsearch"]["image"]
    )
    assert services["mongodb"]["image"] == "mongo:7"


def test_external_datastores_overlay(services: dict[str, dict[str, Any]]) -> None:
    overlay = interpolate(load_yaml(OVERLAY_FILE), {})
    merged = {name: dict(service) for name, service in services.items()}
    for name, changes in overlay["services"].items():
        assert name in services, f"overlay names unknown service {name}"
        for key, value in changes.items():
            assert key in {"profiles", "depends_on"}, f"{name}.{key}"
            if key == "depends_on":
                assert isinstance(value, Override), f"{name}.depends_on must be !override"
            merged[name][key] = value
    active = {name for name, service in merged.items() if not service.get("profiles")}
    assert active == set(DLHUB_SERVICES)
    for name in active:
        assert set(merged[name].get("depends_on", {})) <= active, name
