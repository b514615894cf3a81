"""``GET /health`` (the broker's handler table) and ``GET /openapi.json``."""

from __future__ import annotations

from aiohttp import web

from dlhub.common.errors import BrokerUnavailable, DLHubError
from dlhub.registry.http.contract import BrokerStats, HandlerStats, Health
from dlhub.registry.http.errors import error_response
from dlhub.registry.http.keys import BUS
from dlhub.registry.http.openapi import openapi_json
from dlhub.registry.http.response import json_response, raw_json_response

HEALTH_TIMEOUT_S = 2.0


async def health(request: web.Request) -> web.Response:
    """GET /health: the broker's handler table, or 503 when the broker does not answer."""
    try:
        stats = await request.app[BUS].stats(timeout_s=HEALTH_TIMEOUT_S)
    except (DLHubError, NotImplementedError, OSError) as exc:
        error = exc if isinstance(exc, DLHubError) else BrokerUnavailable("the broker is unreachable")
        return error_response(503, {**error.to_dict(), "type": BrokerUnavailable.code})
    handlers = [
        HandlerStats(
            handler_id=h.handler_id, kind=h.kind, topics=h.topics, capacity=h.capacity, inflight=h.inflight
        )
        for h in stats.handlers
    ]
    broker = BrokerStats(handlers=handlers, queued=stats.queued, inflight=stats.inflight)
    return json_response(Health(status="ok", broker=broker))


async def openapi(request: web.Request) -> web.Response:
    return raw_json_response(openapi_json())
