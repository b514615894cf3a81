"""Handlers for health, tasks, search and the OpenAPI document."""

from __future__ import annotations

from typing import cast, get_args

from aiohttp import web

from dlhub.common.errors import BrokerUnavailable, DLHubError, Forbidden, NotFound, error_class
from dlhub.common.ids import SEARCH_QUERY_TOPIC
from dlhub.common.logging import get_logger
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import (
    FacetName,
    SearchQuery,
    SearchResults,
    SortField,
    SortOrder,
    decode_payload,
)
from dlhub.registry.errors import error_response
from dlhub.registry.handlers_servables import caller_of
from dlhub.registry.http_utils import (
    choice_query,
    int_query,
    json_response,
    list_query,
    raw_json_response,
    str_query,
    time_query,
)
from dlhub.registry.keys import AUTH, BUS, CODEC, SERVABLES, SETTINGS, TASKS
from dlhub.registry.openapi import openapi_json
from dlhub.registry.tasks import task_view

log = get_logger(__name__)

FACETS: tuple[str, ...] = get_args(FacetName)
SORTS: tuple[str, ...] = get_args(SortField)
ORDERS: tuple[str, ...] = get_args(SortOrder)
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
    sort = choice_query(request, "sort", SORTS)
    order = choice_query(request, "order", ORDERS)
    query = SearchQuery(
        q=request.query.get("q", ""),
        owner=str_query(request, "owner"),
        name=str_query(request, "name"),
        domain=str_query(request, "domain"),
        author=str_query(request, "author"),
        doi=str_query(request, "doi"),
        model_type=str_query(request, "model_type"),
        servable_type=str_query(request, "servable_type"),
        identities=list(caller.identities),
        limit=int_query(
            request, "limit", default=settings.default_page_size, minimum=1, maximum=settings.max_page_size
        ),
        offset=int_query(request, "offset", default=0, minimum=0, maximum=2**31),
        published_from_s=time_query(request, "published_from"),
        published_to_s=time_query(request, "published_to", end_of_day=True),
        facets=cast(list[FacetName], list_query(request, "facets", FACETS)),
        sort=cast(SortField, sort or "relevance"),
        order=cast(SortOrder | None, order),
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
                    "doi": hit.document.doi,
                    "related_identifiers": hit.document.related_identifiers,
                    "score": hit.score,
                }
                for hit in results.hits
            ],
            "facets": {
                facet: [{"value": c.value, "count": c.count} for c in counts]
                for facet, counts in results.facets.items()
            },
        }
    )


async def reindex_search(request: web.Request) -> web.Response:
    """POST /search/reindex (admins only): rebuild the search index from the store without downtime."""
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    if user not in request.app[SETTINGS].registry.admin_users:
        raise Forbidden(f"{user} is not an administrator (registry.admin_users)")
    outcome = await request.app[SERVABLES].rebuild_search_index()
    log.info("search index rebuilt", user=user, documents=outcome.documents, index=outcome.index)
    return json_response({"documents": outcome.documents, "index": outcome.index})
