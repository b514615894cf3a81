"""Per-servable environments: what a version declares, its lock, and the venv backend that builds it.

Shared by the builder (plans, locks and builds an environment before a version is published) and the worker
(rebuilds a missing environment from the lock stored with the version). Docker images are built by
``dlhub.common.docker_environments`` behind the same ``ensure`` shape.

What a publisher declares (all optional):

- ``dlhub.dependencies.python``: name -> version, as the original SDK writes it (``"1.2.3"`` means ``==``; a
  value starting with an operator is a specifier; ``""``/``"*"`` any version);
- ``requirements.txt`` and ``pyproject.toml`` (``[project].dependencies``) at the package root: plain
  PEP 508 requirements only (no ``-r``/``-e``/index options, no URLs or paths: the deployment owns the index);
- ``dlhub.dependencies.python_version`` (``"3.11"``);
- ``dlhub.environment``: ``{"backend": "venv"|"docker", "network": false}``.

``plan`` applies ``EnvironmentsConfig.mode`` (documented there) and returns either a shared record or the
requirements to lock. The lock is ``uv pip compile --generate-hashes`` output (exact versions and hashes,
no header or annotations so that it is deterministic); the environment id is a digest of (backend, Python
version, lock, and the base image for docker), so identical locks share one environment. The record of the
decision is written next to ``metadata.json`` as ``environment.json``.

The DLHub runtime the executor needs inside an environment is only ``msgspec`` (added to the requirements
unless the publisher names it, so it never overrides a pin) plus the ``dlhub.common``/``dlhub.worker``
sources, which the worker puts on ``PYTHONPATH`` from a copy (``runtime_dir``), never the worker's
site-packages.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from dlhub.common.config import EnvironmentsConfig
from dlhub.common.errors import BuildFailed, EnvironmentUnavailable
from dlhub.common.payloads import BuildEvent, BuildRecord, BuildState, StateChange

ENVIRONMENT_FILENAME: Final = "environment.json"
BUILD_RECORD_FILENAME: Final = "build.json"
RUNTIME_PACKAGE: Final = "msgspec"
RUNTIME_REQUIREMENT: Final = "msgspec>=0.18,<1"
MAX_MESSAGE_CHARS: Final = 6000
_NAME_NORMALIZE: Final = re.compile(r"[-_.]+")
_OPERATORS: Final = ("==", "!=", "<=", ">=", "~=", "<", ">", "===")
_REQUIREMENT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]*\])?\s*([<>=!~;].*)?$")


def normalize_name(name: str) -> str:
    return _NAME_NORMALIZE.sub("-", name).lower()


class EnvironmentRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a version runs; ``environment.json`` in its version folder (absent: shared, as before)."""

    kind: Literal["shared", "isolated"]
    reason: str = ""
    backend: str = ""
    id: str = ""
    python: str = ""
    requirements: list[str] = msgspec.field(default_factory=list)
    lock: str = ""
    network: bool = False
    image: str = ""
    """Docker: the image's tag (``<docker_registry>/dlhub-env:<id>`` when pushed, else ``dlhub-env:<id>``)."""
    image_digest: str = ""
    """Docker, pushed: the repository digest reference (``<registry>/dlhub-env@sha256:...``) workers pull."""
    base_image: str = ""


BuildListener = Callable[[BuildEvent], None]
"""Told of every state change and log line as it happens (the builder relays them to the registry)."""


class BuildLog:
    """Appends to a ``BuildRecord`` and saves it (atomically) after every state change."""

    def __init__(
        self, servable: str, path: Path | None = None, listener: BuildListener | None = None
    ) -> None:
        self.record = BuildRecord(servable=servable)
        self.path = path
        self.listener = listener
        self.set_state("queued")

    def set_state(self, state: BuildState, error: str = "") -> None:
        at_unix_s = time.time()
        self.record.state = state
        self.record.states.append(StateChange(state=state, at_unix_s=at_unix_s))
        if error:
            self.record.error = error
        self.save()
        if self.listener is not None:
            self.listener(BuildEvent(state=state, at_unix_s=at_unix_s, error=error))

    def line(self, text: str) -> None:
        lines = text.rstrip("\n").splitlines() or [""]
        self.record.log.extend(lines)
        if self.listener is not None:
            self.listener(BuildEvent(lines=lines))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, msgspec.json.format(msgspec.json.encode(self.record)))


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_environment(version_dir: Path) -> EnvironmentRecord | None:
    """The version's ``environment.json``; ``None`` when absent (a shared-environment version)."""
    try:
        raw = (version_dir / ENVIRONMENT_FILENAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=EnvironmentRecord)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnvironmentUnavailable(f"unreadable {ENVIRONMENT_FILENAME}: {exc}") from exc


# --- what the publisher declared -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Declaration:
    pins: dict[str, str] = field(default_factory=dict)
    """``dlhub.dependencies.python`` as written."""
    requirements: list[str] = field(default_factory=list)
    """Every requirement, pins first, then requirements.txt and pyproject.toml."""
    python: str = ""
    backend: str = ""
    network: bool = False

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.python


def pin_requirement(name: str, version: Any) -> str:
    if not isinstance(name, str) or not _REQUIREMENT_RE.match(name):
        raise BuildFailed(f"dlhub.dependencies.python: {name!r} is not a package name")
    text = "" if version is None else str(version).strip()
    if text in ("", "*"):
        return name
    requirement = f"{name}{text}" if text.startswith(_OPERATORS) else f"{name}=={text}"
    _check_requirement(requirement, "dlhub.dependencies.python")
    return requirement


def _check_requirement(line: str, source: str) -> str:
    """Accept plain PEP 508 requirements; refuse options, URLs and paths (the index is the deployment's)."""
    text = line.strip()
    if text.startswith("-") or "://" in text or " @ " in text or text.startswith((".", "/")):
        raise BuildFailed(
            f"{source}: {text!r} is not supported (plain requirements only, no options or URLs)"
        )
    if not _REQUIREMENT_RE.match(text):
        raise BuildFailed(f"{source}: {text!r} is not a valid requirement")
    return text


def _requirements_txt(path: Path) -> list[str]:
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        text = raw.split(" #", 1)[0].strip()
        if text and not text.startswith("#"):
            lines.append(_check_requirement(text, "requirements.txt"))
    return lines


def _pyproject(path: Path) -> list[str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"pyproject.toml is not valid TOML: {exc}") from exc
    project = data.get("project")
    deps = project.get("dependencies", []) if isinstance(project, dict) else []
    if not isinstance(deps, list):
        raise BuildFailed("pyproject.toml: [project].dependencies must be a list")
    return [_check_requirement(str(dep), "pyproject.toml") for dep in deps]


def declaration(metadata: Mapping[str, Any], files_dir: Path | None) -> Declaration:
    dlhub = metadata.get("dlhub")
    dlhub = dlhub if isinstance(dlhub, Mapping) else {}
    deps = dlhub.get("dependencies")
    deps = deps if isinstance(deps, Mapping) else {}
    pins_raw = deps.get("python") or {}
    if not isinstance(pins_raw, Mapping):
        raise BuildFailed("dlhub.dependencies.python must map package names to versions")
    pins = {str(k): "" if v is None else str(v) for k, v in pins_raw.items()}
    requirements = [pin_requirement(name, version) for name, version in pins.items()]
    if files_dir is not None:
        if (files_dir / "requirements.txt").is_file():
            requirements += _requirements_txt(files_dir / "requirements.txt")
        if (files_dir / "pyproject.toml").is_file():
            requirements += _pyproject(files_dir / "pyproject.toml")
    python = deps.get("python_version") or ""
    if not isinstance(python, str) or (python and not re.fullmatch(r"3\.\d{1,2}", python)):
        raise BuildFailed(f"dlhub.dependencies.python_version must be like '3.11', got {python!r}")
    env = dlhub.get("environment")
    env = env if isinstance(env, Mapping) else {}
    backend = env.get("backend") or ""
    if backend not in ("", "venv", "docker"):
        raise BuildFailed(f"dlhub.environment.backend must be 'venv' or 'docker', got {backend!r}")
    return Declaration(
        pins=pins, requirements=requirements, python=python, backend=backend, network=bool(env.get("network"))
    )


# Builds of one project published under other names: the original SDK writes "tensorflow" while a CPU-only
# worker has tensorflow-cpu installed, which provides the same import package at the same version.
DISTRIBUTION_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "tensorflow": ("tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"),
}


def _installed_version(name: str) -> str | None:
    for candidate in (name, *DISTRIBUTION_ALIASES.get(name.lower(), ())):
        try:
            return importlib_metadata.version(candidate)
        except importlib_metadata.PackageNotFoundError:
            continue
    return None


def _satisfied_here(decl: Declaration) -> bool:
    """Whether this (the DLHub server's) environment already has every declared pin, exactly."""
    if decl.python and decl.python != current_python():
        return False
    if len(decl.requirements) != len(decl.pins):  # requirement files: always their own environment
        return False
    for name, wanted in decl.pins.items():
        installed = _installed_version(name)
        if installed is None:
            return False
        wanted = wanted.strip()
        if wanted in ("", "*"):
            continue
        if wanted.startswith(_OPERATORS):
            if not _in_range(installed, wanted):
                return False
        elif _canonical_version(installed) != _canonical_version(wanted):
            return False
    return True


def _in_range(installed: str, specifier: str) -> bool:
    """Whether ``installed`` satisfies ``specifier`` (PEP 440, with ``packaging``); unknown: no."""
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return False
    try:
        return Version(installed) in SpecifierSet(specifier)
    except (InvalidSpecifier, InvalidVersion):
        return False


def _canonical_version(text: str) -> str:
    parts = text.strip().split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return ".".join(parts)


def current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True, slots=True)
class Plan:
    """``shared`` is set when the version runs in the worker's environment; otherwise the rest is."""

    shared: EnvironmentRecord | None
    backend: str = ""
    python: str = ""
    requirements: list[str] = field(default_factory=list)
    network: bool = False


def plan(metadata: Mapping[str, Any], files_dir: Path | None, config: EnvironmentsConfig) -> Plan:
    """Apply ``config.mode`` to what the version declares (see ``EnvironmentsConfig``)."""
    decl = declaration(metadata, files_dir)
    if config.mode == "shared":
        reason = "environments.mode = shared: the worker environment is used"
        return Plan(shared=EnvironmentRecord(kind="shared", reason=reason, requirements=decl.requirements))
    if config.mode == "auto" and not decl.backend:
        if decl.empty:
            return Plan(shared=EnvironmentRecord(kind="shared", reason="no dependencies declared"))
        if _satisfied_here(decl):
            reason = "every declared dependency is installed at that version in the worker environment"
            return Plan(
                shared=EnvironmentRecord(kind="shared", reason=reason, requirements=decl.requirements)
            )
    backend = decl.backend or config.backend
    if backend not in config.allowed_backends:
        raise BuildFailed(
            f"backend {backend!r} is not allowed here (allowed: {', '.join(config.allowed_backends)})"
        )
    python = decl.python or (config.docker_base_python if backend == "docker" else current_python())
    requirements = list(decl.requirements)
    named = {normalize_name(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}
    if RUNTIME_PACKAGE not in named:
        requirements.append(RUNTIME_REQUIREMENT)
    return Plan(shared=None, backend=backend, python=python, requirements=requirements, network=decl.network)


# --- index settings, subprocesses -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexSettings:
    index_url: str | None
    extra_index_urls: list[str]
    ca_bundle: Path | None


def _pip_conf() -> dict[str, str]:
    """``[global]`` of pip's configuration files (site, user, ``PIP_CONFIG_FILE``), later files winning."""
    parser = configparser.ConfigParser()
    paths = [
        "/etc/pip.conf",
        str(Path.home() / ".config" / "pip" / "pip.conf"),
        str(Path.home() / ".pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        paths.append(os.environ["PIP_CONFIG_FILE"])
    with contextlib.suppress(configparser.Error):
        parser.read(paths)
    return dict(parser["global"]) if parser.has_section("global") else {}


def index_settings(config: EnvironmentsConfig) -> IndexSettings:
    """The configured index and CA bundle, else pip's own settings (env, pip.conf), else ``SSL_CERT_FILE``."""
    conf = _pip_conf()
    index = config.index_url or os.environ.get("PIP_INDEX_URL") or conf.get("index-url")
    extra = list(config.extra_index_urls)
    if not extra:
        extra = (os.environ.get("PIP_EXTRA_INDEX_URL") or conf.get("extra-index-url") or "").split()
    ca: Path | None = config.ca_bundle
    if ca is None:
        raw = os.environ.get("SSL_CERT_FILE") or os.environ.get("PIP_CERT") or conf.get("cert")
        ca = Path(raw) if raw else None
    return IndexSettings(index_url=index, extra_index_urls=extra, ca_bundle=ca)


def uv_binary() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return shutil.which("uv")


def _uv_env(index: IndexSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHONPATH"))}
    if index.index_url:
        env["UV_INDEX_URL"] = index.index_url
    if index.extra_index_urls:
        env["UV_EXTRA_INDEX_URL"] = " ".join(index.extra_index_urls)
    if index.ca_bundle:
        env["SSL_CERT_FILE"] = str(index.ca_bundle)
    return env


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.end = time.monotonic() + seconds

    def remaining(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BuildFailed(f"environment build timed out after {self.total:g} s ({what})")
        return left


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else "..." + text[-MAX_MESSAGE_CHARS:]


def run_step(
    what: str, argv: Sequence[str], log: BuildLog, deadline: Deadline, env: Mapping[str, str] | None = None
) -> str:
    """Run one build command; its output goes to the log, and its own message to ``BuildFailed``."""
    log.line(f"$ {' '.join(argv)}")
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=deadline.remaining(what),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"environment build timed out after {deadline.total:g} s ({what})") from exc
    except OSError as exc:
        raise BuildFailed(f"{what} failed: {exc}") from exc
    if done.stderr:
        log.line(done.stderr)
    if done.returncode != 0:
        raise BuildFailed(f"{what} failed:\n{_tail(done.stderr or done.stdout)}")
    return done.stdout


# --- lock ---------------------------------------------------------------------------------------------------


def lock(
    requirements: Sequence[str], python: str, config: EnvironmentsConfig, log: BuildLog, deadline: Deadline
) -> str:
    """Resolve ``requirements`` for ``python`` to exact versions with hashes (uv's resolver)."""
    uv = uv_binary()
    if uv is None:
        raise BuildFailed("locking an environment needs uv (pip install uv)")
    with tempfile.TemporaryDirectory(prefix="dlhub-lock-") as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        argv = [
            uv, "pip", "compile", str(source), "--generate-hashes", "--no-header", "--no-annotate",
            "--python-version", python, "--quiet", "--no-progress",
        ]  # fmt: skip
        return run_step(
            "resolving the dependencies", argv, log, deadline, env=_uv_env(index_settings(config))
        )


def environment_id(backend: str, python: str, lock_text: str, base_image: str = "") -> str:
    digest = hashlib.sha256()
    for part in (backend, python, base_image, lock_text):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


# --- venv backend -------------------------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@contextlib.contextmanager
def file_lock(path: Path) -> Any:
    """An exclusive ``flock``: concurrent builds of the same environment (threads or processes) coalesce."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class VenvBackend:
    """Venvs at ``<envs>/venv/<id>``: made with ``uv venv`` from a listed interpreter, filled with
    ``uv pip sync --require-hashes`` (or ``pip install --require-hashes --no-deps``) in a temp folder that is
    renamed into place, so a worker never sees half an environment. (The rename leaves console-script
    shebangs pointing at the temp folder; the executor runs ``<env>/bin/python -m``, which does not use them.)
    """

    def __init__(self, config: EnvironmentsConfig, root: Path) -> None:
        self.config = config
        self.root = root

    def path(self, env_id: str) -> Path:
        return self.root / "venv" / env_id

    def python(self, env_id: str) -> Path:
        return self.path(env_id) / "bin" / "python"

    def is_built(self, env_id: str) -> bool:
        return self.python(env_id).exists()

    def interpreter(self, python: str) -> str:
        listed = dict(self.config.interpreters)
        if not listed:
            listed = {current_python(): sys.executable}
        found = listed.get(python)
        if found is None:
            available = ", ".join(sorted(listed)) or "none"
            raise BuildFailed(f"Python {python} is not available in this deployment (available: {available})")
        return found

    def ensure(self, record: EnvironmentRecord, log: BuildLog, deadline: Deadline) -> Path:
        """Build the environment of ``record`` unless it exists; return its interpreter."""
        if self.is_built(record.id):
            return self.python(record.id)
        with file_lock(self.root / ".locks" / f"{record.id}.lock"):
            if self.is_built(record.id):
                log.line(f"environment {record.id} was built meanwhile")
                return self.python(record.id)
            interpreter = self.interpreter(record.python)
            tmp_root = self.root / ".tmp"
            tmp_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f"{record.id}.", dir=tmp_root))
            try:
                self._install(record, interpreter, staging / "env", log, deadline)
                size = dir_size(staging)
                if size > self.config.max_env_bytes:
                    raise BuildFailed(
                        f"environment of {size} bytes exceeds the quota of {self.config.max_env_bytes} bytes"
                    )
                log.line(f"environment {record.id}: {size} bytes")
                self.path(record.id).parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging / "env", self.path(record.id))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.python(record.id)

    def _install(
        self, record: EnvironmentRecord, interpreter: str, target: Path, log: BuildLog, deadline: Deadline
    ) -> None:
        lock_file = target.parent / "requirements.lock"
        lock_file.write_text(record.lock, encoding="utf-8")
        index = index_settings(self.config)
        uv = uv_binary() if self.config.installer == "uv" else None
        if uv is not None:
            env = _uv_env(index)
            run_step(
                "creating the venv",
                [uv, "venv", "--quiet", "--python", interpreter, str(target)],
                log,
                deadline,
                env,
            )
            argv = [
                uv, "pip", "sync", "--quiet", "--no-progress", "--require-hashes", "--compile-bytecode",
                "--python", str(target / "bin" / "python"), str(lock_file),
            ]  # fmt: skip
            # --compile-bytecode (what pip does by default): without it the first import in every new
            # executor compiles the packages' sources (scikit-learn + SciPy + NumPy: ~2.5 s more on the
            # first request), and a read-only environment would pay that on every start.
            run_step("installing the dependencies", argv, log, deadline, env)
            return
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        if index.index_url:
            env["PIP_INDEX_URL"] = index.index_url
        if index.extra_index_urls:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(index.extra_index_urls)
        if index.ca_bundle:
            env["PIP_CERT"] = str(index.ca_bundle)
        run_step("creating the venv", [interpreter, "-m", "venv", str(target)], log, deadline, env)
        argv = [
            str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input",
            "--require-hashes", "--no-deps", "-r", str(lock_file),
        ]  # fmt: skip
        run_step("installing the dependencies", argv, log, deadline, env)


# --- the DLHub runtime inside an environment ----------------------------------------------------------------


def runtime_sources() -> list[Path]:
    """The package folders the executor imports: ``dlhub.common`` and ``dlhub.worker``."""
    import dlhub.common

    folders = [Path(dlhub.common.__file__).parent]
    with contextlib.suppress(ImportError):
        import dlhub.worker

        folders.append(Path(dlhub.worker.__file__).parent)
    return folders


def runtime_dir(root: Path) -> Path:
    """A copy of the executor's sources at ``<envs>/runtime/<digest>/dlhub/...`` (made once per content):
    what an environment puts on ``PYTHONPATH`` (or a container mounts read-only), so that it sees the
    DLHub executor and nothing else of the worker's installation."""
    digest = hashlib.sha256()
    files: list[tuple[Path, str]] = []
    for folder in runtime_sources():
        for path in sorted(folder.rglob("*.py")):
            rel = f"dlhub/{folder.name}/{path.relative_to(folder).as_posix()}"
            files.append((path, rel))
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    target = root / "runtime" / digest.hexdigest()[:24]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".runtime.", dir=target.parent))
    try:
        for path, rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / rel)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def record_json(record: EnvironmentRecord | BuildRecord) -> bytes:
    return msgspec.json.format(msgspec.json.encode(record)) + b"\n"


def describe(record: EnvironmentRecord) -> str:
    return json.dumps({"kind": record.kind, "backend": record.backend, "id": record.id})
