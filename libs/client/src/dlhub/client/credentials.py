"""Where the SDK and CLI find the API address and token.

``$DLHUB_HOME/client.json`` holds ``url`` and ``token`` and, after a Globus ``dlhub login``, ``provider``,
``client_id`` (the native app), ``refresh_token`` and ``expires_at_s``: an expired access token is then
refreshed (and saved) when credentials are loaded, so the SDK keeps working without a new login.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8642"


def dlhub_home() -> Path:
    return Path(os.environ.get("DLHUB_HOME", Path.home() / ".dlhub"))


def client_file() -> Path:
    return dlhub_home() / "client.json"


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str | None


def load_credentials(
    url: str | None = None, token: str | None = None, *, anonymous: bool = False
) -> Credentials:
    """Explicit arguments win, then DLHUB_URL / DLHUB_TOKEN, then ``$DLHUB_HOME/client.json``.

    ``anonymous``: the URL only, no token (and so no refresh at Globus): signing in again must not depend
    on the credentials it replaces."""
    saved: dict[str, str] = {}
    path = client_file()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    resolved_url = url or os.environ.get("DLHUB_URL") or saved.get("url") or DEFAULT_URL
    if anonymous:
        return Credentials(url=resolved_url.rstrip("/"), token=None)
    saved_token = saved.get("token")
    if not token and not os.environ.get("DLHUB_TOKEN") and saved_token and _expired(saved):
        saved_token = _refreshed(path, saved) or saved_token  # the registry answers 401 if it stays stale
    resolved_token = token or os.environ.get("DLHUB_TOKEN") or saved_token
    return Credentials(url=resolved_url.rstrip("/"), token=resolved_token or None)


def save_credentials(path: Path, url: str, token: str, **extra: Any) -> None:
    """Write a client file readable only by its owner (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token, **extra}, fh)
    tmp.replace(path)


def read_saved(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _expired(saved: dict[str, Any], margin_s: float = 60.0) -> bool:
    expires = saved.get("expires_at_s")
    return isinstance(expires, int | float) and time.time() > expires - margin_s


def _refreshed(path: Path, saved: dict[str, Any]) -> str | None:
    """A new Globus access token from the saved refresh token (saved back), or None when that fails."""
    refresh, client_id = saved.get("refresh_token"), saved.get("client_id")
    if saved.get("provider") != "globus" or not refresh or not client_id:
        return None
    try:
        import globus_sdk

        auth = globus_sdk.NativeAppAuthClient(client_id)
        # One retry, not globus-sdk's five with backoff: every client construction waits on this offline.
        with auth.transport.tune(max_retries=1):
            reply = auth.oauth2_refresh_token(refresh)
        tokens = next(iter(reply.by_resource_server.values()))
    except Exception:  # offline, revoked: keep the stale token and let the registry say 401
        return None
    token = str(tokens["access_token"])
    fields = {k: v for k, v in saved.items() if k not in ("url", "token")}
    fields["expires_at_s"] = tokens.get("expires_at_seconds")
    fields["refresh_token"] = tokens.get("refresh_token") or refresh
    save_credentials(path, str(saved.get("url") or DEFAULT_URL), token, **fields)
    return token
