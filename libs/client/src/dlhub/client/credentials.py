"""Where the SDK and CLI find the API address and token."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8642"


def dlhub_home() -> Path:
    return Path(os.environ.get("DLHUB_HOME", Path.home() / ".dlhub"))


def client_file() -> Path:
    return dlhub_home() / "client.json"


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str | None


def load_credentials(url: str | None = None, token: str | None = None) -> Credentials:
    """Explicit arguments win, then DLHUB_URL / DLHUB_TOKEN, then ``$DLHUB_HOME/client.json``."""
    saved: dict[str, str] = {}
    path = client_file()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    resolved_url = url or os.environ.get("DLHUB_URL") or saved.get("url") or DEFAULT_URL
    resolved_token = token or os.environ.get("DLHUB_TOKEN") or saved.get("token")
    return Credentials(url=resolved_url.rstrip("/"), token=resolved_token or None)


def save_credentials(path: Path, url: str, token: str) -> None:
    """Write a client file readable only by its owner (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    tmp.replace(path)
