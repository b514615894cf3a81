"""``dlhub login`` / ``logout`` / ``whoami`` and the SDK's token refresh, against a Globus registry.

Globus cannot be reached from here: globus-sdk's own testing responses (``globus_sdk._testing``, on the
``responses`` library) stand in for Globus Auth and Groups. They intercept ``requests`` in this process, so
the CLI runs in-process (click's ``CliRunner``, in a thread: it blocks) and the registry is the real
application served by aiohttp over a real socket in the test's event loop; its introspections of the CLI's
tokens are answered by the same stand-ins. The CLI and SDK talk to the registry with httpx, which
``responses`` does not touch: that traffic is real HTTP. Everything else is real: the CLI, the SDK,
globus-sdk's native-app flow (PKCE, authorize URL, token exchange, refresh, revocation), the registry and its
Globus provider.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner, Result
from globus_sdk._testing import RegisteredResponse, load_response
from globus_sdk._testing.data.auth.oauth2_exchange_code_for_tokens import RESPONSES as TOKENS
from globus_sdk._testing.data.auth.oauth2_get_dependent_tokens import RESPONSES as DEPENDENT_TOKENS
from globus_sdk._testing.data.auth.oauth2_token_introspect import RESPONSES as INTROSPECT

from dlhub.client.cli import main as cli_main
from dlhub.client.credentials import save_credentials
from dlhub.client.sdk import DLHubClient
from dlhub.common.errors import Unauthorized
from dlhub.registry.http.app import create_app

pytestmark = pytest.mark.unit

CLIENT_ID = "7d6c4c4b-2c1b-4a5e-9a0e-2d3f5b6c7d8e"  # the registry's confidential client (resource server)
NATIVE_ID = "0b4a9f8e-5d2c-4e1b-8a7f-6c5d4e3f2a1b"  # the public native-app client `dlhub login` uses
SCOPE = f"https://auth.globus.org/scopes/{CLIENT_ID}/all"
TOKEN_PATH = "/v2/oauth2/token"
INTROSPECT_PATH = "/v2/oauth2/token/introspect"
REVOKE_PATH = "/v2/oauth2/token/revoke"
USER = "kingfish_globus.org"


def introspection(**changes: Any) -> dict[str, Any]:
    """The SDK fixture's introspection body, valid now for the registry's scope unless ``changes`` say not."""
    fixture = INTROSPECT.lookup("default")
    assert isinstance(fixture, RegisteredResponse) and isinstance(fixture.json, dict)
    body: dict[str, Any] = copy.deepcopy(fixture.json)
    now = int(time.time())
    body.update(scope=f"{SCOPE} openid", exp=now + 3600, nbf=now - 10, iat=now - 10, client_id=NATIVE_ID)
    body["identity_set"] = [body["sub"]]
    body.update(changes)
    return body


def grant(grant_type: str) -> Callable[[requests.PreparedRequest], tuple[bool, str]]:
    """A ``responses`` matcher on the OAuth grant: Globus serves every grant at one token URL."""

    def match(request: requests.PreparedRequest) -> tuple[bool, str]:
        form = urllib.parse.parse_qs(str(request.body))
        return form.get("grant_type") == [grant_type], f"not a {grant_type} grant"

    return match


def serve(path: str, body: Any, status: int = 200, grant_type: str | None = None) -> None:
    match = [grant(grant_type)] if grant_type else None
    load_response(
        RegisteredResponse(service="auth", path=path, method="POST", status=status, json=body, match=match)
    )


def token_grant(access: str, refresh: str | None, expires_in_s: int = 172800) -> dict[str, Any]:
    """The SDK fixture's token response, for the registry's resource server and scope."""
    fixture = TOKENS.lookup("default")
    assert isinstance(fixture, RegisteredResponse) and isinstance(fixture.json, dict)
    body: dict[str, Any] = copy.deepcopy(fixture.json)
    body.update(access_token=access, scope=SCOPE, resource_server=CLIENT_ID, expires_in=expires_in_s)
    if refresh:
        body["refresh_token"] = refresh
    return body


def globus_requests(path: str, grant_type: str | None = None) -> list[dict[str, list[str]]]:
    """The forms POSTed to ``path`` at Globus Auth (only ``grant_type`` grants if given), oldest first."""
    forms = [
        urllib.parse.parse_qs(str(call.request.body))
        for call in responses.calls
        if urllib.parse.urlsplit(call.request.url or "").path == path
    ]
    return [form for form in forms if grant_type is None or form.get("grant_type") == [grant_type]]


@pytest.fixture
def globus() -> Iterator[None]:
    """The Globus stand-ins the registry needs for any person: dependent tokens and Groups."""
    responses.start()
    try:
        dependent = DEPENDENT_TOKENS.lookup("groups")
        assert isinstance(dependent, RegisteredResponse)
        serve(TOKEN_PATH, dependent.json, grant_type="urn:globus:auth:grant_type:dependent_token")
        load_response("groups.get_my_groups")
        yield
    finally:
        responses.stop()
        responses.reset()


@pytest.fixture
async def registry(
    globus: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient[Any, Any]]:
    """A registry with ``auth.provider = "globus"`` on a real socket; the CLI's home is ``tmp_path/home``."""
    from dlhub.common.config import load_settings

    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        bus={"broker_url": "tcp://127.0.0.1:1"},  # no broker: sign-in never reaches the bus
        auth={
            "provider": "globus",
            "globus": {
                "client_id": CLIENT_ID,
                "client_secret": "s3cret",
                "scope": SCOPE,
                "native_client_id": NATIVE_ID,
            },
        },
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    monkeypatch.setenv("DLHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DLHUB_URL", str(client.make_url("")).rstrip("/"))
    monkeypatch.delenv("DLHUB_TOKEN", raising=False)
    try:
        yield client
    finally:
        await client.close()


async def dlhub(*args: str, stdin: str | None = None) -> Result:
    """The CLI, in-process (so the Globus stand-ins answer it) but off the loop that serves the registry."""
    return await asyncio.to_thread(CliRunner().invoke, cli_main, list(args), input=stdin)


def credentials(tmp_path: Path) -> Path:
    return tmp_path / "home" / "client.json"


def save_globus_credentials(tmp_path: Path, url: str, *, expires_at_s: float) -> None:
    save_credentials(
        credentials(tmp_path),
        url,
        "old-access",
        provider="globus",
        client_id=NATIVE_ID,
        refresh_token="the-refresh",
        expires_at_s=expires_at_s,
    )


def no_traceback(result: Result) -> None:
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output


# -- dlhub login ---------------------------------------------------------------------------------------------


async def test_login_runs_the_native_app_flow_and_whoami_follows(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    serve(TOKEN_PATH, token_grant("globus-access-1", "globus-refresh-1"), grant_type="authorization_code")
    serve(INTROSPECT_PATH, introspection())
    before = time.time()
    result = await dlhub("login", "--no-browser", stdin="the-code\n")
    assert result.exit_code == 0, result.output
    assert f"as {USER}" in result.stdout
    assert "globus-access-1" not in result.output and "globus-refresh-1" not in result.output

    # The consent page: the registry's native client and scope, PKCE, and a refresh token asked for.
    url = next(word for word in result.stdout.split() if word.startswith("https://auth.globus.org/"))
    query = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}
    assert query["client_id"] == NATIVE_ID and query["scope"] == SCOPE and query["response_type"] == "code"
    assert query["access_type"] == "offline" and query["code_challenge_method"] == "S256"

    # The code is exchanged with the verifier that belongs to that challenge.
    [exchange] = globus_requests(TOKEN_PATH, "authorization_code")
    assert exchange["grant_type"] == ["authorization_code"] and exchange["code"] == ["the-code"]
    assert exchange["client_id"] == [NATIVE_ID]
    digest = hashlib.sha256(exchange["code_verifier"][0].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == query["code_challenge"]
    # The registry checked the new token before the CLI saved it.
    assert [form["token"] for form in globus_requests(INTROSPECT_PATH)] == [["globus-access-1"]]

    path = credentials(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    saved = json.loads(path.read_text())
    assert saved["token"] == "globus-access-1" and saved["refresh_token"] == "globus-refresh-1"
    assert saved["provider"] == "globus" and saved["client_id"] == NATIVE_ID
    assert before + 172800 - 5 <= saved["expires_at_s"] <= time.time() + 172800

    who = await dlhub("whoami")
    assert who.exit_code == 0, who.output
    assert who.stdout.startswith(f"{USER} (globus)")
    me = await asyncio.to_thread(lambda: DLHubClient().whoami())  # the SDK picks the credentials up
    assert me["user"] == USER and me["provider"] == "globus"


@pytest.mark.parametrize("status", [400, 401])
async def test_login_with_a_bad_code_fails_cleanly_and_saves_nothing(
    registry: TestClient[Any, Any], tmp_path: Path, status: int
) -> None:
    serve(TOKEN_PATH, {"error": "invalid_grant"}, status=status, grant_type="authorization_code")
    result = await dlhub("login", "--no-browser", stdin="expired-code\n")
    assert result.exit_code == 1
    no_traceback(result)
    assert "Globus" in result.stderr and "invalid_grant" in result.stderr, result.stderr
    assert not credentials(tmp_path).exists()
    assert globus_requests(INTROSPECT_PATH) == []  # nothing reached the registry with a token


async def test_login_with_globus_unreachable_fails_cleanly(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    # No token endpoint stand-in: ``responses`` refuses the connection, as a network without Globus would.
    result = await dlhub("login", "--no-browser", stdin="a-code\n")
    assert result.exit_code == 1
    no_traceback(result)
    assert "cannot reach Globus Auth" in result.stderr, result.stderr
    assert not credentials(tmp_path).exists()


async def test_login_refused_by_the_registry_saves_nothing(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    serve(TOKEN_PATH, token_grant("globus-access-1", "globus-refresh-1"), grant_type="authorization_code")
    serve(INTROSPECT_PATH, introspection(scope="openid"))  # Globus granted a token the registry does not take
    result = await dlhub("login", "--no-browser", stdin="the-code\n")
    assert result.exit_code == 1 and "unauthorized" in result.stderr, result.output
    no_traceback(result)
    assert not credentials(tmp_path).exists()


# -- the SDK refreshes an expired access token ---------------------------------------------------------------


async def test_sdk_refreshes_an_expired_token_and_saves_it(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = str(registry.make_url("")).rstrip("/")
    save_globus_credentials(tmp_path, url, expires_at_s=time.time() - 10)
    serve(TOKEN_PATH, token_grant("fresh-access", None, expires_in_s=3600), grant_type="refresh_token")
    serve(INTROSPECT_PATH, introspection())

    me = await asyncio.to_thread(lambda: DLHubClient().whoami())
    assert me["user"] == USER
    [refresh] = globus_requests(TOKEN_PATH, "refresh_token")
    assert refresh["grant_type"] == ["refresh_token"] and refresh["refresh_token"] == ["the-refresh"]
    assert refresh["client_id"] == [NATIVE_ID]
    # The registry saw the new token, never the expired one.
    assert [form["token"] for form in globus_requests(INTROSPECT_PATH)] == [["fresh-access"]]

    path = credentials(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["token"] == "fresh-access" and saved["url"] == url
    assert saved["refresh_token"] == "the-refresh"  # Globus sent no new one: the old one still serves
    assert time.time() + 3000 < saved["expires_at_s"] <= time.time() + 3600
    assert path.stat().st_mode & 0o777 == 0o600

    # Fresh now: the next client does not ask Globus again.
    assert (await asyncio.to_thread(lambda: DLHubClient().whoami()))["user"] == USER
    assert len(globus_requests(TOKEN_PATH, "refresh_token")) == 1


async def test_a_failed_refresh_leaves_a_clear_401(registry: TestClient[Any, Any], tmp_path: Path) -> None:
    url = str(registry.make_url("")).rstrip("/")
    save_globus_credentials(tmp_path, url, expires_at_s=time.time() - 10)
    before = credentials(tmp_path).read_text()
    serve(
        TOKEN_PATH, {"error": "invalid_grant"}, status=400, grant_type="refresh_token"
    )  # the refresh token was revoked
    serve(INTROSPECT_PATH, introspection(exp=int(time.time()) - 10))  # and the access token is expired

    with pytest.raises(Unauthorized, match="expired"):
        await asyncio.to_thread(lambda: DLHubClient().whoami())
    assert len(globus_requests(TOKEN_PATH, "refresh_token")) == 1
    assert credentials(tmp_path).read_text() == before  # nothing half-saved

    result = await dlhub("whoami")
    assert result.exit_code == 1
    no_traceback(result)
    assert "unauthorized" in result.stderr and "dlhub login" in result.stderr, result.stderr


# -- dlhub logout -------------------------------------------------------------------------------------------


async def test_logout_revokes_both_tokens_at_globus(registry: TestClient[Any, Any], tmp_path: Path) -> None:
    url = str(registry.make_url("")).rstrip("/")
    save_globus_credentials(tmp_path, url, expires_at_s=time.time() + 3600)
    load_response("auth.oauth2_revoke_token")
    result = await dlhub("logout")
    assert result.exit_code == 0, result.output
    assert f"signed out of {url}" in result.stdout and "could not" not in result.output
    revoked = globus_requests(REVOKE_PATH)
    assert sorted(form["token"][0] for form in revoked) == ["old-access", "the-refresh"]
    assert all(form["client_id"] == [NATIVE_ID] for form in revoked)
    assert json.loads(credentials(tmp_path).read_text()) == {"url": url}

    assert "anonymous" in (await dlhub("whoami")).stdout
    assert "not signed in" in (await dlhub("logout")).stdout
    assert len(globus_requests(REVOKE_PATH)) == 2  # nothing left to revoke


async def test_logout_with_globus_unreachable_still_forgets_locally(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = str(registry.make_url("")).rstrip("/")
    save_globus_credentials(tmp_path, url, expires_at_s=time.time() + 3600)
    started = time.monotonic()
    result = await dlhub("logout")  # no revoke stand-in: the connection is refused
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 5.0  # offline, logout does not sit in globus-sdk's retries
    assert f"signed out of {url}" in result.stdout
    assert "could not revoke" in result.output and "Globus" in result.output, result.output
    assert json.loads(credentials(tmp_path).read_text()) == {"url": url}
    assert "anonymous" in (await dlhub("whoami")).stdout


async def test_login_again_after_the_refresh_token_was_revoked(
    registry: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = str(registry.make_url("")).rstrip("/")
    save_globus_credentials(tmp_path, url, expires_at_s=time.time() - 10)
    serve(TOKEN_PATH, {"error": "invalid_grant"}, status=400, grant_type="refresh_token")
    serve(TOKEN_PATH, token_grant("globus-access-2", "globus-refresh-2"), grant_type="authorization_code")
    serve(INTROSPECT_PATH, introspection())
    result = await dlhub("login", "--no-browser", stdin="new-code\n")
    assert result.exit_code == 0, result.output
    assert json.loads(credentials(tmp_path).read_text())["token"] == "globus-access-2"
    # The stale credentials played no part: no refresh attempt, no introspection of the old token.
    assert globus_requests(TOKEN_PATH, "refresh_token") == []
    assert [form["token"] for form in globus_requests(INTROSPECT_PATH)] == [["globus-access-2"]]
