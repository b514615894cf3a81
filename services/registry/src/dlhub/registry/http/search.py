"""``GET /search`` (forwarded to the search service with the caller's identities) and the admins'
``POST /search/reindex``."""

from __future__ import annotations

from aiohttp import web
from msgspec import UNSET

from dlhub.common.errors import BrokerUnavailable, Forbidden, error_class
from dlhub.common.ids import SEARCH_QUERY_TOPIC
from dlhub.common.logging import get_logger
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import SearchQuery, decode_payload
from dlhub.common.payloads import SearchResults as FoundResults
from dlhub.registry.http.contract import FacetCount, SearchHit, SearchQueryParams, SearchResults
from dlhub.registry.http.keys import AUTH, BUS, CODEC, SERVABLES, SETTINGS
from dlhub.registry.http.query import epoch_seconds, page_size, parse_query, shape
from dlhub.registry.http.request import caller_of
from dlhub.registry.http.response import json_response

log = get_logger(__name__)

QUERY_METHOD = "query"
SEARCH_TIMEOUT_S = 30.0


def _search_query(request: web.Request, params: SearchQueryParams, identities: list[str]) -> SearchQuery:
    def optional(value: str | object) -> str | None:
        return value if isinstance(value, str) and value else None

    return SearchQuery(
        q=params.q,
        owner=optional(params.owner),
        name=optional(params.name),
        domain=optional(params.domain),
        author=optional(params.author),
        doi=optional(params.doi),
        model_type=optional(params.model_type),
        servable_type=optional(params.servable_type),
        trained_on=optional(params.trained_on),
        tested_on=optional(params.tested_on),
        input_type=optional(params.input_type),
        input_item_type=optional(params.input_item_type),
        input_shape=shape("input_shape", optional(params.input_shape)),
        output_type=optional(params.output_type),
        output_item_type=optional(params.output_item_type),
        output_shape=shape("output_shape", optional(params.output_shape)),
        identities=identities,
        limit=page_size(request, params.limit),
        offset=params.offset,
        published_from_s=epoch_seconds("published_from", optional(params.published_from)),
        published_to_s=epoch_seconds("published_to", optional(params.published_to), end_of_day=True),
        facets=params.facets,
        sort=params.sort,
        order=None if params.order is UNSET else params.order,
        kind=None if params.kind is UNSET else params.kind,
    )


def _answer(results: FoundResults) -> SearchResults:
    hits = [
        SearchHit(
            owner=hit.document.owner,
            name=hit.document.name,
            version=hit.document.version,
            shorthand_name=f"{hit.document.owner}/{hit.document.name}",
            title=hit.document.title,
            description=hit.document.description,
            authors=hit.document.authors,
            domains=hit.document.domains,
            model_type=hit.document.model_type,
            servable_type=hit.document.servable_type,
            doi=hit.document.doi,
            related_identifiers=hit.document.related_identifiers,
            score=hit.score,
            kind=hit.document.kind or "servable",
            columns=hit.document.columns,
            trained_on=hit.document.trained_on,
            tested_on=hit.document.tested_on,
        )
        for hit in results.hits
    ]
    facets = {
        facet: [FacetCount(value=c.value, count=c.count) for c in counts]
        for facet, counts in results.facets.items()
    }
    return SearchResults(
        total=results.total, limit=results.limit, offset=results.offset, hits=hits, facets=facets
    )


async def search(request: web.Request) -> web.Response:
    """GET /search: forward a SearchQuery (with the caller's identities) to the search service."""
    caller = await caller_of(request)
    query = _search_query(request, parse_query(request, SearchQueryParams), list(caller.identities))
    result = await request.app[BUS].call(
        [RouteStep(topic=SEARCH_QUERY_TOPIC, method=QUERY_METHOD)],
        request.app[CODEC].encode_value(query),
        timeout_s=SEARCH_TIMEOUT_S,
        require_handler=True,  # search down: a 503 now, not a wait until the deadline
    )
    if not result.ok:
        if result.error is None:
            raise BrokerUnavailable("the search service failed without an error description")
        raise error_class(result.error.code)(result.error.message)
    return json_response(_answer(decode_payload(result.output, FoundResults)))


async def reindex_search(request: web.Request) -> web.Response:
    """POST /search/reindex (admins only): rebuild the search index from the store without downtime."""
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    if user not in request.app[SETTINGS].registry.admin_users:
        raise Forbidden(f"{user} is not an administrator (registry.admin_users)")
    outcome = await request.app[SERVABLES].rebuild_search_index()
    log.info("search index rebuilt", user=user, documents=outcome.documents, index=outcome.index)
    return json_response(outcome)
