"""The registry's Prometheus metrics: HTTP requests by route template and status, run outcomes, memo lookups.

Served on ``GET /metrics`` (Prometheus text format, outside ``/api/v1`` and not in the OpenAPI document, which
describes the JSON API only). Labels are bounded: the route is aiohttp's template
(``/api/v1/servables/{owner}/{name}/run``), never the raw path; a request that matches no route is counted
under ``route="<unmatched>"``.

Requests are recorded on every response, so that path is kept to a dict lookup, a bisect and three integer
updates on a plain list (``RequestStats``): the registry is one asyncio thread, so prometheus-client's
per-sample locks buy nothing there and cost as much as the rest of a noop request's bookkeeping. A custom
collector turns the lists into the counter and histogram families when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

UNMATCHED: Final = "<unmatched>"
LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Counts(Collector):
    """A labelled counter without per-sample locks, for counts taken on the request path."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=list(self._labels))
        for key, count in list(self._counts.items()):
            family.add_metric(list(key), count)
        yield family


class RequestStats(Collector):
    """Request counts and latency histograms by (method, route, status), exported as Prometheus families.

    Each key's list holds one count per bucket of ``LATENCY_BUCKETS_S`` plus the +Inf bucket (not
    cumulative; the collector sums them), then the sum of the observed seconds.
    """

    def __init__(self) -> None:
        self._bounds = LATENCY_BUCKETS_S
        self._series: dict[tuple[str, str, int], list[float]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "dlhub_registry_requests",
            "HTTP requests answered by the registry",
            labels=["method", "route", "status"],
        )
        latency = HistogramMetricFamily(
            "dlhub_registry_request_duration_seconds",
            "Time from the request reaching the registry's handlers to its response",
            labels=["method", "route", "status"],
        )
        edges = [*(repr(b) for b in self._bounds), "+Inf"]
        for (method, route, status), series in list(self._series.items()):
            labels = [method, route, str(status)]
            cumulative, buckets = 0.0, []
            for edge, count in zip(edges, series[:-1], strict=True):
                cumulative += count
                buckets.append((edge, cumulative))
            requests.add_metric(labels, cumulative)
            latency.add_metric(labels, buckets, series[-1])
        yield requests
        yield latency


REQUESTS = RequestStats()
TASK_OUTCOMES = Counts(
    "dlhub_registry_task_outcomes",
    "Runs (servables and pipelines) by mode (sync/async), outcome (completed/failed) and error code",
    ("mode", "outcome", "error"),
)
MEMO_LOOKUPS = Counts("dlhub_registry_memo_lookups", "Memo lookups of deterministic runs", ("result",))
for _collector in (REQUESTS, TASK_OUTCOMES, MEMO_LOOKUPS):
    REGISTRY.register(_collector)
_MEMO_HIT: Final = ("hit",)
_MEMO_MISS: Final = ("miss",)


class RegistryMetrics:
    """Recording front of the metrics above; every method is a no-op when metrics are disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.requests = REQUESTS if enabled else None

    def outcome(self, mode: str, ok: bool, error: str | None = None) -> None:
        if not self.enabled:
            return
        TASK_OUTCOMES.inc((mode, "completed", "") if ok else (mode, "failed", error or "unknown"))

    def memo(self, hit: bool) -> None:
        if self.enabled:
            MEMO_LOOKUPS.inc(_MEMO_HIT if hit else _MEMO_MISS)


def route_of(request: web.Request) -> str:
    """The route template a request matched, for labels (never the raw path: that would be unbounded)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: every metric of this process in the Prometheus text format."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
