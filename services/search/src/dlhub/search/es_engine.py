"""Elasticsearch 8 search backend behind the ``SearchEngine`` interface (official async client).

Every read and write goes through an alias (``search.elasticsearch_index_alias``). At first start the engine
creates ``<alias>-<timestamp>`` with an explicit mapping and points the alias at it; a full reindex builds a
fresh ``<alias>-<timestamp>``, bulk-loads it, swaps the alias atomically (one ``update_aliases`` call) and
deletes the old index, so queries keep answering from the old index until the swap.

Matching mirrors the embedded SQLite engine: the free text is split into the same terms (``query_terms``)
and every term must match, as a whole word or a word prefix, in one of the text fields. Text is folded
(diacritics removed, case folded) and split into words here, in Python, exactly like the query terms, and
indexed with the ``whitespace`` analyzer; the ``fts.*`` fields carry ``index_prefixes`` so prefix matching
("iri" finds "iris") is a term lookup rather than a term-dictionary walk. Only core Elasticsearch features
are used (no analysis-common or mapper-extras plugin), so the mapping works on every distribution.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    BadRequestError,
    NotFoundError,
    TransportError,
)
from elasticsearch.helpers import BulkIndexError, async_bulk

from dlhub.common.config import SearchConfig
from dlhub.common.errors import DLHubError, InvalidMessage
from dlhub.common.links import query_link_term
from dlhub.common.logging import get_logger
from dlhub.common.payloads import SearchDocument, SearchHit, SearchQuery, SearchResults
from dlhub.search.engine import (
    FACET_SIZE,
    MAX_IDENTIFIER_CHARS,
    SearchEngine,
    check_query,
    doi_term,
    doi_terms,
    facet_counts,
    method_tokens,
    owner_principal,
    page,
    principals,
    query_terms,
    requested_facets,
    sort_order,
    type_requirements,
)

log = get_logger(__name__)

SCHEMA_VERSION: Final = 3
"""2: ``doi``, ``related_identifiers`` and the derived ``doi_terms`` (added to older indices in place).
3: ``kind``, ``columns`` (dataset previews) and the dataset links ``trained_on``/``tested_on`` (likewise);
``methods`` (stored, not indexed) and the derived nested ``method_tokens`` (added in place too)."""
MAX_RESULT_WINDOW: Final = 10_000
"""Elasticsearch's default ``index.max_result_window``: offset + limit may not go beyond it."""
BULK_CHUNK: Final = 500

FTS_WEIGHTS: Final = {
    "title": 10.0,
    "name": 8.0,
    "keywords": 5.0,
    "authors": 4.0,
    "domains": 4.0,
    "owner": 3.0,
    "model_type": 3.0,
    "description": 2.0,
}
"""Free-text fields and their boosts (the weights of the SQLite engine's bm25 columns)."""
PREFIX_BOOST_FACTOR: Final = 0.5
"""A prefix-only match weighs half a whole-word match in the same field."""
MAX_PREFIX_CHARS: Final = 256
"""Longer query words match whole words only (Elasticsearch caps prefix length at index.max_regex_length)."""

FACET_FIELDS: Final = {
    "domain": "domains.keyword",
    "model_type": "model_type.keyword",
    "servable_type": "servable_type.keyword",
    "owner": "owner.keyword",
    "kind": "kind",
}
SORT_FIELDS: Final = {"publication_date": "publication_date", "name": "name.keyword"}
_WORD_RE: Final = re.compile(r"[^\W_]+")


def fold_words(text: str) -> list[str]:
    """Words of ``text`` with diacritics removed and case folded, split like ``query_terms``."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD_RE.findall(unicodedata.normalize("NFC", stripped).casefold())


def _folded(*texts: str) -> str:
    return " ".join(word for text in texts for word in fold_words(text))


def _text_with_keyword() -> dict[str, Any]:
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


ADDED_IN_2: Final[dict[str, Any]] = {
    "doi": {"type": "keyword", "ignore_above": MAX_IDENTIFIER_CHARS},
    "related_identifiers": {"type": "keyword", "ignore_above": MAX_IDENTIFIER_CHARS},
    "doi_terms": {"type": "keyword", "ignore_above": MAX_IDENTIFIER_CHARS},
}
"""Mapping properties added by schema 2; ``open`` adds them to an index created with schema 1."""

MAX_TOKEN_CHARS: Final = 1024
ADDED_IN_3: Final[dict[str, Any]] = {
    "kind": {"type": "keyword"},
    "columns": {"type": "keyword", "ignore_above": 256},
    "trained_on": {"type": "keyword", "ignore_above": MAX_IDENTIFIER_CHARS},
    "tested_on": {"type": "keyword", "ignore_above": MAX_IDENTIFIER_CHARS},
    "methods": {"type": "object", "enabled": False},
    # nested: the type filters must all hold for one method, not each for some method
    "method_tokens": {
        "type": "nested",
        "properties": {"tokens": {"type": "keyword", "ignore_above": MAX_TOKEN_CHARS}},
    },
}
"""Mapping properties added by schema 3; ``open`` adds them to an index created with schema 1 or 2."""


def index_mapping() -> dict[str, Any]:
    """The explicit mapping: display fields with ``.keyword``, folded ``fts.*`` fields, filters, dates."""
    fts_field = {
        "type": "text",
        "analyzer": "whitespace",
        "index_prefixes": {"min_chars": 1, "max_chars": 10},
    }
    return {
        "dynamic": "strict",
        "_meta": {"dlhub_schema": SCHEMA_VERSION},
        "properties": {
            "id": {"type": "keyword"},
            **{
                field: _text_with_keyword()
                for field in (
                    "owner",
                    "name",
                    "title",
                    "description",
                    "authors",
                    "domains",
                    "keywords",
                    "model_type",
                    "servable_type",
                )
            },
            "version": {"type": "integer"},
            "status": {"type": "keyword"},
            "visible_to": {"type": "keyword"},
            "visible": {"type": "keyword"},
            "author_terms": {"type": "keyword"},
            **ADDED_IN_2,
            **ADDED_IN_3,
            "publication_date": {"type": "date", "format": "epoch_millis"},
            "publication_date_s": {"type": "double", "index": False},
            "fts": {"properties": {field: fts_field for field in FTS_WEIGHTS}},
        },
    }


def es_source(document: SearchDocument) -> dict[str, Any]:
    """The indexed body: every document field (defaults included) plus the derived search fields."""
    source: dict[str, Any] = msgspec.structs.asdict(document)
    authors: set[str] = set()
    for author in document.authors:
        full = author.casefold().strip()
        authors |= {full, *full.split()}
    source["visible"] = sorted({*document.visible_to, owner_principal(document.owner)})
    source["author_terms"] = sorted(authors)
    source["doi_terms"] = doi_terms(document)
    source["methods"] = msgspec.to_builtins(document.methods)
    source["method_tokens"] = [
        {"tokens": tokens} for tokens in map(method_tokens, document.methods) if tokens
    ]
    source["publication_date"] = round(document.publication_date_s * 1000)
    source["fts"] = {
        "title": _folded(document.title),
        "name": _folded(document.name),
        "keywords": _folded(*document.keywords),
        "authors": _folded(*document.authors),
        "domains": _folded(*document.domains),
        "owner": _folded(document.owner),
        "model_type": _folded(document.model_type),
        "description": _folded(document.description),
    }
    return source


def _document_of(source: dict[str, Any]) -> SearchDocument:
    fields = {f: source[f] for f in SearchDocument.__struct_fields__ if f in source}
    return msgspec.convert(fields, SearchDocument)


def _facet_pairs(facet: str, buckets: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for bucket in buckets:
        value = str(bucket["key"])
        counts["servable" if facet == "kind" and not value else value] += int(bucket["doc_count"])
    return list(counts.items())


def free_text_clauses(q: str) -> list[dict[str, Any]]:
    """One clause per term (all required): the term as a whole word or as a word prefix in any field."""
    clauses: list[dict[str, Any]] = []
    for term in query_terms(q):
        for word in fold_words(term):
            should: list[dict[str, Any]] = [
                {
                    "multi_match": {
                        "query": word,
                        "type": "best_fields",
                        "fields": [f"fts.{field}^{weight}" for field, weight in FTS_WEIGHTS.items()],
                    }
                }
            ]
            if len(word) <= MAX_PREFIX_CHARS:
                should += [
                    {"prefix": {f"fts.{field}": {"value": word, "boost": weight * PREFIX_BOOST_FACTOR}}}
                    for field, weight in FTS_WEIGHTS.items()
                ]
            clauses.append({"bool": {"should": should, "minimum_should_match": 1}})
    return clauses


def filter_clauses(query: SearchQuery) -> list[dict[str, Any]]:
    """Exact filters, the publication-date range and visibility, as non-scoring filter clauses."""
    filters: list[dict[str, Any]] = []
    for field, value in (
        ("owner.keyword", query.owner),
        ("name.keyword", query.name),
        ("model_type.keyword", query.model_type),
        ("servable_type.keyword", query.servable_type),
        ("domains.keyword", query.domain),
        ("author_terms", query.author.casefold() if query.author is not None else None),
        ("doi_terms", doi_term(query.doi) if query.doi is not None else None),
        ("trained_on", query_link_term(query.trained_on) if query.trained_on is not None else None),
        ("tested_on", query_link_term(query.tested_on) if query.tested_on is not None else None),
    ):
        if value is not None:
            filters.append({"term": {field: value}})
    if query.kind is not None:
        # documents of older peers have kind "" (a servable)
        filters.append({"terms": {"kind": [query.kind, ""] if query.kind == "servable" else [query.kind]}})
    bounds: dict[str, int] = {}
    if query.published_from_s is not None:
        bounds["gte"] = math.ceil(round(query.published_from_s * 1000, 3))
    if query.published_to_s is not None:
        bounds["lte"] = math.floor(round(query.published_to_s * 1000, 3))
    if bounds:
        filters.append({"range": {"publication_date": bounds}})
    groups = type_requirements(query)
    if groups:
        clauses = [{"terms": {"method_tokens.tokens": group}} for group in groups]
        filters.append({"nested": {"path": "method_tokens", "query": {"bool": {"filter": clauses}}}})
    filters.append({"terms": {"visible": principals(query)}})
    return filters


def sort_clauses(query: SearchQuery, *, has_text: bool) -> list[dict[str, Any]]:
    direction = sort_order(query)
    if query.sort == "name":
        return [{"name.keyword": direction}, {"id": "asc"}]
    if query.sort == "relevance" and has_text:
        return [{"_score": direction}, {"publication_date": direction}, {"id": "asc"}]
    return [{"publication_date": direction}, {"id": "asc"}]


def safe_url(url: str) -> str:
    """``url`` without user info, for logs and error messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(exc: ApiError) -> str:
    """The root cause Elasticsearch reported, else the error type."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            causes = error.get("root_cause") or [error]
            if isinstance(causes[0], dict) and causes[0].get("reason"):
                return f"{exc.message}: {causes[0]['reason']}"
    return str(exc.message)


@contextlib.contextmanager
def _es_errors(what: str) -> Iterator[None]:
    """Turn client errors into DLHub errors; messages carry no credentials."""
    try:
        yield
    except ApiError as exc:
        raise DLHubError(f"Elasticsearch refused to {what}: {exc.meta.status} {_reason(exc)}") from exc
    except TransportError as exc:
        raise DLHubError(f"Elasticsearch is unreachable ({what}): {exc.message}") from exc


class ElasticsearchSearchEngine(SearchEngine):
    """``SearchEngine`` over an Elasticsearch 8 index alias."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.alias = config.elasticsearch_index_alias
        self.max_page_size = config.max_page_size
        refresh = config.elasticsearch_refresh
        self._refresh: bool | str = refresh if refresh == "wait_for" else refresh == "true"
        self._es: AsyncElasticsearch | None = None
        self._reindex_lock = asyncio.Lock()
        self._building = False
        self._touched: dict[str, SearchDocument | None] = {}

    # --- plumbing ----------------------------------------------------------------------------------

    @property
    def es(self) -> AsyncElasticsearch:
        if self._es is None:
            raise DLHubError("search engine is not open")
        return self._es

    @property
    def url(self) -> str:
        return safe_url(self.config.elasticsearch_url)

    def _client(self) -> AsyncElasticsearch:
        config = self.config
        options: dict[str, Any] = {
            "request_timeout": config.elasticsearch_request_timeout_s,
            "verify_certs": config.elasticsearch_verify_certs,
        }
        if config.elasticsearch_username is not None:
            password = config.elasticsearch_password
            options["basic_auth"] = (
                config.elasticsearch_username,
                password.get_secret_value() if password is not None else "",
            )
        if config.elasticsearch_api_key is not None:
            options["api_key"] = config.elasticsearch_api_key.get_secret_value()
        if config.elasticsearch_ca_certs is not None:
            options["ca_certs"] = str(config.elasticsearch_ca_certs)
        return AsyncElasticsearch(hosts=[config.elasticsearch_url], **options)

    def _index_settings(self, *, bulk: bool = False) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "number_of_shards": self.config.elasticsearch_number_of_shards,
            "number_of_replicas": self.config.elasticsearch_number_of_replicas,
        }
        if bulk:
            settings["refresh_interval"] = "-1"
        return settings

    async def _alias_indices(self) -> list[str]:
        """The concrete indices behind the alias, or [] when the alias does not exist."""
        try:
            response = await self.es.indices.get_alias(name=self.alias)
        except NotFoundError:
            return []
        return sorted(response.body)

    async def _create_index(self, *, with_alias: bool, bulk: bool = False) -> str:
        """Create ``<alias>-<timestamp>`` with the mapping; return its name."""
        while True:
            name = f"{self.alias}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
            try:
                await self.es.indices.create(
                    index=name,
                    settings=self._index_settings(bulk=bulk),
                    mappings=index_mapping(),
                    aliases={self.alias: {}} if with_alias else None,
                )
            except BadRequestError as exc:
                if exc.error == "resource_already_exists_exception":
                    await asyncio.sleep(0.001)
                    continue
                raise
            return name

    async def _connect(self) -> list[str]:
        """Wait for the cluster (up to the start-up timeout); return the indices behind the alias."""
        deadline = time.monotonic() + self.config.elasticsearch_startup_timeout_s
        while True:
            try:
                return await self._alias_indices()
            except TransportError as exc:
                if time.monotonic() >= deadline:
                    raise DLHubError(
                        f"Elasticsearch at {self.url} is unreachable after "
                        f"{self.config.elasticsearch_startup_timeout_s:g} s: {exc.message}"
                    ) from exc
                await asyncio.sleep(0.5)
            except ApiError as exc:
                raise DLHubError(
                    f"Elasticsearch at {self.url} refused the connection check: "
                    f"{exc.meta.status} {exc.message}"
                ) from exc

    # --- interface ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._es is not None:
            return
        self._es = self._client()
        try:
            indices = await self._connect()
            with _es_errors("prepare the index"):
                if not indices:
                    indices = await self._create_first_index()
                await self._check_schema(indices)
        except BaseException:
            await self._es.close()
            self._es = None
            raise
        log.info("elasticsearch index open", url=self.url, alias=self.alias, indices=indices)

    async def _create_first_index(self) -> list[str]:
        if await self.es.indices.exists(index=self.alias):
            raise DLHubError(
                f"{self.alias!r} is a concrete Elasticsearch index, not an alias; "
                "delete it or configure another search.elasticsearch_index_alias"
            )
        created = await self._create_index(with_alias=True)
        log.info("created the search index", index=created, alias=self.alias)
        indices = await self._alias_indices()
        if len(indices) > 1:  # another search service created one at the same time: keep the oldest
            await self.es.indices.update_aliases(actions=[{"remove_index": {"index": created}}])
            indices = await self._alias_indices()
        return indices

    async def _check_schema(self, indices: list[str]) -> None:
        response = await self.es.indices.get_mapping(index=self.alias)
        for index, body in response.body.items():
            version = body.get("mappings", {}).get("_meta", {}).get("dlhub_schema")
            if version == 1:
                # The mapping is strict: add the new (optional) fields so that new documents index; the
                # documents already there lack them until a reindex.
                await self.es.indices.put_mapping(index=index, properties=ADDED_IN_2)
            if version in (1, 2):
                await self.es.indices.put_mapping(index=index, properties=ADDED_IN_3)
            if version != SCHEMA_VERSION:
                log.warning(
                    "search index has an older mapping; run `dlhub search reindex`",
                    index=index,
                    schema=version,
                    expected=SCHEMA_VERSION,
                )

    async def close(self) -> None:
        if self._es is None:
            return
        es, self._es = self._es, None
        await es.close()

    async def upsert(self, document: SearchDocument) -> None:
        if self._building:
            self._touched[document.id] = document
        with _es_errors("index a document"):
            await self.es.index(
                index=self.alias, id=document.id, document=es_source(document), refresh=self._refresh
            )

    async def delete(self, doc_id: str) -> bool:
        if self._building:
            self._touched[doc_id] = None
        with _es_errors("delete a document"):
            try:
                await self.es.delete(index=self.alias, id=doc_id, refresh=self._refresh)
            except NotFoundError:
                return False
        return True

    async def count(self) -> int:
        with _es_errors("count documents"):
            response = await self.es.count(index=self.alias)
        return int(response["count"])

    async def query(self, query: SearchQuery) -> SearchResults:
        check_query(query)
        limit, offset = page(query, self.max_page_size)
        text = free_text_clauses(query.q)
        body: dict[str, Any] = {
            "query": {"bool": {"must": text, "filter": filter_clauses(query)}},
            "track_total_hits": True,
        }
        facets = requested_facets(query)
        if facets:
            body["aggs"] = {
                facet: {
                    "terms": {
                        "field": FACET_FIELDS[facet],
                        "size": FACET_SIZE,
                        "order": [{"_count": "desc"}, {"_key": "asc"}],
                        # a kind "" (older peers) counts as a servable, folded in _facet_pairs
                        "exclude": [] if facet == "kind" else [""],
                    }
                }
                for facet in facets
            }
        size = limit if offset + limit <= MAX_RESULT_WINDOW else 0
        body.update(size=size, sort=sort_clauses(query, has_text=bool(text)))
        if size:
            body["from_"] = offset
            body["track_scores"] = bool(text)
        with _es_errors("search"):
            response = await self.es.search(index=self.alias, request_cache=True, **body)
        total = int(response["hits"]["total"]["value"])
        if limit and not size and offset < total:
            raise InvalidMessage(
                f"offset + limit may not exceed {MAX_RESULT_WINDOW} with the Elasticsearch backend",
                field="offset",
            )
        hits = [
            SearchHit(document=_document_of(hit["_source"]), score=float(hit.get("_score") or 0.0))
            for hit in response["hits"]["hits"]
        ]
        aggregations = response.body.get("aggregations", {})
        return SearchResults(
            total=total,
            hits=hits,
            limit=limit,
            offset=offset,
            facets={
                facet: facet_counts(_facet_pairs(facet, aggregations[facet]["buckets"])) for facet in facets
            },
        )

    # --- full reindex ------------------------------------------------------------------------------

    async def reindex(self, documents: Sequence[SearchDocument]) -> str:
        latest = {document.id: document for document in documents}
        new = ""
        async with self._reindex_lock:
            # From here on, upserts and deletes are also recorded, to be replayed onto the new index.
            self._building, self._touched = True, {}
            with _es_errors("reindex"):
                try:
                    old = await self._alias_indices()
                    new = await self._create_index(with_alias=False, bulk=True)
                    log.info("reindex started", index=new, documents=len(latest), previous=old)
                    await self._bulk(new, latest.values())
                    await self._replay(new)
                    await self.es.indices.put_settings(index=new, settings={"refresh_interval": None})
                    await self.es.indices.refresh(index=new)
                    actions: list[dict[str, Any]] = [
                        {"remove": {"index": index, "alias": self.alias}} for index in old
                    ]
                    actions.append({"add": {"index": new, "alias": self.alias}})
                    await self.es.indices.update_aliases(actions=actions)
                except BaseException:
                    self._building, self._touched = False, {}
                    if new:
                        with contextlib.suppress(ApiError, TransportError):
                            await self.es.indices.delete(index=new)
                    raise
                # Writes that raced with the swap may have gone to the old index: apply them to the new one.
                self._building = False
                if await self._replay(new):
                    await self.es.indices.refresh(index=new)
                for index in old:
                    with contextlib.suppress(NotFoundError):
                        await self.es.indices.delete(index=index)
        log.info("reindex finished", index=new, documents=len(latest), deleted=old)
        return new

    async def _bulk(self, index: str, documents: Iterable[SearchDocument]) -> None:
        async def actions() -> AsyncIterator[dict[str, Any]]:
            for doc in documents:
                yield {"_op_type": "index", "_index": index, "_id": doc.id, "_source": es_source(doc)}

        try:
            await async_bulk(self.es, actions(), chunk_size=BULK_CHUNK, max_retries=3, refresh=False)
        except BulkIndexError as exc:
            first = exc.errors[0] if exc.errors else {}
            raise DLHubError(f"bulk indexing failed for {len(exc.errors)} document(s): {first}") from exc

    async def _replay(self, index: str) -> int:
        """Apply upserts and deletes made during the reindex to the new index; return how many."""
        replayed = 0
        while self._touched:
            doc_id, document = self._touched.popitem()
            if document is None:
                with contextlib.suppress(NotFoundError):
                    await self.es.delete(index=index, id=doc_id)
            else:
                await self.es.index(index=index, id=doc_id, document=es_source(document))
            replayed += 1
        return replayed
