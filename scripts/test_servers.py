#!/usr/bin/env python3
"""Real test servers for the database and search test suites, on 127.0.0.1 only.

    scripts/test-servers start [--only mongodb|elasticsearch|docker|registry|s3|slurm] [--record FILE]
    scripts/test-servers stop [--only mongodb|elasticsearch|docker|registry|s3|slurm]
    scripts/test-servers status
    scripts/test-servers env

- mongodb: FerretDB (MongoDB wire protocol) with its SQLite backend, built from source with Go once.
- elasticsearch: the Elasticsearch integration-test distribution, fetched with Maven once, run with the
  machine's Java (17+).
- docker: Debian's docker.io engine on its own socket, no bridge, with a locally made base image, and Docker
  Compose v2 (``DLHUB_TEST_DOCKER_COMPOSE``) built from its Go module once.
- registry: the CNCF Distribution container registry, built from its Go module once, plain HTTP on loopback
  (Docker allows insecure registries on 127.0.0.0/8), filesystem storage in the runtime directory.
- s3: moto in server mode (``moto[server]``, pinned), an S3-compatible server in memory on loopback, installed
  with pip into its own virtual environment in the cache once.
- browser (not a server): Debian's chromium and chromium-driver for the web catalog's browser tests,
  installed with apt-get when missing (``start`` or ``start --only browser``).
- slurm: Debian's slurm-wlm (slurmctld and slurmd) and munge, installed with apt-get when missing, run as root
  as a one-node cluster (node ``localhost`` with this machine's CPUs and memory, partition ``dlhub``) from a
  generated ``slurm.conf``, with its own munge key and socket, state and spool directories in the runtime
  directory. Clients find it through ``SLURM_CONF`` (``DLHUB_TEST_SLURM_CONF``).

Downloads and builds are cached in ``${DLHUB_TEST_CACHE:-~/.cache/dlhub-test-servers}``; runtime state (data
directories, pid files, logs) lives in ``${DLHUB_TEST_RUN:-$DLHUB_TEST_CACHE/run}``. ``start`` only starts
what is not already answering; ``stop`` only stops what this tooling started (pid files) and removes the
runtime directories it made. Ports: ``DLHUB_TEST_MONGODB_PORT`` (27018), ``DLHUB_TEST_ELASTICSEARCH_PORT``
(19200), ``DLHUB_TEST_REGISTRY_PORT`` (15000), ``DLHUB_TEST_S3_PORT`` (15500), ``DLHUB_TEST_SLURMCTLD_PORT``
(16817) and ``DLHUB_TEST_SLURMD_PORT`` (16818; Slurm's own are 6817 and 6818). Stdlib only, plus pymongo
from the project's environment for the MongoDB probe.

Elasticsearch refuses to run as root. When this tooling runs as root (CI containers), Elasticsearch runs as
the unprivileged system user ``dlhub-es`` (created with ``useradd`` when missing); if that user cannot reach
the cache (``/root`` is usually ``0700``), the unpacked distribution and its runtime directory live in
``${DLHUB_TEST_ES_DIR:-/var/tmp/dlhub-test-servers}`` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ES_VERSION = "8.19.3"
ES_ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ES_VERSION}:zip"
ES_USER = "dlhub-es"
ES_CLUSTER = "dlhub-test"
ES_START_TIMEOUT_S = 120.0
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
FERRETDB_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
DOCKER_BASE_IMAGE = "dlhub-base:bookworm"
DOCKER_BASE_SUITE = "bookworm"
# The base of the compose/ images (PYTHON_IMAGE): Debian 13's Python 3.13, so that the images are tested on
# the newest Python while the embedded stack runs on the project's own.
COMPOSE_PYTHON_IMAGE = "dlhub-python:trixie"
COMPOSE_PYTHON_SUITE = "trixie"
DOCKER_START_TIMEOUT_S = 60.0
REGISTRY_MODULE = "github.com/distribution/distribution/v3"
REGISTRY_VERSION = "v3.1.2"
REGISTRY_START_TIMEOUT_S = 30.0
COMPOSE_MODULE = "github.com/docker/compose/v5"
COMPOSE_VERSION = "v5.6.0"
MOTO_VERSION = "5.2.5"
MOTO_START_TIMEOUT_S = 60.0
SLURM_PARTITION = "dlhub"
SLURM_NODE = "localhost"
SLURM_START_TIMEOUT_S = 60.0
SLURM_DRAIN_TIMEOUT_S = 15.0
SLURM_LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"})
SERVERS = ("mongodb", "elasticsearch", "docker", "registry", "s3", "slurm")


class SetupError(Exception):
    """A prerequisite is missing, a download or build failed, or a server did not come up."""


def log(message: str) -> None:
    print(f"[test-servers] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    cache: Path
    run: Path
    mongodb_port: int
    es_port: int
    es_transport_port: str
    registry_port: int = 15000
    docker_tls_port: int = 12376
    s3_port: int = 15500
    slurmctld_port: int = 16817
    slurmd_port: int = 16818

    @classmethod
    def from_env(cls) -> Layout:
        cache = Path(os.environ.get("DLHUB_TEST_CACHE") or Path.home() / ".cache" / "dlhub-test-servers")
        run = Path(os.environ.get("DLHUB_TEST_RUN") or cache / "run")
        mongodb_port = _port_from_env("DLHUB_TEST_MONGODB_PORT", 27018)
        es_port = _port_from_env("DLHUB_TEST_ELASTICSEARCH_PORT", 19200)
        transport = os.environ.get("DLHUB_TEST_ELASTICSEARCH_TRANSPORT_PORT")
        # A range: Elasticsearch binds the first free port in it.
        es_transport = transport if transport else f"{es_port + 100}-{es_port + 199}"
        registry_port = _port_from_env("DLHUB_TEST_REGISTRY_PORT", 15000)
        docker_tls_port = _port_from_env("DLHUB_TEST_DOCKER_TLS_PORT", 12376)
        s3_port = _port_from_env("DLHUB_TEST_S3_PORT", 15500)
        slurmctld_port = _port_from_env("DLHUB_TEST_SLURMCTLD_PORT", 16817)
        slurmd_port = _port_from_env("DLHUB_TEST_SLURMD_PORT", 16818)
        return cls(
            cache.absolute(),
            run.absolute(),
            mongodb_port,
            es_port,
            es_transport,
            registry_port,
            docker_tls_port,
            s3_port,
            slurmctld_port,
            slurmd_port,
        )

    @property
    def mongodb_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongodb_port}/"

    @property
    def es_url(self) -> str:
        return f"http://127.0.0.1:{self.es_port}"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def launcher_log(self, name: str) -> Path:
        return self.run / f"{name}.log"

    @property
    def ferretdb_bin(self) -> Path:
        return self.cache / "bin" / "ferretdb"

    @property
    def ferretdb_dir(self) -> Path:
        return self.run / "ferretdb"

    @property
    def docker_socket(self) -> Path:
        return self.run / "docker.sock"

    @property
    def docker_url(self) -> str:
        return f"unix://{self.docker_socket}"

    @property
    def docker_tls_url(self) -> str:
        """The same engine over TCP with mutual TLS (what services in containers use: never its socket)."""
        return f"tcp://127.0.0.1:{self.docker_tls_port}"

    @property
    def docker_tls_dir(self) -> Path:
        """``server/`` (the engine's CA, certificate and key) and ``client/`` (``ca.pem``, ``cert.pem``,
        ``key.pem``: what ``docker_tls_cert_dir`` and ``DOCKER_CERT_PATH`` expect)."""
        return self.cache / "docker-tls"

    @property
    def registry_address(self) -> str:
        """``host:port``, as Docker image references name a registry."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def registry_bin(self) -> Path:
        return self.cache / "bin" / "registry"

    @property
    def registry_dir(self) -> Path:
        return self.run / "registry"

    @property
    def compose_bin(self) -> Path:
        """Docker Compose v2 (the ``docker compose`` plugin, also usable standalone with DOCKER_HOST)."""
        return self.cache / "bin" / "docker-compose"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def moto_venv(self) -> Path:
        """moto's own virtual environment (its server pulls in Flask and more than the project needs)."""
        return self.cache / f"moto-{MOTO_VERSION}"

    @property
    def slurm_dir(self) -> Path:
        return self.run / "slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def es_zip(self) -> Path:
        return self.cache / f"elasticsearch-{ES_VERSION}.zip"


def _port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise SetupError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SetupError(f"{name}={raw!r} is not a port number")
    return port


# ------------------------------------------------------------------------------------- process state


@dataclass
class PidState:
    pid: int
    start_ticks: str | None
    port: int
    dirs: list[str]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if self.start_ticks is not None and _start_ticks(self.pid) != self.start_ticks:
            return False  # the pid was reused by another process
        return not _is_zombie(self.pid)

    def group_alive(self) -> bool:
        """Whether any process of the server's process group (pgid == pid) is left, the leader or not."""
        ticks = _start_ticks(self.pid)
        if ticks is not None and self.start_ticks is not None and ticks != self.start_ticks:
            return False  # the pid now names another process, so our group is gone
        _reap(self.pid)
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _start_ticks(pid: int) -> str | None:
    """Process start time in clock ticks (``/proc/<pid>/stat`` field 22), to detect pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw.rsplit(")", 1)[1].split()[0] == "Z"


def read_state(layout: Layout, name: str) -> PidState | None:
    path = layout.pid_file(name)
    try:
        data = json.loads(path.read_text())
        return PidState(int(data["pid"]), data.get("start_ticks"), int(data["port"]), list(data["dirs"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        log(f"ignoring a corrupt pid file {path}")
        return None


def write_state(layout: Layout, name: str, state: PidState) -> None:
    path = layout.pid_file(name)
    tmp = path.with_suffix(".tmp")
    body = {"pid": state.pid, "start_ticks": state.start_ticks, "port": state.port, "dirs": state.dirs}
    tmp.write_text(json.dumps(body) + "\n")
    tmp.replace(path)


def terminate(state: PidState, name: str) -> None:
    """SIGTERM the server's process group (each server runs in its own session), SIGKILL after a timeout."""
    if not state.group_alive():
        return
    try:
        os.killpg(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not state.group_alive():
            return
        time.sleep(0.1)
    log(f"{name} (pid {state.pid}) ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGKILL)
    _reap(state.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run_checked(cmd: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    except OSError as exc:
        raise SetupError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")
    return proc


def binary_reports(binary: Path, expected: str) -> bool:
    """Whether ``binary --version`` runs and mentions ``expected`` (a cached build is reused only then)."""
    if not os.access(binary, os.X_OK):
        return False
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and expected in proc.stdout


def go_build_env(cache: Path, *, gobin: Path | None = None) -> dict[str, str]:
    """Go's environment for the servers built from source: a private, writable module cache (immune to
    `go clean -modcache` elsewhere, removable with rm -rf), no VCS stamping, static binaries by default."""
    env = dict(
        os.environ,
        GOFLAGS="-buildvcs=false -modcacherw",
        GOMODCACHE=str(cache / "go-mod"),
        CGO_ENABLED=os.environ.get("CGO_ENABLED", "0"),
    )
    env.pop("GOBIN", None)
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return env


def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SetupError(f"`{name}` is not on PATH; it is needed to {why}")
    return path


# --------------------------------------------------------------------------------------------- probes


def probe_mongodb(url: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """``buildInfo`` of the server at ``url`` if it answers a ping, else None."""
    try:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError
    except ImportError as exc:
        raise SetupError(
            "pymongo is not importable: run this with the project's environment (.venv)"
        ) from exc
    ms = int(timeout_s * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=max(ms, 5000)
    )
    try:
        client.admin.command("ping")
        info: dict[str, Any] = client.admin.command("buildInfo")
        return info
    except PyMongoError:
        return None
    finally:
        client.close()


def http_json(url: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (OSError, ValueError, urllib.error.URLError):
        return None


def probe_elasticsearch(url: str, wait_s: int = 0) -> dict[str, Any] | None:
    """Cluster health if the cluster at ``url`` is at least yellow, else None."""
    query = f"wait_for_status=yellow&timeout={wait_s}s" if wait_s else "wait_for_status=yellow&timeout=1ms"
    health = http_json(f"{url}/_cluster/health?{query}", timeout_s=wait_s + 5)
    if health is None or health.get("status") not in ("green", "yellow") or health.get("timed_out"):
        return None
    return health


# --------------------------------------------------------------------------------------------- servers


class Server:
    name: str
    label: str

    def __init__(self, layout: Layout, record: Path | None = None) -> None:
        self.layout = layout
        self.record = record

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def probe(self) -> str | None:
        """A short description of the server answering on the port, or None."""
        raise NotImplementedError

    def install(self) -> None:
        raise NotImplementedError

    def launch(self) -> PidState:
        raise NotImplementedError

    def wait_ready(self, state: PidState) -> str:
        raise NotImplementedError

    def log_paths(self, state: PidState) -> list[Path]:
        return [self.layout.launcher_log(self.name)]

    def _wait(self, state: PidState, timeout_s: float, check: Callable[[], str | None]) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            if not state.alive():
                raise SetupError(f"{self.label} exited during start-up\n{self.logs(state)}")
            answer = check()
            if answer is not None:
                return answer
            if time.monotonic() >= deadline:
                raise SetupError(f"{self.label} did not answer within {timeout_s:.0f} s\n{self.logs(state)}")
            time.sleep(0.25)

    def logs(self, state: PidState) -> str:
        parts = [f"--- last lines of {path}:\n{tail(path)}" for path in self.log_paths(state)]
        return "\n".join(parts)

    def start(self) -> bool:
        """Start the server unless it already answers. Returns whether this call started it."""
        state = read_state(self.layout, self.name)
        if state is not None and state.alive():
            if state.port != self.port:
                raise SetupError(
                    f"{self.label} started by this tooling is running on port {state.port}, not {self.port}; "
                    "run `scripts/test-servers stop` first"
                )
            answer = self.probe()
            if answer is None:
                log(f"{self.name}: pid {state.pid} is running but not answering yet; waiting")
                answer = self.wait_ready(state)
            log(f"{self.name}: already running (pid {state.pid}) at {self.url}: {answer}")
            return False
        if state is not None:
            log(f"{self.name}: removing the stale state of pid {state.pid}")
            terminate(state, self.name)  # leftovers of its process group, if any
            self.cleanup(state)
        answer = self.probe()
        if answer is not None:
            log(f"{self.name}: already answering at {self.url} ({answer}), not started by this tooling")
            return False
        if port_open(self.port):
            raise SetupError(
                f"port {self.port} on 127.0.0.1 is in use by something that is not {self.label}; "
                f"choose another port with DLHUB_TEST_{self.name.upper()}_PORT"
            )
        self.install()
        log(f"{self.name}: starting {self.label} on {self.url}")
        began = time.monotonic()
        state = self.launch()
        try:
            answer = self.wait_ready(state)
        except BaseException:
            terminate(state, self.name)
            self.layout.pid_file(self.name).unlink(missing_ok=True)  # logs stay until the next start
            raise
        log(f"{self.name}: up in {time.monotonic() - began:.1f} s (pid {state.pid}): {answer}")
        return True

    def stop(self) -> None:
        state = read_state(self.layout, self.name)
        if state is None:
            if self.probe() is not None:
                log(f"{self.name}: answering at {self.url} but not started by this tooling; leaving it")
            else:
                log(f"{self.name}: not running")
            return
        if state.group_alive():
            log(f"{self.name}: stopping pid {state.pid}")
            terminate(state, self.name)
        else:
            log(f"{self.name}: pid {state.pid} is not running; cleaning up")
        self.cleanup(state)

    def cleanup(self, state: PidState) -> None:
        for raw in state.dirs:
            shutil.rmtree(raw, ignore_errors=True)
            with contextlib.suppress(OSError):
                Path(raw).parent.rmdir()  # only if empty
        self.layout.pid_file(self.name).unlink(missing_ok=True)
        self.layout.launcher_log(self.name).unlink(missing_ok=True)

    def status(self) -> bool:
        state = read_state(self.layout, self.name)
        answer = self.probe()
        if state is not None and state.alive():
            owner = f"pid {state.pid}, started by test-servers"
        elif state is not None:
            owner = f"stale pid file (pid {state.pid} is gone)"
        else:
            owner = "not started by test-servers" if answer is not None else ""
        word = "up" if answer is not None else "down"
        details = "; ".join(x for x in (answer or "", owner) if x)
        print(f"{self.name:<14} {word:<5} {self.url}" + (f"  ({details})" if details else ""))
        return answer is not None

    def spawn(
        self, cmd: list[str], env: dict[str, str], cwd: Path, dirs: list[Path], **kwargs: Any
    ) -> PidState:
        self.layout.run.mkdir(parents=True, exist_ok=True)
        with self.layout.launcher_log(self.name).open("wb") as out:
            process = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop signals the whole tree
                **kwargs,
            )
        state = PidState(process.pid, _start_ticks(process.pid), self.port, [str(d) for d in dirs])
        write_state(self.layout, self.name, state)
        if self.record is not None:  # at once, so an interrupted start is still stopped by its caller
            with self.record.open("a") as out:
                out.write(self.name + "\n")
        return state


class MongoDBServer(Server):
    name = "mongodb"
    label = f"FerretDB {FERRETDB_VERSION}"

    @property
    def port(self) -> int:
        return self.layout.mongodb_port

    @property
    def url(self) -> str:
        return self.layout.mongodb_url

    def probe(self) -> str | None:
        info = probe_mongodb(self.url)
        if info is None:
            return None
        if "ferretdbVersion" in info:
            return f"FerretDB {info['ferretdbVersion']}, MongoDB {info.get('version')} wire"
        return f"MongoDB {info.get('version')}"

    def binary_ok(self) -> bool:
        return binary_reports(self.layout.ferretdb_bin, f"version: {FERRETDB_VERSION}")

    def install(self) -> None:
        if self.binary_ok():
            return
        go = require_tool("go", f"build FerretDB {FERRETDB_VERSION} (install Go 1.24+)")
        binary = self.layout.ferretdb_bin
        if binary.exists():
            log(f"mongodb: {binary} is not a working FerretDB {FERRETDB_VERSION}; rebuilding it")
        log(f"mongodb: building FerretDB {FERRETDB_VERSION} with Go (first run only; a few minutes)")
        began = time.monotonic()
        self.layout.cache.mkdir(parents=True, exist_ok=True)
        env = go_build_env(self.layout.cache)
        proc = run_checked(
            [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
            f"downloading {FERRETDB_MODULE}@{FERRETDB_VERSION}",
            cwd=self.layout.cache,
            env=env,
        )
        info = json.loads(proc.stdout)
        if info.get("Error") or not info.get("Dir"):
            raise SetupError(f"downloading {FERRETDB_MODULE}@{FERRETDB_VERSION} failed: {info.get('Error')}")
        # `go install ...@version` yields a binary that panics at start: FerretDB embeds
        # build/version/version.txt, which its release tooling generates and the module zip lacks.
        # So build a writable copy of the module source with that file in place.
        src = self.layout.cache / "src" / f"ferretdb-{FERRETDB_VERSION}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(info["Dir"], src, symlinks=True)
        for path in [src, *src.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_name("ferretdb.tmp")
        run_checked(
            [go, "build", "-o", str(tmp), "./cmd/ferretdb"],
            f"building FerretDB {FERRETDB_VERSION}",
            cwd=src,
            env=env,
        )
        tmp.replace(binary)
        shutil.rmtree(src.parent, ignore_errors=True)
        # The binary is what is cached; the module cache (~650 MB) only matters for the next version bump.
        shutil.rmtree(env["GOMODCACHE"], ignore_errors=True)
        if not self.binary_ok():
            raise SetupError(f"the FerretDB binary built at {binary} does not report {FERRETDB_VERSION}")
        log(f"mongodb: built {binary} in {time.monotonic() - began:.0f} s")

    def launch(self) -> PidState:
        base = self.layout.ferretdb_dir
        shutil.rmtree(base, ignore_errors=True)
        data, state_dir = base / "data", base / "state"
        data.mkdir(parents=True)
        state_dir.mkdir()
        cmd = [
            str(self.layout.ferretdb_bin),
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--state-dir={state_dir}",
            "--debug-addr=-",  # no debug/metrics HTTP listener
            "--telemetry=disable",
            "--log-level=warn",
            "--log-format=text",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
        return self.spawn(cmd, env, base, [base])

    def wait_ready(self, state: PidState) -> str:
        return self._wait(state, FERRETDB_START_TIMEOUT_S, self.probe)


class ElasticsearchServer(Server):
    name = "elasticsearch"
    label = f"Elasticsearch {ES_VERSION}"

    @property
    def port(self) -> int:
        return self.layout.es_port

    @property
    def url(self) -> str:
        return self.layout.es_url

    def probe(self) -> str | None:
        health = probe_elasticsearch(self.url)
        if health is None:
            return None
        # Not `GET /`: the integ-test distribution lacks the rest-root module (`GET /` answers 405).
        nodes = http_json(self.url + "/_nodes/_local?filter_path=nodes.*.version", timeout_s=5) or {}
        versions = {str(node.get("version")) for node in nodes.get("nodes", {}).values()}
        version = ",".join(sorted(versions)) or "?"
        return f"Elasticsearch {version}, cluster {health.get('cluster_name')} {health.get('status')}"

    # -- where things live; as root, somewhere the unprivileged ES user can reach

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def base(self) -> Path:
        """The directory holding the unpacked distribution (``elasticsearch-<v>/``) and the runtime dir."""
        if self.as_root and not (_others_can_reach(self.layout.cache) and _others_can_reach(self.layout.run)):
            return Path(os.environ.get("DLHUB_TEST_ES_DIR") or "/var/tmp/dlhub-test-servers").absolute()
        return self.layout.cache

    def home(self) -> Path:
        return self.base() / f"elasticsearch-{ES_VERSION}"

    def runtime(self) -> Path:
        if self.base() == self.layout.cache:
            return self.layout.run / "elasticsearch"
        # Shared by every DLHUB_TEST_RUN: keyed by the HTTP port, which only one server can hold at a time.
        return self.base() / "run" / f"elasticsearch-{self.port}"

    def log_paths(self, state: PidState) -> list[Path]:
        return [self.layout.launcher_log(self.name), self.runtime() / "logs" / f"{ES_CLUSTER}.log"]

    def install(self) -> None:
        java_home()  # fail early with a clear message
        home = self.home()
        if (home / ".dlhub-unpacked").is_file():
            return
        if not self.layout.es_zip.is_file():
            mvn = require_tool("mvn", f"download Elasticsearch {ES_VERSION} (install Maven)")
            log(f"elasticsearch: fetching {ES_ARTIFACT} with Maven (first run only)")
            self.layout.cache.mkdir(parents=True, exist_ok=True)
            run_checked(
                [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={ES_ARTIFACT}",
                 f"-DoutputDirectory={self.layout.cache}"],
                f"downloading {ES_ARTIFACT} with Maven",
                cwd=self.layout.cache,
            )  # fmt: skip
            if not self.layout.es_zip.is_file():
                raise SetupError(f"Maven finished but {self.layout.es_zip} is missing")
        log(f"elasticsearch: unpacking {self.layout.es_zip.name} into {home.parent}")
        _make_dirs(home.parent)
        staging = home.with_name(home.name + ".unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        try:
            _unzip(self.layout.es_zip, staging)
        except (OSError, zipfile.BadZipFile) as exc:
            self.layout.es_zip.unlink(missing_ok=True)  # fetch it again next time
            raise SetupError(f"cannot unpack {self.layout.es_zip}: {exc}") from exc
        top = list(staging.iterdir())
        if len(top) != 1 or not (top[0] / "bin" / "elasticsearch").is_file():
            raise SetupError(f"unexpected layout in {self.layout.es_zip}: {[p.name for p in top]}")
        top[0].rename(home)
        staging.rmdir()
        (home / ".dlhub-unpacked").write_text(ES_ARTIFACT + "\n")

    def settings(self, runtime: Path) -> list[str]:
        modules = {p.name for p in (self.home() / "modules").iterdir()}
        settings = {
            "cluster.name": ES_CLUSTER,
            "node.name": ES_CLUSTER,
            "network.host": "127.0.0.1",
            "http.port": str(self.port),
            "transport.port": self.layout.es_transport_port,
            "discovery.type": "single-node",
            "path.data": str(runtime / "data"),
            "path.logs": str(runtime / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.destructive_requires_name": "false",
        }
        # Settings of modules that may be absent: setting them without the module is a start-up error.
        if "x-pack-security" in modules:
            settings["xpack.security.enabled"] = "false"
        if "x-pack-ml" in modules:
            settings["xpack.ml.enabled"] = "false"
        if "ingest-geoip" in modules:
            settings["ingest.geoip.downloader.enabled"] = "false"
        return [arg for key, value in settings.items() for arg in ("-E", f"{key}={value}")]

    def launch(self) -> PidState:
        jhome = java_home()
        home, runtime = self.home(), self.runtime()
        shutil.rmtree(runtime, ignore_errors=True)
        _make_dirs(runtime)
        for sub in ("data", "logs", "tmp"):
            (runtime / sub).mkdir(mode=0o755)
        # A private copy of config/: Elasticsearch writes its keystore there; the JVM logs go to runtime/.
        conf = runtime / "config"
        shutil.copytree(home / "config", conf)
        jvm_options = conf / "jvm.options"
        text = jvm_options.read_text()
        text = text.replace("file=gc.log", f"file={runtime / 'logs' / 'gc.log'}")
        text = text.replace(
            "-XX:ErrorFile=hs_err_pid%p.log", f"-XX:ErrorFile={runtime / 'logs'}/hs_err_pid%p.log"
        )
        jvm_options.write_text(text + f"\n-XX:HeapDumpPath={runtime / 'data'}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "JAVA_", "_JAVA_"))}
        env.update(
            ES_JAVA_HOME=str(jhome),
            ES_PATH_CONF=str(conf),
            ES_TMPDIR=str(runtime / "tmp"),
            ES_JAVA_OPTS=os.environ.get("DLHUB_TEST_ES_JAVA_OPTS", "-Xms256m -Xmx512m"),
            HOME=str(runtime),
        )
        kwargs: dict[str, Any] = {}
        if self.as_root:
            user = ensure_es_user()
            _chown_tree(runtime, user.pw_uid, user.pw_gid)
            env.update(USER=user.pw_name, LOGNAME=user.pw_name)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            log(f"elasticsearch: running as the unprivileged user {user.pw_name} (it refuses to run as root)")
        cmd = [str(home / "bin" / "elasticsearch"), *self.settings(runtime)]
        return self.spawn(cmd, env, runtime, [runtime], **kwargs)

    def wait_ready(self, state: PidState) -> str:
        def check() -> str | None:
            return self.probe() if probe_elasticsearch(self.url, wait_s=2) is not None else None

        return self._wait(state, ES_START_TIMEOUT_S, check)


def java_home() -> Path:
    """JAVA_HOME of the machine's Java (17 or newer): ``$JAVA_HOME`` if set, else resolved from ``java``."""
    candidates: list[Path] = []
    for var in ("DLHUB_TEST_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        java = home / "bin" / "java"
        if not os.access(java, os.X_OK):
            continue
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
        if match is None:
            continue
        major = int(match.group(1))
        if major == 1 and match.group(2):
            major = int(match.group(2))
        if major < 17:
            raise SetupError(f"Elasticsearch {ES_VERSION} needs Java 17 or newer; {java} is Java {major}")
        return home
    raise SetupError(
        f"no Java found (looked at $JAVA_HOME and `java` on PATH); Elasticsearch {ES_VERSION} needs Java 17+"
    )


def ensure_es_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(ES_USER)
    except KeyError:
        pass
    useradd = require_tool("useradd", f"create the unprivileged user {ES_USER} that runs Elasticsearch")
    log(f"elasticsearch: creating the system user {ES_USER} (Elasticsearch refuses to run as root)")
    run_checked(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", ES_USER],
        f"creating the user {ES_USER}",
    )  # fmt: skip
    return pwd.getpwnam(ES_USER)


def _others_can_reach(path: Path) -> bool:
    """Whether every existing ancestor of ``path`` is searchable by other users."""
    for parent in [*reversed(path.parents), path]:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            return True  # created by us, mode 0755
        if not mode & stat.S_IXOTH:
            return False
    return True


def _make_dirs(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask, refusing symlinked or foreign-owned directories."""
    missing = [p for p in [*reversed(path.parents), path] if not p.exists()]
    for p in missing:
        p.mkdir(mode=0o755)
        p.chmod(0o755)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or (info.st_uid not in (0, os.geteuid())):
        raise SetupError(f"refusing to use {path}: a symlink or owned by another user")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _unzip(archive: Path, target: Path) -> None:
    """Extract keeping the Unix permission bits (zipfile drops them), everything readable by all."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            dest = (target / info.filename).resolve()
            if not dest.is_relative_to(target.resolve()):
                raise SetupError(f"unsafe path {info.filename!r} in {archive}")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True, mode=0o755)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            with zf.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            dest.chmod((mode or 0o644) | 0o444 | (0o111 if mode & 0o100 else 0))
    for dirpath, _, _ in os.walk(target):
        os.chmod(dirpath, 0o755)


class DockerServer(Server):
    """Debian's docker.io engine on its own socket, data root (cached: images survive restarts) and pid file,
    with no bridge and no iptables: containers get host or no networking only. Once it answers, the base
    image for servable environments (``DOCKER_BASE_IMAGE``: a minimal Debian with python3 and venv, made with
    debootstrap and ``docker import``) is built unless the data root already has it."""

    name = "docker"
    label = "Docker engine (docker.io)"

    @property
    def port(self) -> int:
        return 0  # a unix socket

    @property
    def url(self) -> str:
        return self.layout.docker_url

    def _docker(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str] | None:
        docker = shutil.which("docker")
        if docker is None or not self.layout.docker_socket.exists():
            return None
        try:
            return subprocess.run(
                [docker, "-H", self.url, *args],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    def probe(self) -> str | None:
        proc = self._docker("version", "--format", "{{.Server.Version}}", timeout_s=5.0)
        if proc is None or proc.returncode != 0 or not proc.stdout.strip():
            return None
        return f"Docker {proc.stdout.strip()}"

    def install(self) -> None:
        missing = [tool for tool in ("dockerd", "docker", "debootstrap") if shutil.which(tool) is None]
        if not missing:
            return
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SetupError(
                f"{', '.join(missing)} missing; install Debian's docker.io and debootstrap packages"
            )
        log("docker: installing docker.io and debootstrap with apt-get (first run only)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run_checked(["apt-get", "update", "-qq"], "apt-get update", env=env)
        run_checked(
            ["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"], "installing docker.io", env=env
        )

    def launch(self) -> PidState:
        data_root = self.layout.cache / "docker"
        exec_root = self.layout.run / "docker-exec"
        data_root.mkdir(parents=True, exist_ok=True)
        exec_root.mkdir(parents=True, exist_ok=True)
        self.layout.docker_socket.unlink(missing_ok=True)
        cmd = [
            require_tool("dockerd", "run the Docker engine"),
            f"--data-root={data_root}",
            f"--exec-root={exec_root}",
            f"--pidfile={self.layout.run / 'dockerd.pid'}",
            f"--host={self.url}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--storage-driver=overlay2",
        ]
        server = ensure_docker_tls(self.layout.docker_tls_dir)
        cmd += [
            f"--host={self.layout.docker_tls_url}",
            "--tlsverify",
            f"--tlscacert={server / 'ca.pem'}",
            f"--tlscert={server / 'cert.pem'}",
            f"--tlskey={server / 'key.pem'}",
        ]
        return self.spawn(cmd, dict(os.environ), self.layout.run, [exec_root])

    def wait_ready(self, state: PidState) -> str:
        return self._wait(state, DOCKER_START_TIMEOUT_S, self.probe)

    def start(self) -> bool:
        started = super().start()
        self.ensure_base_image(DOCKER_BASE_IMAGE, DOCKER_BASE_SUITE)
        self.ensure_base_image(COMPOSE_PYTHON_IMAGE, COMPOSE_PYTHON_SUITE)
        ensure_compose(self.layout)
        return started

    def ensure_base_image(self, image: str, suite: str) -> None:
        """A minimal Debian ``suite`` with python3 and its venv module, made with debootstrap as ``image``."""
        inspect = self._docker("image", "inspect", image, "--format", "{{.Id}}")
        if inspect is not None and inspect.returncode == 0:
            return
        debootstrap = require_tool("debootstrap", f"make {image}")
        root = self.layout.cache / "debootstrap"
        shutil.rmtree(root, ignore_errors=True)
        log(f"docker: making {image} with debootstrap (first run only, ~1 min)")
        began = time.monotonic()
        run_checked(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv",
                suite,
                str(root),
            ],
            "debootstrap",
        )
        docker = require_tool("docker", "import the base image")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            run_checked([docker, "-H", self.url, "import", "-", image], "docker import", stdin=tar.stdout)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        shutil.rmtree(root, ignore_errors=True)
        log(f"docker: {image} made in {time.monotonic() - began:.0f} s")


DOCKER_TLS_MARKER = "x509-strict-v1"
"""Bumped when the certificates' profile changes, so cached ones are made again."""


def ensure_docker_tls(root: Path) -> Path:
    """A private CA, the engine's certificate (for 127.0.0.1) and one client certificate, made with openssl
    once (kept with the cache; 10 years). They carry the extensions strict X.509 verification requires
    (Python 3.13's default: CA key usage, key identifiers). Returns the engine's directory."""
    server, client = root / "server", root / "client"
    if (root / DOCKER_TLS_MARKER).is_file():
        return server
    openssl = require_tool("openssl", "make the Docker engine's TLS certificates")
    shutil.rmtree(root, ignore_errors=True)
    for folder in (server, client):
        folder.mkdir(parents=True)
        folder.chmod(0o755)
    ca_key, ca = root / "ca-key.pem", server / "ca.pem"
    days = ["-days", "3650"]
    leaf = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]

    def sign(key: Path, cert: Path, subject: str, extensions: list[str]) -> None:
        csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
        ext.write_text("\n".join(leaf + extensions) + "\n", encoding="ascii")
        run_checked([openssl, "genrsa", "-out", str(key), "2048"], "openssl genrsa")
        run_checked(
            [openssl, "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)], "openssl req"
        )
        run_checked(
            [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), *days, "-extfile", str(ext)],
            "openssl x509",
        )  # fmt: skip
        csr.unlink()
        ext.unlink()

    run_checked([openssl, "genrsa", "-out", str(ca_key), "2048"], "openssl genrsa")
    run_checked(
        [openssl, "req", "-new", "-x509", "-key", str(ca_key), "-subj", "/CN=dlhub-test-docker-ca", *days,
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash", "-out", str(ca)],
        "openssl req -x509",
    )  # fmt: skip
    sign(server / "key.pem", server / "cert.pem", "/CN=127.0.0.1",
         ["subjectAltName=IP:127.0.0.1", "extendedKeyUsage=serverAuth"])  # fmt: skip
    sign(client / "key.pem", client / "cert.pem", "/CN=dlhub-test-client", ["extendedKeyUsage=clientAuth"])
    shutil.copyfile(ca, client / "ca.pem")
    for key in (server / "key.pem", client / "key.pem"):
        key.chmod(0o644)  # test certificates: services in containers run as another user and read them
    (root / DOCKER_TLS_MARKER).touch()
    return server


def ensure_compose(layout: Layout) -> Path:
    """Build Docker Compose ``COMPOSE_VERSION`` from its Go module once (no container registry or release
    download is reachable; Debian's docker-compose is the Python v1). As with FerretDB, ``go install
    ...@version`` refuses the module (its go.mod has exclude directives), so build a copy of its source."""
    binary = layout.compose_bin
    if binary_reports(binary, COMPOSE_VERSION):
        return binary
    go = require_tool("go", f"build Docker Compose {COMPOSE_VERSION} (install Go 1.26+)")
    log(f"docker: building Docker Compose {COMPOSE_VERSION} with Go (first run only; a few minutes)")
    began = time.monotonic()
    layout.cache.mkdir(parents=True, exist_ok=True)
    env = go_build_env(layout.cache)
    proc = run_checked(
        [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        f"downloading {COMPOSE_MODULE}@{COMPOSE_VERSION}",
        cwd=layout.cache,
        env=env,
    )
    info = json.loads(proc.stdout)
    if info.get("Error") or not info.get("Dir"):
        raise SetupError(f"downloading {COMPOSE_MODULE}@{COMPOSE_VERSION} failed: {info.get('Error')}")
    src = layout.cache / "src" / f"compose-{COMPOSE_VERSION}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(info["Dir"], src, symlinks=True)
    for path in [src, *src.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name("docker-compose.tmp")
    ldflags = f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    run_checked(
        [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), "./cmd"],
        f"building Docker Compose {COMPOSE_VERSION}",
        cwd=src,
        env=env,
    )
    tmp.replace(binary)
    shutil.rmtree(src.parent, ignore_errors=True)
    shutil.rmtree(env["GOMODCACHE"], ignore_errors=True)  # the binary is what is cached
    if not binary_reports(binary, COMPOSE_VERSION):
        raise SetupError(f"the Compose binary built at {binary} does not report {COMPOSE_VERSION}")
    log(f"docker: built {binary} in {time.monotonic() - began:.0f} s")
    return binary


class RegistryServer(Server):
    """The CNCF Distribution registry (``registry serve``), plain HTTP on 127.0.0.1, filesystem storage in its
    runtime directory (emptied on every start), no authentication. Built with ``go install`` once."""

    name = "registry"
    label = f"Distribution registry {REGISTRY_VERSION}"

    @property
    def port(self) -> int:
        return self.layout.registry_port

    @property
    def url(self) -> str:
        return f"http://{self.layout.registry_address}"

    def probe(self) -> str | None:
        """``GET /v2/`` answers 200 with the API version header (401 would mean authentication is on)."""
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2) as response:
                api = response.headers.get("Docker-Distribution-Api-Version")
                if response.status != 200 or api != "registry/2.0":
                    return None
        except (OSError, urllib.error.URLError):
            return None
        return f"container registry ({api})"

    def binary_ok(self) -> bool:
        return binary_reports(self.layout.registry_bin, REGISTRY_VERSION)

    def install(self) -> None:
        if self.binary_ok():
            return
        go = require_tool("go", f"build the Distribution registry {REGISTRY_VERSION} (install Go 1.24+)")
        binary = self.layout.registry_bin
        log(f"registry: building {REGISTRY_MODULE}/cmd/registry@{REGISTRY_VERSION} with Go (first run only)")
        began = time.monotonic()
        binary.parent.mkdir(parents=True, exist_ok=True)
        staging = self.layout.cache / "registry-build"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        env = go_build_env(self.layout.cache, gobin=staging)
        # The module's own version in the binary (`registry --version`), as its release builds set it.
        ldflags = f"-X {REGISTRY_MODULE}/version.version={REGISTRY_VERSION}"
        run_checked(
            [go, "install", "-ldflags", ldflags, f"{REGISTRY_MODULE}/cmd/registry@{REGISTRY_VERSION}"],
            f"building the Distribution registry {REGISTRY_VERSION}",
            cwd=self.layout.cache,
            env=env,
        )
        (staging / "registry").replace(binary)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(env["GOMODCACHE"], ignore_errors=True)  # the binary is what is cached
        if not self.binary_ok():
            raise SetupError(f"the registry binary built at {binary} does not report {REGISTRY_VERSION}")
        log(f"registry: built {binary} in {time.monotonic() - began:.0f} s")

    def config_text(self, storage: Path) -> str:
        return (
            "version: 0.1\n"
            "log:\n"
            "  level: warn\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {json.dumps(str(storage))}\n"
            "  delete:\n"
            "    enabled: true\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            f"  secret: {os.urandom(16).hex()}\n"
            "  debug:\n"
            "    addr: ''\n"
            "health:\n"
            "  storagedriver:\n"
            "    enabled: false\n"
        )

    def launch(self) -> PidState:
        base = self.layout.registry_dir
        shutil.rmtree(base, ignore_errors=True)
        storage = base / "storage"
        storage.mkdir(parents=True)
        config = base / "config.yml"
        config.write_text(self.config_text(storage))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
        env["OTEL_TRACES_EXPORTER"] = "none"  # no tracing exporter trying to reach a collector
        cmd = [str(self.layout.registry_bin), "serve", str(config)]
        return self.spawn(cmd, env, base, [base])

    def wait_ready(self, state: PidState) -> str:
        return self._wait(state, REGISTRY_START_TIMEOUT_S, self.probe)


class S3Server(Server):
    """moto's S3 in server mode (``moto_server``), in memory, on 127.0.0.1 only. Any credentials are accepted;
    every start is empty. Installed with pip into ``moto-<version>/`` in the cache once."""

    name = "s3"
    label = f"moto {MOTO_VERSION} (S3)"

    @property
    def port(self) -> int:
        return self.layout.s3_port

    @property
    def url(self) -> str:
        return self.layout.s3_url

    def probe(self) -> str | None:
        """An unsigned ``GET /`` (ListBuckets) answered with moto's S3 XML."""
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                body = response.read(4096)
                server = response.headers.get("Server", "")
        except (OSError, urllib.error.URLError):
            return None
        if b"ListAllMyBucketsResult" not in body:
            return None
        return f"S3-compatible ({server or 'moto'})"

    def binary(self) -> Path:
        return self.layout.moto_venv / "bin" / "moto_server"

    def install(self) -> None:
        marker = self.layout.moto_venv / ".dlhub-installed"
        if marker.is_file() and os.access(self.binary(), os.X_OK):
            return
        venv = self.layout.moto_venv
        log(f"s3: installing moto[server]=={MOTO_VERSION} into {venv} with pip (first run only)")
        began = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        self.layout.cache.mkdir(parents=True, exist_ok=True)
        run_checked([sys.executable, "-m", "venv", str(venv)], "creating moto's virtual environment")
        run_checked(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"moto[server]=={MOTO_VERSION}"],
            f"installing moto[server]=={MOTO_VERSION}",
        )  # fmt: skip
        if not os.access(self.binary(), os.X_OK):
            raise SetupError(f"moto installed but {self.binary()} is missing")
        marker.write_text(MOTO_VERSION + "\n")
        log(f"s3: installed moto {MOTO_VERSION} in {time.monotonic() - began:.0f} s")

    def launch(self) -> PidState:
        base = self.layout.run / "s3"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        cmd = [str(self.binary()), "-H", "127.0.0.1", "-p", str(self.port)]
        return self.spawn(cmd, env, base, [base])

    def wait_ready(self, state: PidState) -> str:
        return self._wait(state, MOTO_START_TIMEOUT_S, self.probe)


class SlurmServer(Server):
    """A one-node Slurm cluster: munged, slurmctld and slurmd in the foreground under one shell (one process
    group, so ``stop`` signals all three), from a ``slurm.conf`` written at each start into the runtime
    directory with this machine's CPUs and memory (``slurmd -C``). Runs as root (jobs run as their submitter);
    no accounting, cgroups or MPI. Slurm binds its daemons' ports on every address (not configurable);
    clients and the node talk over 127.0.0.1."""

    name = "slurm"
    label = "Slurm (slurm-wlm, munge)"
    tools = ("munged", "slurmctld", "slurmd", "sinfo", "scontrol", "squeue", "sbatch", "scancel")

    @property
    def port(self) -> int:
        return self.layout.slurmctld_port

    @property
    def url(self) -> str:
        return f"slurm://127.0.0.1:{self.port} (SLURM_CONF={self.layout.slurm_conf})"

    @property
    def munge_socket(self) -> Path:
        return self.layout.slurm_dir / "munge-socket" / "munge.socket"

    def _slurm(self, *args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str] | None:
        if not self.layout.slurm_conf.is_file() or shutil.which(args[0]) is None:
            return None
        env = dict(os.environ, SLURM_CONF=str(self.layout.slurm_conf))
        try:
            return subprocess.run(
                list(args), capture_output=True, text=True, timeout=timeout_s, check=False, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    def probe(self) -> str | None:
        """The node's state from ``sinfo`` once the controller answers and the node is usable."""
        ping = self._slurm("scontrol", "ping", timeout_s=5.0)
        if ping is None or ping.returncode != 0 or "is UP" not in ping.stdout:
            return None
        info = self._slurm("sinfo", "--noheader", "--Node", "--format=%N %T", timeout_s=5.0)
        if info is None or info.returncode != 0:
            return None
        states = dict(line.split(maxsplit=1) for line in info.stdout.splitlines() if " " in line)
        state = states.get(SLURM_NODE, "")
        if state not in ("idle", "mixed", "allocated", "completing"):
            return None  # unknown, down or drained: slurmd has not registered (or is unhealthy)
        version = self._slurm("sinfo", "--version", timeout_s=5.0)
        release = version.stdout.strip() if version is not None else "slurm"
        return f"{release}, node {SLURM_NODE} {state}, partition {SLURM_PARTITION}"

    def install(self) -> None:
        missing = [tool for tool in self.tools if shutil.which(tool) is None]
        if not missing:
            return
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SetupError(f"{', '.join(missing)} missing; install Debian's slurm-wlm and munge packages")
        log("slurm: installing slurm-wlm and munge with apt-get (first run only)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run_checked(["apt-get", "update", "-qq"], "apt-get update", env=env)
        run_checked(
            ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], "installing slurm-wlm", env=env
        )

    def node_line(self) -> str:
        """``NodeName=localhost`` with what slurmd detects here (claiming more would drain the node)."""
        detected = run_checked([require_tool("slurmd", "run Slurm"), "-C"], "slurmd -C").stdout
        fields = dict(re.findall(r"(\w+)=(\S+)", detected.splitlines()[0]))
        keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
        spec = " ".join(f"{key}={fields[key]}" for key in keys if key in fields)
        return f"NodeName={SLURM_NODE} NodeAddr=127.0.0.1 NodeHostname={SLURM_NODE} {spec} State=UNKNOWN"

    def config_text(self) -> str:
        base = self.layout.slurm_dir
        settings = {
            "ClusterName": "dlhubtest",
            "SlurmctldHost": "localhost",
            "SlurmctldPort": str(self.layout.slurmctld_port),
            "SlurmdPort": str(self.layout.slurmd_port),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "MpiDefault": "none",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "ReturnToService": "2",
            "MailProg": "/bin/true",
            "KillWait": "2",  # scancel: SIGKILL 2 s after SIGTERM (default 30)
            "MinJobAge": "30",
            "StateSaveLocation": str(base / "state"),
            "SlurmdSpoolDir": str(base / "spool"),
            "SlurmctldPidFile": str(base / "slurmctld.pid"),
            "SlurmdPidFile": str(base / "slurmd.pid"),
            "SlurmctldLogFile": str(base / "slurmctld.log"),
            "SlurmdLogFile": str(base / "slurmd.log"),
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(self.node_line())
        lines.append(
            f"PartitionName={SLURM_PARTITION} Nodes={SLURM_NODE} Default=YES MaxTime=INFINITE State=UP"
        )
        return "\n".join(lines) + "\n"

    def launch(self) -> PidState:
        base = self.layout.slurm_dir
        shutil.rmtree(base, ignore_errors=True)
        for sub, mode in (("state", 0o755), ("spool", 0o755), ("munge", 0o700), ("munge-socket", 0o755)):
            (base / sub).mkdir(parents=True, exist_ok=True)
            (base / sub).chmod(mode)  # munged refuses a key others can read and a socket others cannot reach
        key = base / "munge" / "munge.key"
        key.touch(mode=0o600)
        key.write_bytes(os.urandom(1024))
        self.layout.slurm_conf.write_text(self.config_text())
        munged = [
            # --force: the socket's path need not be reachable by every user (/root is 0700); only root's
            # daemons and jobs use it.
            require_tool("munged", "run munge"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={base / 'munge' / 'munged.pid'}",
            f"--log-file={base / 'munge' / 'munged.log'}", f"--seed-file={base / 'munge' / 'munged.seed'}",
        ]  # fmt: skip
        conf = str(self.layout.slurm_conf)
        slurmctld = [require_tool("slurmctld", "run Slurm"), "-D", "-f", conf]
        slurmd = [require_tool("slurmd", "run Slurm"), "-D", "-f", conf, "-N", SLURM_NODE]
        # One shell holds the three daemons in its process group; slurmctld needs munge's socket first.
        script = (
            f"{_shell(munged)} &\n"
            f"n=0; while [ ! -S {shlex.quote(str(self.munge_socket))} ] && [ $n -lt 100 ]; do\n"
            "  sleep 0.1; n=$((n+1))\ndone\n"
            f"[ -S {shlex.quote(str(self.munge_socket))} ] || {{ echo 'munged did not start'; exit 1; }}\n"
            f"{_shell(slurmctld)} &\n"
            f"{_shell(slurmd)} &\n"
            "wait\n"
        )
        env = dict(os.environ, SLURM_CONF=conf)
        return self.spawn(["/bin/sh", "-c", script], env, base, [base])

    def wait_ready(self, state: PidState) -> str:
        return self._wait(state, SLURM_START_TIMEOUT_S, self.probe)

    def log_paths(self, state: PidState) -> list[Path]:
        base = self.layout.slurm_dir
        return [self.layout.launcher_log(self.name), base / "slurmctld.log", base / "slurmd.log"]

    def stop(self) -> None:
        state = read_state(self.layout, self.name)
        if state is not None and state.alive():
            self.cancel_jobs()
        super().stop()
        if state is not None:
            kill_stray_steps(self.layout.slurm_dir)

    def cancel_jobs(self) -> None:
        """Cancel every job and wait for them to end: slurmstepd and the job's processes live in sessions
        of their own, outside the daemons' process group."""
        listing = self._slurm("squeue", "--noheader", "--format=%i")
        ids = listing.stdout.split() if listing is not None and listing.returncode == 0 else []
        if not ids:
            return
        log(f"slurm: cancelling {len(ids)} job(s)")
        self._slurm("scancel", "--full", *ids)
        deadline = time.monotonic() + SLURM_DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            listing = self._slurm("squeue", "--noheader", "--format=%i %T")
            if listing is None or listing.returncode != 0:
                return
            states = {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()}
            if not states & SLURM_LIVE_STATES:
                return
            time.sleep(0.25)
        log(f"slurm: jobs still running after {SLURM_DRAIN_TIMEOUT_S:.0f} s; killing their steps")


def _shell(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in cmd)


def kill_stray_steps(slurm_dir: Path) -> None:
    """SIGKILL the sessions of slurmstepd processes that hold a file of this cluster's runtime directory open
    (its slurmd log: jobs that outlived their daemons), and nothing else."""
    prefix = str(slurm_dir) + os.sep
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            targets = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if not any(target.startswith(prefix) for target in targets):
            continue
        session = os.getsid(int(entry.name))
        log(f"slurm: killing stray slurmstepd {entry.name} and its job's session {session}")
        with contextlib.suppress(OSError):
            os.kill(int(entry.name), signal.SIGKILL)
        _kill_session(session)


def _kill_session(session: int) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == session:
                    os.kill(int(entry.name), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ CLI


def servers(layout: Layout, only: Sequence[str] | None, record: Path | None = None) -> list[Server]:
    chosen = only or SERVERS
    table: dict[str, Server] = {
        "mongodb": MongoDBServer(layout, record),
        "elasticsearch": ElasticsearchServer(layout, record),
        "docker": DockerServer(layout, record),
        "registry": RegistryServer(layout, record),
        "s3": S3Server(layout, record),
        "slurm": SlurmServer(layout, record),
    }
    return [table[name] for name in SERVERS if name in chosen]


@contextlib.contextmanager
def run_lock(layout: Layout) -> Iterator[None]:
    """One start/stop at a time per cache (concurrent `scripts/test` runs would both launch a server)."""
    layout.cache.mkdir(parents=True, exist_ok=True)
    with (layout.cache / ".lock").open("a") as handle:
        if not _try_lock(handle.fileno()):
            log(f"waiting for another scripts/test-servers on {layout.cache}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


BROWSER = "browser"
BROWSER_BINARIES = {"chromium": "chromium", "chromedriver": "chromium-driver"}  # binary -> Debian package


def ensure_browser() -> None:
    """Debian's chromium and chromium-driver for the web catalog's browser tests (tests/stack/test_web_*),
    installed with apt-get when missing: no browser is downloaded at test time."""
    missing = sorted({pkg for binary, pkg in BROWSER_BINARIES.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SetupError(
            f"{', '.join(missing)} missing; install Debian's chromium and chromium-driver packages"
        )
    log(f"browser: installing {' '.join(missing)} with apt-get (first run only)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked(["apt-get", "update", "-qq"], "apt-get update", env=env)
    run_checked(["apt-get", "install", "-y", "-qq", *missing], "installing chromium", env=env)


def cmd_start(layout: Layout, only: Sequence[str] | None, record: Path | None) -> int:
    failed: list[str] = []
    if only is None or BROWSER in only:
        try:
            ensure_browser()
        except SetupError as exc:
            log(f"{BROWSER}: ERROR: {exc}")
            failed.append(BROWSER)
    for server in servers(layout, only, record):
        try:
            server.start()
        except SetupError as exc:
            log(f"{server.name}: ERROR: {exc}")
            failed.append(server.name)
    if failed:
        log(f"could not start: {', '.join(failed)}")
        return 1
    return 0


def cmd_stop(layout: Layout, only: Sequence[str] | None) -> int:
    for server in servers(layout, only):
        server.stop()
    with contextlib.suppress(OSError):
        layout.run.rmdir()  # only if empty
    return 0


def cmd_status(layout: Layout) -> int:
    up = [server.status() for server in servers(layout, None)]
    return 0 if all(up) else 3


def cmd_env(layout: Layout) -> int:
    print(f"export DLHUB_TEST_MONGODB_URL={layout.mongodb_url}")
    print(f"export DLHUB_TEST_ELASTICSEARCH_URL={layout.es_url}")
    print(f"export DLHUB_TEST_DOCKER_URL={layout.docker_url}")
    print(f"export DLHUB_TEST_DOCKER_TLS_URL={layout.docker_tls_url}")
    print(f"export DLHUB_TEST_DOCKER_TLS_CERT_DIR={layout.docker_tls_dir / 'client'}")
    print(f"export DLHUB_TEST_DOCKER_BASE_IMAGE={DOCKER_BASE_IMAGE}")
    print(f"export DLHUB_TEST_CONTAINER_REGISTRY={layout.registry_address}")
    print(f"export DLHUB_TEST_DOCKER_COMPOSE={layout.compose_bin}")
    print(f"export DLHUB_TEST_COMPOSE_PYTHON_IMAGE={COMPOSE_PYTHON_IMAGE}")
    print(f"export DLHUB_TEST_S3_URL={layout.s3_url}")
    print(f"export DLHUB_TEST_SLURM_CONF={layout.slurm_conf}")
    print(f"export DLHUB_TEST_SLURM_PARTITION={SLURM_PARTITION}")
    return 0


def parse_only(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SERVERS) - {BROWSER})
    if unknown:
        raise SetupError(
            f"unknown server(s) {', '.join(unknown)}; choose from {', '.join((*SERVERS, BROWSER))}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/test-servers",
        description="Real MongoDB-wire, Elasticsearch, Docker, registry, S3 and Slurm servers for the tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the servers that are not already answering")
    start.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="mongodb, elasticsearch, docker, registry, s3 or slurm (repeatable)",
    )
    start.add_argument("--record", type=Path, metavar="FILE", help="append the names of the servers started")
    stop = sub.add_parser("stop", help="stop the servers this tooling started and remove their runtime dirs")
    stop.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="mongodb, elasticsearch, docker, registry, s3 or slurm (repeatable)",
    )
    sub.add_parser("status", help="show each server and whether it answers (exit 3 if one is down)")
    sub.add_parser("env", help='print export lines for the test URLs (eval "$(scripts/test-servers env)")')
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: a server this call is still starting is stopped again.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        layout = Layout.from_env()
        if args.command == "start":
            only = parse_only(args.only)
            with run_lock(layout):
                return cmd_start(layout, only, args.record)
        if args.command == "stop":
            only = parse_only(args.only)
            with run_lock(layout):
                return cmd_stop(layout, only)
        if args.command == "status":
            return cmd_status(layout)
        return cmd_env(layout)
    except SetupError as exc:
        log(f"ERROR: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
