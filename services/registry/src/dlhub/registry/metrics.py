"""The registry's Prometheus metrics: HTTP requests by route template and status, run outcomes, memo lookups.

Served on ``GET /metrics`` (Prometheus text format, outside ``/api/v1`` and not in the OpenAPI document, which
describes the JSON API only). Labels are bounded: the route is aiohttp's template
(``/api/v1/servables/{owner}/{name}/run``), never the raw path; a request that matches no route is counted
under ``route="<unmatched>"``. The labelled children are cached per (method, route, status), so that the hot
path costs one dict lookup, one counter increment and one histogram observation.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

UNMATCHED: Final = "<unmatched>"

REQUESTS = Counter(
    "dlhub_registry_requests", "HTTP requests answered by the registry", ["method", "route", "status"]
)
LATENCY = Histogram(
    "dlhub_registry_request_duration_seconds",
    "Time from the request reaching the registry's handlers to its response",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TASK_OUTCOMES = Counter(
    "dlhub_registry_task_outcomes",
    "Runs (servables and pipelines) by mode (sync/async), outcome (completed/failed) and error code",
    ["mode", "outcome", "error"],
)
MEMO_LOOKUPS = Counter("dlhub_registry_memo_lookups", "Memo lookups of deterministic runs", ["result"])


class RegistryMetrics:
    """Recording front of the metrics above; every method is a no-op when metrics are disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._outcomes: dict[tuple[str, str, str], Counter] = {}
        self._memo_hit = MEMO_LOOKUPS.labels("hit")
        self._memo_miss = MEMO_LOOKUPS.labels("miss")

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def outcome(self, mode: str, ok: bool, error: str | None = None) -> None:
        if not self.enabled:
            return
        key = (mode, "completed" if ok else "failed", "" if ok else (error or "unknown"))
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = TASK_OUTCOMES.labels(*key)
        child.inc()

    def memo(self, hit: bool) -> None:
        if self.enabled:
            (self._memo_hit if hit else self._memo_miss).inc()

    def middleware(self) -> Middleware:
        record = self.request
        clock = time.perf_counter

        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = clock()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else UNMATCHED
                record(request.method, route, status, clock() - started)

        return metrics_middleware


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: every metric of this process in the Prometheus text format."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
