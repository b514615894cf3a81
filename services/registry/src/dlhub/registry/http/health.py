"""``GET /health`` (a summary of the broker's handlers; their table for administrators) and
``GET /openapi.json``."""

from __future__ import annotations

from aiohttp import web

from dlhub.common.errors import BrokerUnavailable, DLHubError
from dlhub.registry.clock import iso_ms, now_ms
from dlhub.registry.http.contract import BrokerStats, HandlerStats, Health, RegistryPeer
from dlhub.registry.http.errors import error_response
from dlhub.registry.http.keys import AUTH, BUS, INSTANCE_ID, SETTINGS, STORE
from dlhub.registry.http.openapi import openapi_json
from dlhub.registry.http.response import json_response, raw_json_response
from dlhub.registry.takeover import alive

HEALTH_TIMEOUT_S = 2.0


async def health(request: web.Request) -> web.Response:
    """GET /health: handler counts by kind, and the broker's handler table for an administrator
    (``registry.admin_users``); 503 when the broker does not answer."""
    # Not rate-limited (load balancers and monitors poll it), so the caller is resolved without caller_of.
    caller = await request.app[AUTH].authenticate(request.headers.get("Authorization"))
    admin = caller.user is not None and caller.user in request.app[SETTINGS].registry.admin_users
    try:
        stats = await request.app[BUS].stats(timeout_s=HEALTH_TIMEOUT_S)
    except (DLHubError, NotImplementedError, OSError) as exc:
        error = exc if isinstance(exc, DLHubError) else BrokerUnavailable("the broker is unreachable")
        return error_response(503, {**error.to_dict(), "type": BrokerUnavailable.code})
    counts: dict[str, int] = {}
    for h in stats.handlers:
        counts[h.kind] = counts.get(h.kind, 0) + 1
    broker = BrokerStats(handler_counts=counts, queued=stats.queued, inflight=stats.inflight)
    if admin:
        broker.handlers = [
            HandlerStats(
                handler_id=h.handler_id,
                kind=h.kind,
                topics=h.topics,
                capacity=h.capacity,
                inflight=h.inflight,
                draining=h.draining,
                site=h.site,
                instance_id=h.instance_id,
                executors=h.executors,
                serves=h.serves,
                devices=h.devices,
            )
            for h in stats.handlers
        ]
    reply = Health(status="ok", broker=broker)
    if admin:
        reply.registries = await _registries(request.app)
    return json_response(reply)


async def _registries(app: web.Application) -> list[RegistryPeer]:
    """Every registry that has beaten in the shared store, the longest silent last."""
    now, config, me = now_ms(), app[SETTINGS].registry, app[INSTANCE_ID]
    peers = sorted(await app[STORE].list_registries(), key=lambda p: (-p.last_seen_ms, p.instance_id))
    return [
        RegistryPeer(
            instance_id=p.instance_id,
            url=p.url,
            last_seen_at=iso_ms(p.last_seen_ms),
            alive=alive(p, config, now),
            answering=p.instance_id == me,
        )
        for p in peers
    ]


async def openapi(request: web.Request) -> web.Response:
    return raw_json_response(openapi_json())
