"""Local API tokens for embedded deployments, made by the registry's own entry point.

The CLI never imports the registry: it runs ``python -m dlhub.registry token create`` (part of the server
install), so ``dlhub-client`` installs without the server's dependencies. A token to reuse travels on the
child's stdin, never on its command line (which other users can read in the process table)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from dlhub.common.errors import DLHubError


class ServerNotInstalled(DLHubError):
    """A server-side command (``dlhub up``, local tokens) on an SDK-only install."""

    code = "server_not_installed"


def require_server(what: str) -> None:
    """Raise ServerNotInstalled unless the server distributions are importable here."""
    if importlib.util.find_spec("dlhub.registry") is None:
        raise ServerNotInstalled(
            f"{what}, which is not installed here (this is the SDK-only dlhub-client): install the full "
            "server (the `dlhub` distribution; from a checkout, `./scripts/up` does it), or use a DLHub "
            "server's URL and a token from it"
        )


def _registry_command(data_dir: Path, user: str, config_file: Path | None, reuse: bool) -> list[str]:
    require_server("local tokens are made by the registry")
    command = [sys.executable, "-m", "dlhub.registry"]
    if config_file is not None:
        command += ["--config", str(config_file)]
    command += ["token", "create", user, "--data-dir", str(data_dir)]
    return [*command, "--reuse-stdin"] if reuse else command


def _run(command: list[str], stdin: str) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise DLHubError(lines[-1] if lines else f"token creation failed (exit {done.returncode})")
    return done.stdout.strip()


def create_local_token(data_dir: Path, user: str, config_file: Path | None = None) -> str:
    """Create a token for ``user`` in the store under ``data_dir`` and return the secret."""
    return _run(_registry_command(data_dir, user, config_file, reuse=False), "")


def ensure_local_token(data_dir: Path, user: str, *, config_file: Path | None = None) -> str:
    """Reuse the token in ``<data_dir>/client.json`` if it is still valid for ``user``, else create one."""
    saved: str | None = None
    try:
        saved = json.loads((data_dir / "client.json").read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        saved = None
    return _run(_registry_command(data_dir, user, config_file, reuse=True), (saved or "") + "\n")
