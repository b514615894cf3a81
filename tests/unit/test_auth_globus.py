"""Globus Auth as the registry's identity provider, against globus-sdk's own stand-ins for Globus.

Globus cannot be reached from here, so the Globus services are globus-sdk's testing responses
(``globus_sdk._testing``, on the ``responses`` library): they intercept the SDK's ``requests`` calls in this
process, so the provider runs in-process — as a component, and inside the real registry application served by
aiohttp over a real socket (the REST tests). Everything else is real: globus-sdk itself (request building,
response parsing, dependent tokens, Groups), the provider, the SQLite store, the application and its
middleware. Bodies are the SDK fixtures' own, with ``active``/``exp``/``nbf``/``scope``/``identity_set`` set
per case (the stock introspection fixture carries a 2024 expiry and no identity set).
"""

from __future__ import annotations

import copy
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from aiohttp.test_utils import TestClient, TestServer
from globus_sdk._testing import RegisteredResponse, get_last_request, load_response
from globus_sdk._testing.data.auth.oauth2_token_introspect import RESPONSES as INTROSPECT
from globus_sdk._testing.data.groups.get_my_groups import RESPONSES as MY_GROUPS

from dlhub.common.config import GlobusAuthConfig, load_settings
from dlhub.common.errors import Unauthorized
from dlhub.registry.auth import Authenticator, LocalProvider, create_token
from dlhub.registry.auth_globus import GlobusProvider, user_name_for
from dlhub.registry.http.app import create_app
from dlhub.registry.store.sqlite import SQLiteMetadataStore

pytestmark = pytest.mark.unit

CLIENT_ID = "7d6c4c4b-2c1b-4a5e-9a0e-2d3f5b6c7d8e"
SCOPE = f"https://auth.globus.org/scopes/{CLIENT_ID}/all"
ORCID_ID = "1b3a1c1e-0000-4000-8000-000000000001"
INTROSPECT_PATH = "/v2/oauth2/token/introspect"


def introspection(**changes: Any) -> dict[str, Any]:
    """The SDK fixture's introspection body, valid now for our scope unless ``changes`` say otherwise."""
    fixture = INTROSPECT.lookup("default")
    assert isinstance(fixture, RegisteredResponse) and isinstance(fixture.json, dict)
    body: dict[str, Any] = copy.deepcopy(fixture.json)
    now = int(time.time())
    body.update(scope=f"{SCOPE} openid", exp=now + 3600, nbf=now - 10, iat=now - 10)
    body["identity_set"] = [body["sub"], ORCID_ID]
    body.update(changes)
    return body


def serve_introspection(body: dict[str, Any]) -> None:
    load_response(RegisteredResponse(service="auth", path=INTROSPECT_PATH, method="POST", json=body))


def group_ids() -> list[str]:
    fixture = MY_GROUPS.lookup("default")
    assert isinstance(fixture, RegisteredResponse) and isinstance(fixture.json, list)
    return sorted(str(g["id"]) for g in fixture.json)


@pytest.fixture
def globus() -> Iterator[None]:
    """The Globus stand-ins: dependent tokens for Groups and the caller's groups (introspection per test)."""
    responses.start()
    try:
        load_response("auth.oauth2_get_dependent_tokens", case="groups")
        load_response("groups.get_my_groups")
        yield
    finally:
        responses.stop()
        responses.reset()


def config(**changes: Any) -> GlobusAuthConfig:
    return GlobusAuthConfig(client_id=CLIENT_ID, client_secret="s3cret", scope=SCOPE, **changes)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMetadataStore]:
    store = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await store.open()
    yield store
    await store.close()


def provider(store: SQLiteMetadataStore, **changes: Any) -> GlobusProvider:
    local = LocalProvider(store, cache_ttl_s=30.0)
    return GlobusProvider(store, config(**changes), local=local, admin_users=["kingfish_globus.org"])


def introspections() -> int:
    return sum(1 for call in responses.calls if call.request.url and INTROSPECT_PATH in call.request.url)


async def test_active_token_is_a_person_with_linked_identities_and_groups(
    globus: None, store: SQLiteMetadataStore
) -> None:
    body = introspection()
    serve_introspection(body)
    auth = Authenticator(provider=provider(store))
    caller = await auth.authenticate("Bearer globus-access-token")
    assert caller.user == "kingfish_globus.org" and caller.provider == "globus" and caller.admin
    assert f"identity:{body['sub']}" in caller.identities and f"identity:{ORCID_ID}" in caller.identities
    assert f"urn:globus:auth:identity:{ORCID_ID}" in caller.identities
    assert sorted(caller.groups) == group_ids()
    # The introspection asked for the identity set, with the registry's client credentials.
    introspect = next(c.request for c in responses.calls if INTROSPECT_PATH in (c.request.url or ""))
    form = urllib.parse.parse_qs(str(introspect.body))
    assert form["include"] == ["identity_set"] and form["token"] == ["globus-access-token"]
    assert str(introspect.headers["Authorization"]).startswith("Basic ")
    last = get_last_request()
    assert last is not None and last.headers["Authorization"] == "Bearer groupsToken"  # the dependent token

    # Cached: the next request costs no Globus call.
    calls = len(responses.calls)
    assert (await auth.authenticate("Bearer globus-access-token")).user == caller.user
    assert len(responses.calls) == calls


async def test_a_linked_identity_signs_in_as_the_same_person(
    globus: None, store: SQLiteMetadataStore
) -> None:
    serve_introspection(introspection())
    first = await Authenticator(provider=provider(store)).authenticate("Bearer token-one")
    responses.reset()
    load_response("auth.oauth2_get_dependent_tokens", case="groups")
    load_response("groups.get_my_groups")
    # Signed in with the ORCID identity this time: another subject and username, the same identity set.
    serve_introspection(introspection(sub=ORCID_ID, username="0000-0002-1825-0097@orcid.org"))
    second = await Authenticator(provider=provider(store)).authenticate("Bearer token-two")
    assert second.user == first.user == "kingfish_globus.org"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"active": False}, "inactive"),
        (
            {"exp": -60},
            "expired",
        ),  # times relative to the test's run (collection can be many minutes earlier)
        ({"nbf": 600}, "not yet valid"),
        ({"scope": "openid profile email"}, "scope"),
    ],
)
async def test_rejected_tokens(
    globus: None, store: SQLiteMetadataStore, changes: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    serve_introspection(
        introspection(**{k: now + v if k in ("exp", "nbf") else v for k, v in changes.items()})
    )
    auth = Authenticator(provider=provider(store))
    with pytest.raises(Unauthorized, match=reason):
        await auth.authenticate("Bearer bad-token")
    # A rejected token is remembered briefly: a client retrying it does not cause more introspections.
    with pytest.raises(Unauthorized, match=reason):
        await auth.authenticate("Bearer bad-token")
    assert introspections() == 1


async def test_the_stock_fixture_token_is_expired(globus: None, store: SQLiteMetadataStore) -> None:
    load_response("auth.oauth2_token_introspect")  # exp in 2024, and not our scope
    with pytest.raises(Unauthorized):
        await Authenticator(provider=provider(store)).authenticate("Bearer old")


async def test_local_tokens_work_alongside(globus: None, store: SQLiteMetadataStore) -> None:
    token = await create_token(store, "robot")
    caller = await Authenticator(provider=provider(store)).authenticate(f"Bearer {token}")
    assert caller.user == "robot" and caller.provider == "local" and introspections() == 0


def test_user_names() -> None:
    assert user_name_for("alice@uchicago.edu", "x") == "alice_uchicago.edu"
    assert user_name_for("", "abc") == "globus-abc"
    with pytest.raises(ValueError):
        GlobusProvider(None, GlobusAuthConfig(scope=SCOPE), local=None)  # type: ignore[arg-type]


# -- through the REST API: the registry application served over a real socket ------------------------------


@pytest.fixture
async def registry(globus: None, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        bus={"broker_url": "tcp://127.0.0.1:1"},  # no broker: these requests never reach the bus
        auth={
            "provider": "globus",
            "globus": {"client_id": CLIENT_ID, "client_secret": "s3cret", "scope": SCOPE},
        },
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_rest_whoami_with_a_globus_token(registry: TestClient[Any, Any]) -> None:
    serve_introspection(introspection())
    reply = await registry.get("/api/v1/whoami", headers={"Authorization": "Bearer good"})
    assert reply.status == 200
    me = await reply.json()
    assert me["user"] == "kingfish_globus.org" and me["provider"] == "globus"
    assert sorted(me["groups"]) == group_ids() and me["token"].startswith("…")
    info = await (await registry.get("/api/v1/auth")).json()
    base = "https://auth.globus.org"  # the default auth.globus.auth_url: the page signs in there
    assert info == {
        "provider": "globus",
        "native_client_id": "",
        "scope": SCOPE,
        "authorize_url": f"{base}/v2/oauth2/authorize",
        "token_url": f"{base}/v2/oauth2/token",
    }


@pytest.mark.parametrize(
    "changes",
    [{"active": False}, {"exp": int(time.time()) - 60}, {"scope": "openid"}],
    ids=["inactive", "expired", "wrong-scope"],
)
async def test_rest_bad_globus_tokens_get_401(
    registry: TestClient[Any, Any], changes: dict[str, Any]
) -> None:
    serve_introspection(introspection(**changes))
    for path in ("/api/v1/whoami", "/api/v1/servables", "/api/v1/servables/a/b/run"):
        method = registry.post if path.endswith("/run") else registry.get
        reply = await method(path, headers={"Authorization": "Bearer bad"})
        assert reply.status == 401, path
        assert (await reply.json())["error"]["type"] == "unauthorized"


async def test_rest_globus_unreachable_is_503(registry: TestClient[Any, Any]) -> None:
    load_response(
        RegisteredResponse(
            service="auth", path=INTROSPECT_PATH, method="POST", status=500, json={"errors": []}
        )
    )
    reply = await registry.get("/api/v1/whoami", headers={"Authorization": "Bearer any"})
    assert reply.status == 503 and (await reply.json())["error"]["type"] == "auth_unavailable"
    assert globus_sdk.__version__.startswith("3.")
