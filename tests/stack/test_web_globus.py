"""Globus sign-in in the web catalog (authorization code with PKCE from the page), against a fake Globus Auth.

Globus cannot be reached from here, so the test starts a small aiohttp authorization server on 127.0.0.1
that implements what the flow and the registry use: ``/v2/oauth2/authorize`` (redirects back with a code),
``/v2/oauth2/token`` (the code exchange, checking the PKCE verifier against the challenge; the registry's
dependent-token grant) and ``/v2/oauth2/token/introspect`` (the registry's confidential client, with basic
auth). The registry is a real ``dlhub up`` stack with ``auth.provider = "globus"`` and
``auth.globus.auth_url`` pointing at the fake, so its globus-sdk client introspects the page's token over
real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from tests.support.net import free_port
from tests.support.servers import missing_test_server
from tests.support.stack import start_stack, stop_stack

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import BrowserUnavailable, chromium, open_page, shown, text_of, wait, wait_ready

CLIENT_ID = "7d6c4c4b-2c1b-4a5e-9a0e-2d3f5b6c7d8e"  # the registry's confidential client
CLIENT_SECRET = "fake-secret"
NATIVE_ID = "0b4a9f8e-5d2c-4e1b-8a7f-6c5d4e3f2a1b"  # the public client the page signs in with
SCOPE = f"https://auth.globus.org/scopes/{CLIENT_ID}/all"
SUBJECT = "ae341a98-d274-11e5-b888-dbae3a8ba545"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class FakeGlobus:
    """The authorization server's state: pending codes, issued tokens, and what it was asked."""

    url: str = ""
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    exchanges: list[dict[str, str]] = field(default_factory=list)
    introspections: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/oauth2/authorize", self.authorize)
        app.router.add_post("/v2/oauth2/token", self.token)
        app.router.add_post("/v2/oauth2/token/introspect", self.introspect)
        return app

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        if query.get("client_id") != NATIVE_ID or query.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request"}, status=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = query  # Globus would sign the person in here; the fake consents at once
        raise web.HTTPFound(f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}")

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        cors = {"Access-Control-Allow-Origin": request.headers.get("Origin", "*")}
        if form.get("grant_type") == "urn:globus:auth:grant_type:dependent_token":
            return web.json_response([])  # no Groups token: the person is in no group
        self.exchanges.append({k: str(v) for k, v in form.items()})
        pending = self.codes.pop(str(form.get("code")), None)
        if (
            pending is None
            or form.get("client_id") != NATIVE_ID
            or form.get("redirect_uri") != pending["redirect_uri"]
            or s256(str(form.get("code_verifier"))) != pending["code_challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=401, headers=cors)
        access = secrets.token_urlsafe(24)
        self.tokens.add(access)
        body = {"access_token": "other-server-token", "scope": "openid", "resource_server": "auth.globus.org",
                "expires_in": 172800, "token_type": "Bearer",
                "other_tokens": [{"access_token": access, "scope": SCOPE, "resource_server": CLIENT_ID,
                                  "expires_in": 172800, "token_type": "Bearer"}]}  # fmt: skip
        return web.json_response(body, headers=cors)

    async def introspect(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "unauthorized"}, status=401)
        self.introspections += 1
        form = await request.post()
        if str(form.get("token")) not in self.tokens:
            return web.json_response({"active": False})
        now = int(time.time())
        return web.json_response(
            {"active": True, "scope": SCOPE, "sub": SUBJECT, "username": "jane@example.org",
             "identity_set": [SUBJECT], "client_id": NATIVE_ID, "exp": now + 3600, "nbf": now - 5,
             "iat": now - 5, "iss": "https://auth.globus.org", "aud": [CLIENT_ID], "name": "Jane"}
        )  # fmt: skip


@pytest.fixture(scope="module")
def fake_globus() -> Iterator[FakeGlobus]:
    fake = FakeGlobus()
    port = free_port()
    fake.url = f"http://127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def registry(fake_globus: FakeGlobus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "DLHUB_AUTH__PROVIDER": "globus",
        "DLHUB_AUTH__GLOBUS__CLIENT_ID": CLIENT_ID,
        "DLHUB_AUTH__GLOBUS__CLIENT_SECRET": CLIENT_SECRET,
        "DLHUB_AUTH__GLOBUS__SCOPE": SCOPE,
        "DLHUB_AUTH__GLOBUS__NATIVE_CLIENT_ID": NATIVE_ID,
        "DLHUB_AUTH__GLOBUS__AUTH_URL": fake_globus.url + "/",
    }
    process, info = start_stack(tmp_path_factory.mktemp("webglobus"), workers=1, extra_env=env)
    try:
        yield str(info["url"])
    finally:
        stop_stack(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium() as driver:
            yield driver
    except BrowserUnavailable as exc:
        missing_test_server(str(exc))


def test_auth_endpoint_and_csp_name_the_authorization_server(registry: str, fake_globus: FakeGlobus) -> None:
    info: dict[str, Any] = httpx.get(f"{registry}/api/v1/auth", timeout=10).json()
    assert info == {
        "provider": "globus", "native_client_id": NATIVE_ID, "scope": SCOPE,
        "authorize_url": f"{fake_globus.url}/v2/oauth2/authorize",
        "token_url": f"{fake_globus.url}/v2/oauth2/token",
    }  # fmt: skip
    shell = httpx.get(f"{registry}/signin/callback", timeout=10)
    assert (
        shell.status_code == 200
        and "connect-src 'self' " + fake_globus.url in shell.headers["content-security-policy"]
    )


def test_sign_in_with_globus_pkce(browser: WebDriver, registry: str, fake_globus: FakeGlobus) -> None:
    open_page(browser, f"{registry}/?q=perovskite")
    shown(browser, "#globus-sign-in").click()
    wait(browser).until(lambda d: "jane_example.org" in text_of(d, "#account"))
    wait_ready(browser)
    assert browser.current_url == f"{registry}/?q=perovskite"  # back where it started, no code in the URL
    (asked,) = fake_globus.authorize_requests[-1:]
    assert asked["redirect_uri"] == f"{registry}/signin/callback" and asked["scope"] == SCOPE
    assert asked["response_type"] == "code" and len(asked["code_challenge"]) == 43
    (exchange,) = fake_globus.exchanges[-1:]
    assert exchange["grant_type"] == "authorization_code" and "client_secret" not in exchange
    assert s256(exchange["code_verifier"]) == asked["code_challenge"]
    token = browser.execute_script("return sessionStorage.getItem('dlhub.token')")
    assert token in fake_globus.tokens and fake_globus.introspections >= 1
    flow_left = browser.execute_script("return sessionStorage.getItem('dlhub.globus')")
    assert flow_left is None
    whoami = httpx.get(f"{registry}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert whoami.json()["provider"] == "globus" and whoami.json()["user"] == "jane_example.org"
    shown(browser, "#sign-out").click()
    wait(browser).until(lambda d: d.execute_script("return sessionStorage.getItem('dlhub.token')") is None)


def test_a_callback_that_did_not_start_here_is_refused(browser: WebDriver, registry: str) -> None:
    open_page(browser, f"{registry}/signin/callback?code=stolen&state=forged")
    wait(browser).until(lambda d: "state mismatch" in text_of(d, "main"))
    assert browser.execute_script("return sessionStorage.getItem('dlhub.token')") is None
