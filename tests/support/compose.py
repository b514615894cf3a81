"""The compose/ stack run for real by Docker Compose on the test engine (tests/contract/test_compose_stack).

Host networking on 127.0.0.1 (compose/host-network.yml; the test engine has no bridge), the datastores of
scripts/test-servers through compose/external-datastores.yml (a database and an index alias of its own per
run), images built on the locally made base image with this machine's extra CA certificates as a build
argument (compose/Dockerfile keeps them out of the images). Images are tagged ``dlhub-test/<service>:compose``
and stay in the engine's cached data root, so a re-run rebuilds only what changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi

from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "external-datastores.yml", "host-network.yml")
DLHUB_SERVICES = ("broker", "registry", "builder", "search", "worker")
IMAGE_PREFIX = "dlhub-test"
IMAGE_TAG = "compose"
COMMAND_TIMEOUT_S = 600.0
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


KEY_NAMES = ("broker", "registry", "worker", "builder", "search", "admin")
CONTAINER_UID = 10001


def ensure_bus_keys() -> Path:
    """compose/keys as compose/README.md says to make it ("Bus keys"): every role's keypair, owned by the
    containers' user (Compose outside Swarm mounts secret files with their own owner and mode)."""
    keys = ROOT / "compose" / "keys"
    if not all((keys / f"{name}.key_secret").is_file() for name in KEY_NAMES):
        subprocess.run(
            [sys.executable, "-m", "dlhub.broker", "keys", "create", "--dir", str(keys), "--overwrite"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    for path in (keys, *keys.iterdir()):
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    return keys


def extra_ca_pem() -> str:
    """The certificates of this machine's CA bundle (``SSL_CERT_FILE``) that pip's own bundle lacks (a proxy's
    CA): the Dockerfile's BUILD_CA_PEM, small enough for a build argument."""
    bundle = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    try:
        mine = _PEM.findall(Path(bundle).read_text())
    except OSError:
        return ""
    # certifi (httpx's dependency) is the Mozilla bundle that pip in the image carries too.
    known = {"".join(pem.split()) for pem in _PEM.findall(Path(certifi.where()).read_text())}
    return "\n".join(pem for pem in mine if "".join(pem.split()) not in known)


def write_ca_overlay(path: Path) -> None:
    """An overlay giving the builder and the workers this machine's CA bundle at run time (read-only bind
    mount, never in an image): they reach the package index to build per-servable environments."""
    bundle = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt").resolve()
    service = {
        "environment": {"DLHUB_ENVIRONMENTS__CA_BUNDLE": "/run/dlhub-ca/ca.pem"},
        "volumes": [
            {"type": "bind", "source": str(bundle), "target": "/run/dlhub-ca/ca.pem", "read_only": True}
        ],
    }
    path.write_text(json.dumps({"services": {"builder": service, "worker": service}}, indent=2) + "\n")


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """A compose ``--env-file`` (quoted values: BUILD_CA_PEM spans lines), private to this user."""
    lines = []
    for key, value in values.items():
        # Single quotes are literal; a value spanning lines needs double quotes (then no escapes allowed).
        quote, forbidden = ('"', '"\\$') if "\n" in value else ("'", "'")
        if any(c in value for c in forbidden):
            raise ValueError(f"{key}: unsupported character in {value[:40]!r}")
        lines.append(f"{key}={quote}{value}{quote}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@dataclass
class ComposeProject:
    """One compose project (``-p``) on the test engine."""

    binary: str
    docker_url: str
    project: str
    env_file: Path
    log_dir: Path
    url: str
    """The registry's base URL (http://127.0.0.1:<REGISTRY_PORT>)."""
    token: str = ""
    extra_files: list[Path] = field(default_factory=list)
    """Overlays of the test's own, after COMPOSE_FILES."""
    timings: dict[str, float] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        paths = [ROOT / "compose" / name for name in COMPOSE_FILES] + self.extra_files
        files = [arg for path in paths for arg in ("-f", str(path))]
        return [self.binary, "--env-file", str(self.env_file), *files, "-p", self.project, *args]

    def run(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
        proc = self.call(*args, timeout_s=timeout_s)
        if check and proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-6000:]
            raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{output}")
        return proc.stdout

    def call(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DOCKER_HOST=self.docker_url, COMPOSE_PROGRESS="plain")
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )

    def output_bytes(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> bytes:
        """What ``docker compose ARGS`` writes to stdout, as bytes (an archive); a failure raises."""
        env = dict(os.environ, DOCKER_HOST=self.docker_url, COMPOSE_PROGRESS="plain")
        proc = subprocess.run(
            self.command(*args), capture_output=True, timeout=timeout_s, env=env, check=False
        )
        if proc.returncode != 0:
            output = proc.stderr.decode("utf-8", "replace")[-6000:]
            raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{output}")
        return proc.stdout

    def timed(self, name: str, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        began = time.monotonic()
        out = self.run(*args, timeout_s=timeout_s)
        self.timings[name] = time.monotonic() - began
        return out

    def ps(self) -> list[dict[str, Any]]:
        out = self.run("ps", "--all", "--format", "json")
        # One JSON object per line (Compose 2.21+), or one array (older).
        text = out.strip()
        if text.startswith("["):
            rows: list[dict[str, Any]] = json.loads(text)
            return rows
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_healthy(self, services: dict[str, int], timeout_s: float = 180.0) -> list[dict[str, Any]]:
        """Poll ``ps`` until each service has exactly that many running containers, all healthy."""

        def healthy() -> list[dict[str, Any]] | None:
            rows = [r for r in self.ps() if r.get("State") == "running"]
            for service, count in services.items():
                mine = [r for r in rows if r.get("Service") == service]
                if len(mine) != count or any(r.get("Health") != "healthy" for r in mine):
                    return None
            return rows

        return wait_until(healthy, timeout_s=timeout_s, interval_s=0.5, message=f"healthy {services}")

    def logs(self, *services: str) -> list[str]:
        return self.run("logs", "--no-color", "--no-log-prefix", *services).splitlines()
