"""Per-identity rate limits through the REST API: the registry application (real SQLite store, local tokens)
served by aiohttp over a real socket; the requests used (``/whoami``) never reach the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dlhub.common.config import RateLimitConfig, load_settings
from dlhub.common.errors import RateLimited
from dlhub.registry.auth import ANONYMOUS, caller_for, create_token
from dlhub.registry.http.app import create_app
from dlhub.registry.http.keys import STORE
from dlhub.registry.ratelimit import RateLimiter

pytestmark = pytest.mark.unit

BURST = 3


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        bus={"broker_url": "tcp://127.0.0.1:1"},
        registry={"admin_users": ["root"]},
        # A slow refill, so the test's own pace never refills a bucket between requests.
        auth={"rate_limit": {"enabled": True, "requests_per_s": 0.5, "burst": BURST}},
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def whoami(client: TestClient[Any, Any], token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = await client.get("/api/v1/whoami", headers=headers)
    if reply.status == 429:
        body = await reply.json()
        assert body["error"]["type"] == "rate_limited"
        assert 1 <= int(reply.headers["Retry-After"]) <= 2  # one request refills in 2 s at 0.5/s
    return reply.status


async def test_rest_rate_limits_per_identity(registry: TestClient[Any, Any]) -> None:
    store = registry.app[STORE]
    alice_token = await create_token(store, "alice")
    bob_token = await create_token(store, "bob")
    root_token = await create_token(store, "root")
    assert [await whoami(registry, alice_token) for _ in range(BURST + 1)] == [200] * BURST + [429]
    assert await whoami(registry, bob_token) == 200  # another identity has its own bucket
    assert [await whoami(registry, root_token) for _ in range(BURST + 5)] == [200] * (BURST + 5)  # admins
    # Anonymous callers share their address's bucket.
    assert [await whoami(registry, None) for _ in range(BURST + 1)] == [200] * BURST + [429]
    # Health and the OpenAPI document are not limited (load balancers and monitors poll them).
    assert (await registry.get("/api/v1/health")).status != 429


def test_bucket_refills_and_forgets_idle_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimitConfig(requests_per_s=2.0, burst=2, max_tracked=4), clock=lambda: now[0])
    alice = caller_for("alice")
    limiter.check(alice, None)
    limiter.check(alice, None)
    with pytest.raises(RateLimited) as refused:
        limiter.check(alice, None)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    now[0] += 0.5
    limiter.check(alice, None)  # one request's worth refilled
    for i in range(10):  # many identities: memory stays bounded
        limiter.check(ANONYMOUS, f"10.0.0.{i}")
    assert len(limiter._buckets) <= 4
    limiter.check(caller_for("root", admin=True), None)
