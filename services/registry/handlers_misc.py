"""Handlers for health, tasks, search and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from libs.common.errors import BrokerUnavailable, DLHubError, NotFound, error_class
from libs.common.ids import SEARCH_QUERY_TOPIC
from libs.common.messages import RouteStep
from libs.common.payloads import SearchQuery, SearchResults, decode_payload
from services.registry.errors import error_response
from services.registry.handlers_servables import caller_of
from services.registry.http_utils import int_query, json_response, raw_json_response, str_query
from services.registry.keys import BUS, CODEC, SETTINGS, TASKS
from services.registry.openapi import openapi_json
from services.registry.tasks import task_view

QUERY_METHOD = "query"
HEALTH_TIMEOUT_S = 2.0
SEARCH_TIMEOUT_S = 30.0


async def health(request: web.Request) -> web.Response:
    """GET /health: the broker's handler table, or 503 when the broker does not answer."""
    try:
        stats = await request.app[BUS].stats(timeout_s=HEALTH_TIMEOUT_S)
    except (DLHubError, NotImplementedError, OSError) as exc:
        error = exc if isinstance(exc, DLHubError) else BrokerUnavailable("the broker is unreachable")
        return error_response(503, {**error.to_dict(), "type": BrokerUnavailable.code})
    return json_response(
        {
            "status": "ok",
            "broker": {
                "handlers": [
                    {
                        "handler_id": h.handler_id,
                        "kind": h.kind,
                        "topics": h.topics,
                        "capacity": h.capacity,
                        "inflight": h.inflight,
                    }
                    for h in stats.handlers
                ],
                "queued": stats.queued,
                "inflight": stats.inflight,
            },
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return raw_json_response(openapi_json())


async def get_task(request: web.Request) -> web.Response:
    """GET /tasks/{task_id}: 404 when unknown, expired, or submitted by someone else."""
    caller = await caller_of(request)
    task_id = request.match_info["task_id"]
    task = await request.app[TASKS].get(task_id)
    if task is None or (task.submitter is not None and task.submitter != caller.user):
        raise NotFound(f"task {task_id} not found")
    return json_response(task_view(task))


async def search(request: web.Request) -> web.Response:
    """GET /search: forward a SearchQuery (with the caller's identities) to the search service."""
    caller = await caller_of(request)
    settings = request.app[SETTINGS].search
    query = SearchQuery(
        q=request.query.get("q", ""),
        owner=str_query(request, "owner"),
        name=str_query(request, "name"),
        domain=str_query(request, "domain"),
        author=str_query(request, "author"),
        model_type=str_query(request, "model_type"),
        servable_type=str_query(request, "servable_type"),
        identities=list(caller.identities),
        limit=int_query(
            request, "limit", default=settings.default_page_size, minimum=1, maximum=settings.max_page_size
        ),
        offset=int_query(request, "offset", default=0, minimum=0, maximum=2**31),
    )
    codec = request.app[CODEC]
    result = await request.app[BUS].call(
        [RouteStep(topic=SEARCH_QUERY_TOPIC, method=QUERY_METHOD)],
        codec.encode_value(query),
        timeout_s=SEARCH_TIMEOUT_S,
    )
    if not result.ok:
        if result.error is None:
            raise BrokerUnavailable("the search service failed without an error description")
        raise error_class(result.error.code)(result.error.message)
    results = decode_payload(result.output, SearchResults)
    return json_response(
        {
            "total": results.total,
            "limit": results.limit,
            "offset": results.offset,
            "hits": [
                {
                    "owner": hit.document.owner,
                    "name": hit.document.name,
                    "version": hit.document.version,
                    "shorthand_name": f"{hit.document.owner}/{hit.document.name}",
                    "title": hit.document.title,
                    "description": hit.document.description,
                    "authors": hit.document.authors,
                    "domains": hit.document.domains,
                    "model_type": hit.document.model_type,
                    "servable_type": hit.document.servable_type,
                    "score": hit.score,
                }
                for hit in results.hits
            ],
        }
    )
