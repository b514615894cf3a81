"""One contract for every search backend: the same documents in, the same answers out.

The ``engine`` fixture runs each test against the embedded SQLite engine and against a real Elasticsearch 8
(``elasticsearch_url`` fixture, env ``DLHUB_TEST_ELASTICSEARCH_URL``; skipped locally without one, a failure
when ``CI`` is set). Answers are checked against expectations computed here from the documents, so both
backends are held to the same ids, totals, facet counts and (for explicit sorts) orders; relevance order is
only compared where scores cannot tie.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.config import SearchConfig
from dlhub.common.errors import DLHubError, InvalidMessage
from dlhub.common.ids import SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC, SEARCH_REINDEX_TOPIC
from dlhub.common.messages import RouteStep
from dlhub.common.payloads import (
    FacetCount,
    FacetName,
    IndexRequest,
    MethodTypes,
    ReindexOutcome,
    ReindexRequest,
    SearchDocument,
    SearchQuery,
    SearchResults,
    TypeSummary,
    decode_payload,
)
from dlhub.search.engine import FACET_SIZE, SearchEngine
from dlhub.search.es_engine import ElasticsearchSearchEngine, safe_url
from dlhub.search.sqlite_engine import SqliteSearchEngine
from tests.support.net import free_port
from tests.support.polling import await_until
from tests.support.services import ServiceProcesses
from tests.unit.test_search import (
    DOCS,
    PUBLIC_IDS,
)

MAX_PAGE = 25
BACKENDS = ("sqlite", "elasticsearch")
ES_ENV = "DLHUB_TEST_ELASTICSEARCH_URL"
MODULE_ALIAS = f"dlhub-test-{uuid.uuid4().hex[:12]}"


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def es_url(request: pytest.FixtureRequest) -> str:
    """The shared ``elasticsearch_url`` fixture when conftest provides one, else env DLHUB_TEST_..."""
    try:
        url: str = request.getfixturevalue("elasticsearch_url")
        return url
    except pytest.FixtureLookupError:
        pass
    url = os.environ.get(ES_ENV, "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{ES_ENV} is not set; CI must run the search contract against Elasticsearch")
        pytest.skip(f"{ES_ENV} is not set (start one with scripts/test-servers)")
    return url


def es_config(url: str, alias: str = MODULE_ALIAS, **overrides: Any) -> SearchConfig:
    return SearchConfig(
        elasticsearch_url=url,
        elasticsearch_index_alias=alias,
        elasticsearch_startup_timeout_s=5.0,
        max_page_size=MAX_PAGE,
        **overrides,
    )


async def drop_alias_indices(engine: ElasticsearchSearchEngine) -> None:
    indices = await engine._alias_indices()
    if indices:
        await engine.es.indices.delete(index=",".join(indices))


async def open_engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> SearchEngine:
    if backend == "sqlite":
        engine: SearchEngine = SqliteSearchEngine(tmp_path / "search.sqlite3", max_page_size=MAX_PAGE)
    else:
        # refresh=true keeps the per-document upserts of the fixtures fast; the service test uses wait_for
        engine = ElasticsearchSearchEngine(
            es_config(request.getfixturevalue("es_url"), elasticsearch_refresh="true")
        )
    await engine.open()
    return engine


async def close_engine(engine: SearchEngine) -> None:
    if isinstance(engine, ElasticsearchSearchEngine):
        await drop_alias_indices(engine)
    await engine.close()


@pytest.fixture(params=BACKENDS)
async def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SearchEngine]:
    engine = await open_engine(request.param, request, tmp_path)
    try:
        yield engine
    finally:
        await close_engine(engine)


@pytest.fixture
async def engine(empty_engine: SearchEngine) -> SearchEngine:
    if isinstance(empty_engine, ElasticsearchSearchEngine):
        await empty_engine.reindex(DOCS)  # one bulk request and one refresh; upserts are tested below
    else:
        for doc in DOCS:
            await empty_engine.upsert(doc)
    return empty_engine


# --- expectations computed from the documents -------------------------------------------------------------


def visible(docs: Iterable[SearchDocument], identities: Iterable[str] = ()) -> list[SearchDocument]:
    who = {"public", *identities}
    return [d for d in docs if who & {*d.visible_to, f"user:{d.owner}"}]


def expected_facets(docs: Iterable[SearchDocument], facets: Iterable[str]) -> dict[str, list[FacetCount]]:
    docs = list(docs)
    values: dict[str, Callable[[SearchDocument], set[str]]] = {
        "domain": lambda d: set(d.domains),
        "model_type": lambda d: {d.model_type},
        "servable_type": lambda d: {d.servable_type},
        "owner": lambda d: {d.owner},
        "kind": lambda d: {d.kind or "servable"},
    }
    out = {}
    for facet in facets:
        counts = Counter(v for d in docs for v in values[facet](d) if v)
        ordered = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:FACET_SIZE]
        out[facet] = [FacetCount(value=v, count=c) for v, c in ordered]
    return out


def sorted_ids(docs: Iterable[SearchDocument], key: str, order: str) -> list[str]:
    by_id = sorted(docs, key=lambda d: d.id)
    field = {"name": lambda d: d.name, "publication_date": lambda d: d.publication_date_s}[key]
    return [d.id for d in sorted(by_id, key=field, reverse=order == "desc")]


async def ids(engine: SearchEngine, **query: Any) -> set[str]:
    results = await engine.query(SearchQuery(limit=MAX_PAGE, **query))
    assert results.total <= MAX_PAGE, "test query matched more than one page"
    assert results.total == len(results.hits)
    return {hit.document.id for hit in results.hits}


async def all_ids(engine: SearchEngine, **query: Any) -> list[str]:
    """Every hit of a query, page by page."""
    out: list[str] = []
    offset = 0
    while True:
        results = await engine.query(SearchQuery(limit=10, offset=offset, **query))
        out += [hit.document.id for hit in results.hits]
        offset += 10
        if offset >= results.total:
            assert len(out) == results.total
            return out


# --- the contract -------------------------------------------------------------------------------------


async def test_counts_and_empty_query(engine: SearchEngine) -> None:
    assert await engine.count() == 50
    results = await engine.query(SearchQuery())
    assert results.total == len(PUBLIC_IDS) == 43
    assert (results.limit, results.offset, len(results.hits)) == (20, 0, 20)
    assert [h.document.id for h in results.hits] == sorted_ids(visible(DOCS), "publication_date", "desc")[:20]
    assert results.facets == {}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("iri", {"alice/iris_rf", "bob/iris_svm"}),
        ("iris", {"alice/iris_rf", "bob/iris_svm"}),
        ("IRIS forest", {"alice/iris_rf"}),
        ("perov", {"carol/formation_energy"}),
        ("flowers", {"alice/iris_rf"}),
        ("jane", {"alice/iris_rf", "carol/formation_energy"}),
        ("mlp perov", {"carol/formation_energy"}),
        ("iris_svm", {"bob/iris_svm"}),
        ("zurich", {"carol/formation_energy"}),
        ("Müll", {"carol/formation_energy"}),
        ("Mu\u0308ller", {"carol/formation_energy"}),
        ("classif", {"alice/iris_rf", "bob/iris_svm"}),
        ("randomforest iris", {"alice/iris_rf"}),
        ("nothingmatchesthis", set()),
    ],
)
async def test_free_text_with_prefix_matching(engine: SearchEngine, q: str, expected: set[str]) -> None:
    assert await ids(engine, q=q) == expected


async def test_title_hits_rank_first(engine: SearchEngine) -> None:
    results = await engine.query(SearchQuery(q="iris"))
    assert [hit.document.id for hit in results.hits] == ["alice/iris_rf", "bob/iris_svm"]
    assert results.hits[0].score > results.hits[1].score > 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"owner": "erin", "identities": ["user:erin"]}, {"erin/own_only"}),
        ({"name": "iris_svm"}, {"bob/iris_svm"}),
        ({"name": "IRIS_SVM"}, set()),
        ({"domain": "chemistry", "q": "formation"}, {"carol/formation_energy"}),
        ({"author": "jane doe"}, {"alice/iris_rf", "carol/formation_energy"}),
        ({"author": "ANA MÜLLER"}, {"carol/formation_energy"}),
        ({"author": "Doe"}, {"alice/iris_rf", "carol/formation_energy"}),
        ({"author": "Jan"}, set()),
        ({"model_type": "SVC", "q": "iris"}, {"bob/iris_svm"}),
        ({"servable_type": "Keras Model", "q": "perovskites"}, {"carol/formation_energy"}),
        ({"q": "iris", "owner": "alice"}, {"alice/iris_rf"}),
        ({"q": "iris", "domain": "materials"}, set()),
    ],
)
async def test_each_filter(engine: SearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(engine, **query) == expected


@pytest.mark.parametrize("field", ["owner", "domain", "model_type", "servable_type"])
async def test_filters_over_the_whole_corpus(engine: SearchEngine, field: str) -> None:
    values = {"owner": ("alice", "bob", "carol", "dave")}.get(field) or sorted(
        {v for d in DOCS for v in (d.domains if field == "domain" else [getattr(d, field)]) if v}
    )
    for value in values:
        filters: dict[str, Any] = {field: value}
        results = await engine.query(SearchQuery(limit=0, **filters))
        expected = [
            d
            for d in visible(DOCS)
            if (value in d.domains if field == "domain" else getattr(d, field) == value)
        ]
        assert results.total == len(expected), (field, value)


@pytest.mark.parametrize(
    ("bounds", "predicate"),
    [
        ({"published_from_s": 1_800_000_000.0}, lambda t: t >= 1_800_000_000.0),
        ({"published_to_s": 1_700_000_010.0}, lambda t: t <= 1_700_000_010.0),
        (
            {"published_from_s": 1_700_000_005.0, "published_to_s": 1_700_000_020.0},
            lambda t: 1_700_000_005.0 <= t <= 1_700_000_020.0,
        ),
        ({"published_from_s": 1_800_000_001.5, "published_to_s": 1_800_000_002.0}, lambda t: t == 1.8e9 + 2),
        ({"published_from_s": 1_900_000_000.0}, lambda t: False),
        ({"published_from_s": 1_800_000_000.0, "published_to_s": 1_700_000_000.0}, lambda t: False),
    ],
)
async def test_date_range(engine: SearchEngine, bounds: dict[str, Any], predicate: Any) -> None:
    expected = {d.id for d in visible(DOCS) if predicate(d.publication_date_s)}
    results = await engine.query(SearchQuery(limit=MAX_PAGE, **bounds))
    assert results.total == len(expected)
    if len(expected) <= MAX_PAGE:
        assert {h.document.id for h in results.hits} == expected
    with_text = await engine.query(SearchQuery(q="iris", limit=MAX_PAGE, **bounds))
    assert {h.document.id for h in with_text.hits} == expected & {"alice/iris_rf", "bob/iris_svm"}


ALL_FACETS: list[FacetName] = ["domain", "model_type", "servable_type", "owner", "kind"]


@pytest.mark.parametrize(
    ("query", "matcher"),
    [
        ({}, lambda d: True),
        ({"q": "generic"}, lambda d: d.title.startswith("Generic")),
        ({"domain": "biology"}, lambda d: "biology" in d.domains),
        ({"q": "iris"}, lambda d: "iris" in d.name),
        ({"published_from_s": 1_800_000_000.0}, lambda d: d.publication_date_s >= 1.8e9),
        ({"q": "nothingmatchesthis"}, lambda d: False),
    ],
)
@pytest.mark.parametrize("identities", [[], ["user:dave"], ["urn:globus:groups:id:1234", "user:erin"]])
async def test_facets_count_every_visible_match(
    engine: SearchEngine, query: dict[str, Any], matcher: Any, identities: list[str]
) -> None:
    results = await engine.query(SearchQuery(facets=ALL_FACETS, limit=3, identities=identities, **query))
    matching = [d for d in visible(DOCS, identities) if matcher(d)]
    assert results.total == len(matching)
    assert results.facets == expected_facets(matching, ALL_FACETS)
    assert len(results.hits) == min(3, len(matching))  # facets are over all matches, not the page


async def test_facets_subset_and_duplicates(engine: SearchEngine) -> None:
    results = await engine.query(SearchQuery(facets=["owner", "owner"], limit=0))
    assert list(results.facets) == ["owner"]
    assert results.facets["owner"] == [
        FacetCount(value="bob", count=16),
        FacetCount(value="carol", count=16),
        FacetCount(value="alice", count=11),
    ]
    assert results.facets == expected_facets(visible(DOCS), ["owner"])
    empty_values = await engine.query(SearchQuery(facets=["model_type"], identities=["user:dave"]))
    assert all(c.value for c in empty_values.facets["model_type"])  # dave/secret_iris has no model type
    with pytest.raises(InvalidMessage):
        await engine.query(SearchQuery(facets=["colour"]))  # type: ignore[list-item]


@pytest.mark.parametrize("sort", ["name", "publication_date"])
@pytest.mark.parametrize("order", ["asc", "desc", None])
async def test_sorting_and_paging(engine: SearchEngine, sort: str, order: str | None) -> None:
    effective = order or ("asc" if sort == "name" else "desc")
    got = await all_ids(engine, sort=sort, order=order)
    assert got == sorted_ids(visible(DOCS), sort, effective)
    generic = await all_ids(engine, q="generic", sort=sort, order=order)
    expected = [d for d in visible(DOCS) if d.title.startswith("Generic")]
    assert generic == sorted_ids(expected, sort, effective)


async def test_relevance_order_and_its_fallback(engine: SearchEngine) -> None:
    ascending = await engine.query(SearchQuery(q="iris", order="asc"))
    assert [h.document.id for h in ascending.hits] == ["bob/iris_svm", "alice/iris_rf"]
    no_text = await all_ids(engine, sort="relevance", order="asc")
    assert no_text == sorted_ids(visible(DOCS), "publication_date", "asc")
    with pytest.raises(InvalidMessage):
        await engine.query(SearchQuery(sort="colour"))  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        await engine.query(SearchQuery(order="up"))  # type: ignore[arg-type]


async def test_paging_totals_and_limits(engine: SearchEngine) -> None:
    seen: list[str] = []
    for offset in range(0, 50, 10):
        results = await engine.query(SearchQuery(q="generic", limit=10, offset=offset))
        assert results.total == 40 and (results.limit, results.offset) == (10, offset)
        seen += [hit.document.id for hit in results.hits]
    assert len(seen) == len(set(seen)) == 40
    beyond = await engine.query(SearchQuery(q="generic", limit=10, offset=100, facets=["owner"]))
    assert beyond.total == 40 and beyond.hits == [] and sum(c.count for c in beyond.facets["owner"]) == 40
    capped = await engine.query(SearchQuery(limit=10_000))
    assert capped.limit == MAX_PAGE and len(capped.hits) == MAX_PAGE and capped.total == 43
    count_only = await engine.query(SearchQuery(q="iris", limit=0))
    assert count_only.total == 2 and count_only.hits == []
    for bad in (SearchQuery(limit=-1), SearchQuery(offset=-5)):
        with pytest.raises(InvalidMessage):
            await engine.query(bad)


async def test_visible_to(engine: SearchEngine) -> None:
    assert await ids(engine, q="secret") == set()
    assert await ids(engine, q="secret", identities=["user:bob"]) == set()
    assert await ids(engine, q="secret", identities=["urn:globus:groups:id:1234"]) == {"dave/secret_iris"}
    assert await ids(engine, q="secret", identities=["user:dave"]) == {"dave/secret_iris"}
    assert await ids(engine, q="iris", identities=["user:bob", "urn:globus:groups:id:1234"]) == {
        "alice/iris_rf",
        "bob/iris_svm",
        "dave/secret_iris",
    }
    assert (await engine.query(SearchQuery(q="generic", identities=["user:dave"]))).total == 45
    assert await ids(engine, q="owner sees") == set()
    assert await ids(engine, q="owner sees", identities=["user:erin"]) == {"erin/own_only"}


async def test_delete(engine: SearchEngine) -> None:
    assert await engine.delete("alice/iris_rf") is True
    assert await engine.delete("alice/iris_rf") is False
    assert await engine.delete("nobody/nothing") is False
    assert await engine.count() == 49
    assert await ids(engine, q="iris") == {"bob/iris_svm"}
    assert await ids(engine, author="jane doe") == {"carol/formation_energy"}


async def test_upsert_replaces(engine: SearchEngine) -> None:
    replacement = msgspec.structs.replace(
        DOCS[45], version=3, title="Iris gradient boosting", domains=["botany"], authors=["New Author"]
    )
    await engine.upsert(replacement)
    assert await engine.count() == 50
    assert await ids(engine, q="forest") == set()
    assert await ids(engine, q="gradient") == {"alice/iris_rf"}
    assert await ids(engine, domain="biology", q="iris") == {"bob/iris_svm"}
    assert await ids(engine, domain="botany") == {"alice/iris_rf"}
    facets = (await engine.query(SearchQuery(facets=["domain"], limit=0))).facets["domain"]
    assert FacetCount(value="botany", count=1) in facets
    hit = (await engine.query(SearchQuery(name="iris_rf"))).hits[0]
    assert hit.document == replacement
    await engine.upsert(msgspec.structs.replace(replacement, visible_to=["user:zed"]))
    assert await ids(engine, q="gradient") == set()


async def test_facets_stay_exact_through_upserts_and_deletes(engine: SearchEngine) -> None:
    current = {d.id: d for d in DOCS}
    changes = [
        msgspec.structs.replace(DOCS[0], visible_to=["user:zed"], domains=["secret"]),  # public -> private
        msgspec.structs.replace(DOCS[1], visible_to=["public"], owner=DOCS[1].owner),  # -> public
        msgspec.structs.replace(DOCS[2], model_type="NewType", domains=["a", "a", "b"]),
        SearchDocument(id="zoe/new", owner="zoe", name="new", version=1, domains=["botany"]),
    ]
    for document in changes:
        await engine.upsert(document)
        current[document.id] = document
    for doc_id in (DOCS[3].id, "zoe/new"):
        assert await engine.delete(doc_id)
        del current[doc_id]
    for identities in ([], ["user:zed"], ["user:dave", "user:erin"]):
        results = await engine.query(SearchQuery(facets=ALL_FACETS, limit=0, identities=identities))
        matching = visible(current.values(), identities)
        assert results.total == len(matching), identities
        assert results.facets == expected_facets(matching, ALL_FACETS), identities


@pytest.mark.parametrize(
    "q",
    [
        '"foo AND (',
        "NEAR(iris forest",
        "iris OR",
        "AND",
        "*",
        "\\",
        "\\*",
        "^iris",
        "title:iris",
        "{title description}: iris",
        "iris*",
        "iri?",
        "/iris.*/",
        '"',
        "'",
        "-iris",
        "iris + forest",
        "((((",
        "a" * 5000,
        "x " * 1000,
        "\x00iris",
        "😀 iris",
        "ü" * 300,
        "é" * 2000 + " iris",
    ],
)
async def test_hostile_query_strings_never_raise(engine: SearchEngine, q: str) -> None:
    results = await engine.query(SearchQuery(q=q, facets=ALL_FACETS))
    assert results.total >= 0
    filtered = await engine.query(SearchQuery(q=q, owner=q, name=q, domain=q, author=q, model_type=q))
    assert filtered.total == 0


async def test_query_syntax_is_plain_words(engine: SearchEngine) -> None:
    assert await ids(engine, q='"iris" (forest') == {"alice/iris_rf"}
    assert await ids(engine, q='title:"iris"') == set()
    assert await ids(engine, q="iris*") == {"alice/iris_rf", "bob/iris_svm"}


# --- full reindex ------------------------------------------------------------------------------------------


def synthetic(n: int, prefix: str, *, start: int = 0) -> list[SearchDocument]:
    return [
        SearchDocument(
            id=f"{prefix}/model_{i}",
            owner=prefix,
            name=f"model_{i}",
            version=1,
            title=f"Generic {prefix} model {i}",
            description="Synthetic document for the reindex test.",
            authors=["Shared Person"],
            domains=["physics" if i % 2 else "chemistry"],
            model_type="MLP",
            servable_type="Keras Model",
            publication_date_s=1_700_000_000.0 + i,
        )
        for i in range(start, start + n)
    ]


async def test_reindex_replaces_the_index(engine: SearchEngine) -> None:
    keep = [d for d in DOCS if d.id != "alice/iris_rf"]
    changed = msgspec.structs.replace(DOCS[46], title="Support vector classifier for lilies")
    name = await engine.reindex([*keep[:-1], changed, keep[-1], keep[-1]])
    assert name
    assert await engine.count() == 49
    assert await ids(engine, q="iris") == {"bob/iris_svm"}  # alice/iris_rf is gone
    assert await ids(engine, q="lilies") == {"bob/iris_svm"}
    assert await ids(engine, q="owner sees", identities=["user:erin"]) == {"erin/own_only"}
    await engine.upsert(DOCS[45])
    assert await ids(engine, q="iri") == {"alice/iris_rf", "bob/iris_svm"}
    await engine.reindex([])
    assert await engine.count() == 0
    assert (await engine.query(SearchQuery())).total == 0


async def test_reindex_swaps_atomically_under_concurrent_queries(empty_engine: SearchEngine) -> None:
    engine = empty_engine
    old, new = synthetic(2000, "old"), synthetic(3000, "new")
    await engine.reindex(old)
    assert await engine.count() == 2000
    totals: list[int] = []
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def query_loop() -> None:
        while not done.is_set():
            try:
                results = await engine.query(SearchQuery(q="generic model", facets=["domain"], limit=5))
            except Exception as exc:  # the assertion below reports it
                failures.append(exc)
                continue
            totals.append(results.total)
            assert len(results.hits) == 5
            assert sum(c.count for c in results.facets["domain"]) == results.total
            await asyncio.sleep(0)  # lets the other loops and the reindex run: nothing is waited for

    loops = [asyncio.create_task(query_loop()) for _ in range(4)]
    try:
        await await_until(
            lambda: failures or len(totals) >= 8, timeout_s=10, message="queries on the old index"
        )
        await engine.reindex(new)
        swapped = len(totals)
        await await_until(
            lambda: failures or len(totals) >= swapped + 8, timeout_s=10, message="queries on the new index"
        )
    finally:
        done.set()
        await asyncio.gather(*loops)
    assert not failures, failures[:3]
    assert totals and set(totals) <= {2000, 3000}, sorted(set(totals))
    assert totals[-1] == 3000
    assert await engine.count() == 3000
    assert await ids(engine, owner="old") == set()


async def test_writes_during_a_reindex_are_kept(empty_engine: SearchEngine) -> None:
    engine = empty_engine
    await engine.reindex(synthetic(500, "old"))
    late = synthetic(1, "late")[0]
    reindex = asyncio.create_task(engine.reindex([*synthetic(1500, "new"), DOCS[45]]))
    # Under test: the writes land 10 ms into the reindex (either side of its snapshot is correct, see below).
    await asyncio.sleep(0.01)
    await engine.upsert(late)
    await engine.delete("alice/iris_rf")
    await reindex
    assert await ids(engine, owner="late") == {"late/model_0"}
    assert await engine.count() in (1501, 1502)  # the delete may land before or after the snapshot
    if isinstance(engine, ElasticsearchSearchEngine):
        assert await ids(engine, q="iris") == set()  # replayed onto the new index


# --- the two backends agree --------------------------------------------------------------------------------


AGREEMENT_QUERIES = [
    SearchQuery(),
    SearchQuery(q="generic", facets=["domain", "owner"]),
    SearchQuery(q="iri", identities=["urn:globus:groups:id:1234"]),
    SearchQuery(q="model", sort="name", order="desc", limit=MAX_PAGE),
    SearchQuery(author="shared person", sort="publication_date", order="asc", facets=["model_type"]),
    SearchQuery(domain="materials", published_from_s=1_700_000_010.0, facets=["servable_type"]),
    SearchQuery(q="dataset 1", sort="name", offset=5, limit=5),
    SearchQuery(identities=["user:dave"], sort="name", facets=ALL_FACETS, limit=MAX_PAGE, offset=20),
]


async def test_backends_agree(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    sqlite = await open_engine("sqlite", request, tmp_path)
    es = await open_engine("elasticsearch", request, tmp_path)
    try:
        for engine in (sqlite, es):
            await engine.reindex(DOCS)
        for query in AGREEMENT_QUERIES:
            a, b = await sqlite.query(query), await es.query(query)
            assert (a.total, a.limit, a.offset, a.facets) == (b.total, b.limit, b.offset, b.facets), query
            got_a = [h.document for h in a.hits]
            got_b = [h.document for h in b.hits]
            if query.sort != "relevance":
                assert got_a == got_b, query
            elif not query.q:
                assert [d.id for d in got_a] == [d.id for d in got_b], query
            else:
                assert {d.id for d in got_a} == {d.id for d in got_b}, query
    finally:
        await close_engine(sqlite)
        await close_engine(es)


# --- DOI and related identifiers ---------------------------------------------------------------------

DOI_DOCS = [
    SearchDocument(
        id="zed/doi_model",
        owner="zed",
        name="doi_model",
        version=2,
        title="A model with a DOI",
        authors=["Grace Hopper"],
        doi="10.5555/DLHub.Model_1",
        related_identifiers=["10.1000/Paper.42", "10.5281/zenodo.999", "https://example.org/data"],
        publication_date_s=1_800_000_010.0,
    ),
    SearchDocument(
        id="yan/same_paper",
        owner="yan",
        name="same_paper",
        version=1,
        title="Another model described by the same paper",
        related_identifiers=["10.1000/paper.42"],
        publication_date_s=1_800_000_011.0,
    ),
    SearchDocument(
        id="zed/doi_private",
        owner="zed",
        name="doi_private",
        version=1,
        title="Private model with a DOI",
        doi="10.5555/private.1",
        related_identifiers=["10.1000/paper.42"],
        visible_to=["user:zed"],
        publication_date_s=1_800_000_012.0,
    ),
]


@pytest.fixture
async def doi_engine(engine: SearchEngine) -> SearchEngine:
    for doc in DOI_DOCS:
        await engine.upsert(doc)
    return engine


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"doi": "10.5555/DLHub.Model_1"}, {"zed/doi_model"}),
        ({"doi": "10.5555/dlhub.model_1"}, {"zed/doi_model"}),  # DOIs are case-insensitive
        ({"doi": " 10.5555/DLHUB.MODEL_1 "}, {"zed/doi_model"}),
        ({"doi": "10.1000/PAPER.42"}, {"zed/doi_model", "yan/same_paper"}),  # related DOI
        ({"doi": "10.5281/zenodo.999"}, {"zed/doi_model"}),  # training data
        ({"doi": "https://example.org/data"}, {"zed/doi_model"}),  # any related identifier
        ({"doi": "10.1000/paper.42", "identities": ["user:zed"]}, {"zed/doi_model", "yan/same_paper",
                                                                   "zed/doi_private"}),
        ({"doi": "10.5555/private.1"}, set()),  # invisible to the caller
        ({"doi": "10.5555/private.1", "identities": ["user:zed"]}, {"zed/doi_private"}),
        ({"doi": "10.5555/dlhub"}, set()),  # exact, not a prefix
        ({"doi": "10.1000/paper.42", "owner": "yan"}, {"yan/same_paper"}),
        ({"doi": "10.1000/paper.42", "q": "another"}, {"yan/same_paper"}),
        ({"doi": "10.1000/paper.42", "author": "hopper"}, {"zed/doi_model"}),
        ({"doi": "10.9999/nothing"}, set()),
    ],
)  # fmt: skip
async def test_doi_filter(doi_engine: SearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(doi_engine, **query) == expected


async def test_doi_fields_round_trip_and_facets(doi_engine: SearchEngine) -> None:
    results = await doi_engine.query(SearchQuery(doi="10.1000/paper.42", facets=["owner"]))
    assert results.total == 2
    assert results.facets == {"owner": [FacetCount(value="yan", count=1), FacetCount(value="zed", count=1)]}
    hit = next(h for h in results.hits if h.document.id == "zed/doi_model")
    assert hit.document == DOI_DOCS[0]
    # documents without DOIs (the whole older corpus) still come back unchanged
    plain = (await doi_engine.query(SearchQuery(name="iris_rf"))).hits[0].document
    assert plain == DOCS[45] and plain.doi == "" and plain.related_identifiers == []


async def test_doi_filter_follows_upserts_and_deletes(doi_engine: SearchEngine) -> None:
    await doi_engine.upsert(
        msgspec.structs.replace(DOI_DOCS[0], doi="10.5555/renamed", related_identifiers=[])
    )
    assert await ids(doi_engine, doi="10.5555/DLHub.Model_1") == set()
    assert await ids(doi_engine, doi="10.5555/RENAMED") == {"zed/doi_model"}
    assert await ids(doi_engine, doi="10.1000/paper.42") == {"yan/same_paper"}
    assert await doi_engine.delete("yan/same_paper")
    assert await ids(doi_engine, doi="10.1000/paper.42") == set()
    await doi_engine.reindex([*DOCS, *DOI_DOCS])
    assert await ids(doi_engine, doi="10.1000/paper.42") == {"zed/doi_model", "yan/same_paper"}


async def test_overlong_identifiers_index_but_do_not_match(doi_engine: SearchEngine) -> None:
    long_id = "10.1000/" + "x" * 3000
    await doi_engine.upsert(msgspec.structs.replace(DOI_DOCS[1], related_identifiers=[long_id, "10.1/short"]))
    assert await ids(doi_engine, doi=long_id) == set()
    assert await ids(doi_engine, doi="10.1/SHORT") == {"yan/same_paper"}
    hit = (await doi_engine.query(SearchQuery(doi="10.1/short"))).hits[0]
    assert hit.document.related_identifiers == [long_id, "10.1/short"]


def test_doi_fields_are_optional_on_the_wire() -> None:
    """Older peers neither send nor know ``doi``/``related_identifiers``; both directions still decode."""

    class OldDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
        id: str
        owner: str
        name: str
        version: int

    class OldQuery(msgspec.Struct, kw_only=True, omit_defaults=True):
        q: str = ""

    old = msgspec.msgpack.encode(OldDocument(id="a/b", owner="a", name="b", version=1))
    assert decode_payload(old, SearchDocument) == SearchDocument(id="a/b", owner="a", name="b", version=1)
    new = msgspec.msgpack.encode(DOI_DOCS[0])
    assert decode_payload(new, OldDocument).id == "zed/doi_model"
    assert decode_payload(msgspec.msgpack.encode(SearchQuery(doi="10.1/x", q="y")), OldQuery).q == "y"
    assert decode_payload(msgspec.msgpack.encode(OldQuery(q="y")), SearchQuery).doi is None


async def test_es_schema_1_index_gains_the_doi_fields(es_url: str) -> None:
    """An index created before the DOI fields (strict mapping) is extended in place on open."""
    from dlhub.search import es_engine

    alias = f"{MODULE_ALIAS}-schema1"
    old_mapping = es_engine.index_mapping()
    old_mapping["_meta"] = {"dlhub_schema": 1}
    for field in es_engine.ADDED_IN_2:
        del old_mapping["properties"][field]
    engine = ElasticsearchSearchEngine(es_config(es_url, alias, elasticsearch_refresh="true"))
    engine._es = engine._client()
    await engine.es.indices.create(index=f"{alias}-old", mappings=old_mapping, aliases={alias: {}})
    await engine.es.close()
    engine._es = None
    await engine.open()
    try:
        await engine.upsert(DOI_DOCS[0])
        assert await ids(engine, doi="10.1000/paper.42") == {"zed/doi_model"}
    finally:
        await close_engine(engine)


# --- dataset links (trained_on / tested_on) and dataset columns -------------------------------------------

LINK_DOCS = [
    SearchDocument(
        id="lin/trained",
        owner="lin",
        name="trained",
        version=2,
        title="A model trained on the iris data",
        trained_on=["alice/iris", "alice/iris@1"],
        tested_on=["10.5281/zenodo.77"],
        publication_date_s=1_800_000_020.0,
    ),
    SearchDocument(
        id="lin/retrained",
        owner="lin",
        name="retrained",
        version=1,
        title="Retrained on the newer iris data",
        trained_on=["alice/iris", "alice/iris@2", "10.5281/zenodo.77"],
        publication_date_s=1_800_000_021.0,
    ),
    SearchDocument(
        id="lin/private",
        owner="lin",
        name="private",
        version=1,
        title="Private model trained on the iris data",
        trained_on=["alice/iris", "alice/iris@1"],
        visible_to=["user:lin"],
        publication_date_s=1_800_000_022.0,
    ),
    SearchDocument(
        id="alice/iris",
        owner="alice",
        name="iris",
        version=2,
        title="Iris data",
        kind="dataset",
        columns=["sepal_length", "species"],
        publication_date_s=1_800_000_023.0,
    ),
]


@pytest.fixture
async def link_engine(engine: SearchEngine) -> SearchEngine:
    for doc in LINK_DOCS:
        await engine.upsert(doc)
    return engine


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"trained_on": "alice/iris"}, {"lin/trained", "lin/retrained"}),
        ({"trained_on": "alice/iris@1"}, {"lin/trained"}),
        ({"trained_on": "alice/iris@02"}, {"lin/retrained"}),
        ({"trained_on": "alice/iris", "identities": ["user:lin"]}, {"lin/trained", "lin/retrained",
                                                                    "lin/private"}),
        ({"trained_on": "alice/IRIS"}, set()),  # names are exact
        ({"trained_on": "alice/ir"}, set()),  # not a prefix
        ({"trained_on": "10.5281/ZENODO.77"}, {"lin/retrained"}),  # DOIs in any case
        ({"tested_on": "https://doi.org/10.5281/zenodo.77"}, {"lin/trained"}),
        ({"tested_on": "doi:10.5281/Zenodo.77"}, {"lin/trained"}),
        ({"tested_on": "alice/iris"}, set()),
        ({"trained_on": "alice/iris", "tested_on": "10.5281/zenodo.77"}, {"lin/trained"}),
        ({"trained_on": "alice/iris", "q": "newer"}, {"lin/retrained"}),
        ({"trained_on": "alice/iris", "owner": "zed"}, set()),
    ],
)  # fmt: skip
async def test_link_filters(link_engine: SearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(link_engine, **query) == expected


async def test_link_filters_count_facets_and_round_trip(link_engine: SearchEngine) -> None:
    results = await link_engine.query(SearchQuery(trained_on="alice/iris", facets=["owner"]))
    assert results.total == 2 and results.facets == {"owner": [FacetCount(value="lin", count=2)]}
    hit = next(h for h in results.hits if h.document.id == "lin/trained")
    assert hit.document == LINK_DOCS[0]
    dataset = (await link_engine.query(SearchQuery(name="iris", owner="alice"))).hits[0].document
    assert (
        dataset == LINK_DOCS[3]
        and dataset.kind == "dataset"
        and dataset.columns == ["sepal_length", "species"]
    )


async def test_link_filters_follow_upserts_and_reindex(link_engine: SearchEngine) -> None:
    await link_engine.upsert(msgspec.structs.replace(LINK_DOCS[0], trained_on=["bob/other", "bob/other@3"]))
    assert await ids(link_engine, trained_on="alice/iris") == {"lin/retrained"}
    assert await ids(link_engine, trained_on="bob/other@3") == {"lin/trained"}
    assert await link_engine.delete("lin/retrained")
    assert await ids(link_engine, trained_on="alice/iris") == set()
    await link_engine.reindex([*DOCS, *LINK_DOCS])
    assert await ids(link_engine, trained_on="alice/iris") == {"lin/trained", "lin/retrained"}


# --- kinds: servables, pipelines and datasets ------------------------------------------------------------

KIND_DOCS = [
    *LINK_DOCS,  # three servables of the older kind "" and a dataset
    SearchDocument(id="lin/flow", owner="lin", name="flow", version=1, title="A pipeline", kind="pipeline"),
    SearchDocument(id="lin/model", owner="lin", name="model", version=1, title="A model", kind="servable"),
    SearchDocument(
        id="lin/secret_data", owner="lin", name="secret_data", version=1, title="Secret iris data",
        kind="dataset", visible_to=["user:lin"],
    ),
]  # fmt: skip


@pytest.fixture
async def kind_engine(engine: SearchEngine) -> SearchEngine:
    for doc in KIND_DOCS:
        await engine.upsert(doc)
    return engine


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"kind": "dataset"}, {"alice/iris"}),
        ({"kind": "dataset", "identities": ["user:lin"]}, {"alice/iris", "lin/secret_data"}),
        ({"kind": "pipeline"}, {"lin/flow"}),
        ({"kind": "servable", "owner": "lin"}, {"lin/trained", "lin/retrained", "lin/model"}),  # "" too
        ({"kind": "dataset", "q": "iris"}, {"alice/iris"}),
        ({"kind": "servable", "q": "iris", "owner": "lin"}, {"lin/trained", "lin/retrained"}),
        ({"kind": "dataset", "owner": "lin"}, set()),
    ],
)
async def test_kind_filter(kind_engine: SearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(kind_engine, **query) == expected


@pytest.mark.parametrize("query", [{}, {"q": "iris"}, {"owner": "lin"}])
@pytest.mark.parametrize("identities", [[], ["user:lin"]])
async def test_kind_facet_counts_every_visible_match(
    empty_engine: SearchEngine, query: dict[str, Any], identities: list[str]
) -> None:
    for doc in KIND_DOCS:
        await empty_engine.upsert(doc)
    results = await empty_engine.query(SearchQuery(facets=["kind"], identities=identities, **query))
    matching = {hit.document.id for hit in results.hits}
    docs = [d for d in visible(KIND_DOCS, identities) if d.id in matching]
    assert results.total == len(docs) > 0
    assert results.facets == expected_facets(docs, ["kind"])
    narrowed = await empty_engine.query(
        SearchQuery(facets=["kind"], kind="dataset", identities=identities, **query)
    )
    assert [c.value for c in narrowed.facets["kind"]] in (["dataset"], [])
    with pytest.raises(InvalidMessage):
        await empty_engine.query(SearchQuery(kind="model"))  # type: ignore[arg-type]


async def test_es_schema_2_index_gains_the_link_fields(es_url: str) -> None:
    """An index created before the link fields (strict mapping) is extended in place on open."""
    from dlhub.search import es_engine

    alias = f"{MODULE_ALIAS}-schema2"
    old_mapping = es_engine.index_mapping()
    old_mapping["_meta"] = {"dlhub_schema": 2}
    for field in es_engine.ADDED_IN_3:
        del old_mapping["properties"][field]
    engine = ElasticsearchSearchEngine(es_config(es_url, alias, elasticsearch_refresh="true"))
    engine._es = engine._client()
    await engine.es.indices.create(index=f"{alias}-old", mappings=old_mapping, aliases={alias: {}})
    await engine.es.close()
    engine._es = None
    await engine.open()
    try:
        await engine.upsert(LINK_DOCS[0])
        await engine.upsert(LINK_DOCS[3])
        assert await ids(engine, trained_on="alice/iris@1") == {"lin/trained"}
    finally:
        await close_engine(engine)


# --- argument types: what a servable accepts and returns -------------------------------------------------


def ndarray(shape: list[int | None] | None, *items: str) -> TypeSummary:
    return TypeSummary(type="ndarray", item_types=list(items), shape=shape)


def typed(name: str, *methods: MethodTypes, **fields: Any) -> SearchDocument:
    return SearchDocument(
        id=f"ty/{name}",
        owner="ty",
        name=name,
        version=1,
        title=fields.pop("title", f"Typed model {name}"),
        methods=list(methods),
        publication_date_s=1_900_000_000.0 + len(name),
        **fields,
    )


def run(accepts: TypeSummary | None, returns: TypeSummary | None = None, method: str = "run") -> MethodTypes:
    return MethodTypes(method=method, input=accepts, output=returns)


TYPE_DOCS = [
    typed("rows4", run(ndarray([None, 4], "float"), ndarray([None], "float")), title="Iris rows classifier"),
    typed("fixed10", run(ndarray([10, 4], "float"), TypeSummary(type="list", item_types=["integer"]))),
    typed("anymatrix", run(ndarray([None, None], "number"), ndarray([None, None], "float"))),
    typed("image", run(ndarray([None, 224, 224, 3], "integer"), TypeSummary(type="dict"))),
    typed(
        "text",
        run(TypeSummary(type="string"), TypeSummary(type="list", item_types=["string"])),
        run(TypeSummary(type="list", item_types=["string"]), ndarray([None, 768], "float"), "embed"),
    ),
    typed("nested", run(TypeSummary(type="list", item_types=["ndarray", "float"]), None)),
    typed("noshape", run(ndarray(None, "float"), TypeSummary(type="python object"))),
    typed("obj", run(TypeSummary(type="python object"), TypeSummary(type="python object"))),
    typed("private", run(ndarray([None, 4], "float")), visible_to=["user:zed"]),
]
NDARRAY_INPUTS = {"ty/rows4", "ty/fixed10", "ty/anymatrix", "ty/image", "ty/noshape"}


@pytest.fixture
async def typed_engine(engine: SearchEngine) -> SearchEngine:
    """The plain corpus (50 documents without types, as indexed before types existed) plus TYPE_DOCS."""
    for doc in TYPE_DOCS:
        await engine.upsert(doc)
    return engine


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"input_type": "ndarray"}, NDARRAY_INPUTS),
        ({"input_type": " NDArray "}, NDARRAY_INPUTS),  # type names are trimmed and case-folded
        ({"input_type": "ndarr"}, set()),  # exact, not a prefix
        ({"input_type": "ndarray", "identities": ["user:zed"]}, NDARRAY_INPUTS | {"ty/private"}),
        # a known size is accepted by that size or by a declared null; the number of dimensions must agree
        ({"input_shape": [10, 4]}, {"ty/rows4", "ty/fixed10", "ty/anymatrix"}),
        ({"input_shape": [10, 5]}, {"ty/anymatrix"}),
        ({"input_shape": [4]}, set()),
        ({"input_shape": [10, 4, 1]}, set()),
        ({"input_shape": []}, set()),
        # a null in the query (rows that vary in number) is accepted only by a declared null
        ({"input_shape": [None, 4]}, {"ty/rows4", "ty/anymatrix"}),
        ({"input_shape": [None, None]}, {"ty/anymatrix"}),
        ({"input_shape": [None, 4], "identities": ["user:zed"]}, {"ty/rows4", "ty/anymatrix", "ty/private"}),
        ({"input_shape": [8, 224, 224, 3]}, {"ty/image"}),
        ({"input_shape": [8, 224, 225, 3]}, set()),
        ({"input_shape": [8, 224, 224]}, set()),
        ({"input_type": "ndarray", "input_item_type": "float", "input_shape": [None, 4]}, {"ty/rows4"}),
        ({"input_item_type": "FLOAT"}, {"ty/rows4", "ty/fixed10", "ty/nested", "ty/noshape"}),
        ({"input_item_type": "ndarray"}, {"ty/nested"}),  # any level of the item-type chain
        ({"input_type": "list", "input_item_type": "float"}, {"ty/nested"}),
        ({"input_type": "python object"}, {"ty/obj"}),  # "any" is a type of its own, not a wildcard
        ({"output_type": "ndarray"}, {"ty/rows4", "ty/anymatrix", "ty/text"}),
        ({"output_type": "list", "output_item_type": "integer"}, {"ty/fixed10"}),
        ({"output_shape": [3, 768]}, {"ty/text", "ty/anymatrix"}),
        ({"output_shape": [None]}, {"ty/rows4"}),
        # input and output filters hold for one method: text takes strings to lists, lists to ndarrays
        ({"input_type": "list", "output_type": "ndarray"}, {"ty/text"}),
        ({"input_type": "string", "output_item_type": "string"}, {"ty/text"}),
        ({"input_type": "string", "output_type": "ndarray"}, set()),
        ({"input_shape": [None, 4], "output_shape": [None, 2]}, {"ty/anymatrix"}),
        # with free text and the other filters
        ({"q": "classifier", "input_shape": [None, 4]}, {"ty/rows4"}),
        ({"q": "typed", "input_type": "ndarray"}, NDARRAY_INPUTS - {"ty/rows4"}),
        ({"q": "iris", "input_type": "ndarray"}, {"ty/rows4"}),  # alice/iris_rf has no types indexed
        ({"owner": "alice", "input_type": "ndarray"}, set()),
        ({"input_type": "ndarray", "published_from_s": 1_900_000_006.0}, {"ty/fixed10", "ty/anymatrix",
                                                                          "ty/noshape"}),
    ],
)  # fmt: skip
async def test_type_filters(typed_engine: SearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(typed_engine, **query) == expected


async def test_type_filters_narrow_facets_and_round_trip(typed_engine: SearchEngine) -> None:
    results = await typed_engine.query(SearchQuery(input_shape=[None, 4], facets=["owner", "domain"]))
    assert results.total == 2
    assert results.facets == {"owner": [FacetCount(value="ty", count=2)], "domain": []}
    by_id = {hit.document.id: hit.document for hit in results.hits}
    assert by_id["ty/rows4"] == TYPE_DOCS[0] and by_id["ty/anymatrix"] == TYPE_DOCS[2]
    text = (await typed_engine.query(SearchQuery(name="text"))).hits[0].document
    assert text == TYPE_DOCS[4] and [m.method for m in text.methods] == ["run", "embed"]
    # the older corpus carries no types: it comes back unchanged and no type filter reaches it
    assert (await typed_engine.query(SearchQuery(name="iris_rf"))).hits[0].document == DOCS[45]
    assert (await typed_engine.query(SearchQuery(input_type="ndarray", limit=0))).total == len(NDARRAY_INPUTS)


async def test_type_filters_follow_upserts_deletes_and_reindex(typed_engine: SearchEngine) -> None:
    await typed_engine.upsert(
        msgspec.structs.replace(TYPE_DOCS[1], methods=[run(ndarray([None, 4], "float"))])
    )
    assert await ids(typed_engine, input_shape=[None, 4]) == {"ty/rows4", "ty/anymatrix", "ty/fixed10"}
    assert await ids(typed_engine, output_type="list", output_item_type="integer") == set()
    await typed_engine.upsert(msgspec.structs.replace(TYPE_DOCS[0], methods=[]))
    assert await ids(typed_engine, input_shape=[None, 4]) == {"ty/anymatrix", "ty/fixed10"}
    assert await typed_engine.delete("ty/anymatrix")
    assert await ids(typed_engine, input_shape=[None, 4]) == {"ty/fixed10"}
    await typed_engine.reindex([*DOCS, *TYPE_DOCS])
    assert await ids(typed_engine, input_shape=[None, 4]) == {"ty/rows4", "ty/anymatrix"}


async def test_many_dimensional_shapes(typed_engine: SearchEngine) -> None:
    """Shapes with many known sizes match as exactly as short ones (SQLite then skips its shape index)."""
    sizes: list[int | None] = list(range(1, 13))
    await typed_engine.upsert(typed("deep", run(ndarray([None, *sizes[1:]]))))
    assert await ids(typed_engine, input_shape=sizes) == {"ty/deep"}
    assert await ids(typed_engine, input_shape=[None, *sizes[1:]]) == {"ty/deep"}
    assert await ids(typed_engine, input_shape=[*sizes[:-1], 99]) == set()
    assert await ids(typed_engine, input_shape=[None, *sizes[1:-1], None]) == set()
    assert await ids(typed_engine, input_shape=sizes[:-1]) == set()


async def test_type_queries_are_checked(typed_engine: SearchEngine) -> None:
    with pytest.raises(InvalidMessage, match="input_shape"):
        await typed_engine.query(SearchQuery(input_shape=[None, -1]))
    with pytest.raises(InvalidMessage, match="output_shape"):
        await typed_engine.query(SearchQuery(output_shape=[1] * 33))
    # hostile type names are plain values, never syntax
    for name in ("*", "input.type=ndarray", "nd\x1farray", "' OR 1=1 --", "x" * 5000):
        assert await ids(typed_engine, input_type=name, input_item_type=name) == set()


def test_type_fields_are_optional_on_the_wire() -> None:
    """Older peers neither send nor know ``methods`` and the type filters; both directions still decode."""

    class OldDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
        id: str
        owner: str
        name: str
        version: int

    class OldQuery(msgspec.Struct, kw_only=True, omit_defaults=True):
        q: str = ""

    assert decode_payload(msgspec.msgpack.encode(TYPE_DOCS[0]), OldDocument).id == "ty/rows4"
    old = msgspec.msgpack.encode(OldDocument(id="a/b", owner="a", name="b", version=1))
    assert decode_payload(old, SearchDocument).methods == []
    query = SearchQuery(q="y", input_type="ndarray", input_shape=[None, 4])
    assert decode_payload(msgspec.msgpack.encode(query), OldQuery).q == "y"
    assert decode_payload(msgspec.msgpack.encode(query), SearchQuery) == query


async def test_es_schema_2_index_gains_the_type_fields(es_url: str) -> None:
    """An index created before the type fields (strict mapping) is extended in place on open; its documents
    match no type filter (and break nothing) until re-indexed."""
    from dlhub.search import es_engine

    alias = f"{MODULE_ALIAS}-schema2"
    old_mapping = es_engine.index_mapping()
    old_mapping["_meta"] = {"dlhub_schema": 2}
    for field in es_engine.ADDED_IN_3:
        del old_mapping["properties"][field]
    engine = ElasticsearchSearchEngine(es_config(es_url, alias, elasticsearch_refresh="true"))
    engine._es = engine._client()
    await engine.es.indices.create(index=f"{alias}-old", mappings=old_mapping, aliases={alias: {}})
    old_source = {
        key: value
        for key, value in es_engine.es_source(TYPE_DOCS[0]).items()
        if key not in es_engine.ADDED_IN_3
    }
    await engine.es.index(index=alias, id="ty/rows4", document=old_source, refresh=True)
    await engine.es.close()
    engine._es = None
    await engine.open()
    try:
        assert await ids(engine, input_type="ndarray") == set()
        assert await ids(engine, q="iris") == {"ty/rows4"}
        await engine.upsert(TYPE_DOCS[2])
        assert await ids(engine, input_shape=[None, 4]) == {"ty/anymatrix"}
        await engine.reindex(TYPE_DOCS)
        assert await ids(engine, input_shape=[None, 4]) == {"ty/rows4", "ty/anymatrix"}
    finally:
        await close_engine(engine)


# --- Elasticsearch specifics -------------------------------------------------------------------------


async def test_es_unreachable_is_a_clear_start_up_error() -> None:
    port = free_port()
    config = SearchConfig(
        elasticsearch_url=f"http://user:hunter2@127.0.0.1:{port}",
        elasticsearch_startup_timeout_s=0.3,
        elasticsearch_request_timeout_s=0.5,
    )
    engine = ElasticsearchSearchEngine(config)
    started = time.monotonic()
    with pytest.raises(DLHubError, match="unreachable") as caught:
        await engine.open()
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)
    with pytest.raises(DLHubError, match="not open"):
        await engine.count()


def test_es_secrets_stay_out_of_reprs() -> None:
    config = SearchConfig(
        elasticsearch_password="s3cret", elasticsearch_api_key="k3y", backend="elasticsearch"
    )
    assert "s3cret" not in repr(config) and "k3y" not in repr(config)
    assert safe_url("https://u:p@es.example:9243/x") == "https://es.example:9243/x"
    assert safe_url("http://es:9200") == "http://es:9200"


async def test_es_alias_points_at_one_timestamped_index(es_url: str) -> None:
    alias = f"{MODULE_ALIAS}-alias"
    engine = ElasticsearchSearchEngine(es_config(es_url, alias))
    await engine.open()
    try:
        (first,) = await engine._alias_indices()
        assert first.startswith(alias + "-") and first != alias
        await engine.upsert(DOCS[45])
        second = await engine.reindex(DOCS[45:])
        assert await engine._alias_indices() == [second] and second != first
        assert not await engine.es.indices.exists(index=first)
        mapping = (await engine.es.indices.get_mapping(index=alias)).body[second]["mappings"]
        assert mapping["properties"]["publication_date"]["type"] == "date"
        assert mapping["properties"]["title"]["fields"]["keyword"]["type"] == "keyword"
        assert mapping["properties"]["visible_to"]["type"] == "keyword"
        # a second engine on the same alias reuses the index
        again = ElasticsearchSearchEngine(es_config(es_url, alias))
        async with again:
            assert await again._alias_indices() == [second] and await again.count() == 5
    finally:
        await close_engine(engine)


async def test_es_refuses_a_concrete_index_named_like_the_alias(es_url: str) -> None:
    name = f"{MODULE_ALIAS}-concrete"
    engine = ElasticsearchSearchEngine(es_config(es_url, name))
    probe = ElasticsearchSearchEngine(es_config(es_url, name))
    probe._es = probe._client()
    await probe.es.indices.create(index=name)
    try:
        with pytest.raises(DLHubError, match="not an alias"):
            await engine.open()
    finally:
        await probe.es.indices.delete(index=name)
        await probe.close()


# --- the real search service with the Elasticsearch backend over the real broker ------------------------


async def test_search_service_with_elasticsearch_over_the_bus(es_url: str, tmp_path: Path) -> None:
    alias = f"{MODULE_ALIAS}-service"
    env = {
        "DLHUB_SEARCH__BACKEND": "elasticsearch",
        "DLHUB_SEARCH__ELASTICSEARCH_URL": es_url,
        "DLHUB_SEARCH__ELASTICSEARCH_INDEX_ALIAS": alias,
    }
    processes = ServiceProcesses(tmp_path, env=env)
    processes.start("broker")
    processes.start("search")
    client = BusClient(bus=processes.bus, codec=Codec())
    codec = Codec()
    await client.start()
    try:
        await processes.wait_registered(client, "search", timeout_s=60, ready="ready")
        assert "elasticsearch" in processes.log("search")
        index = [RouteStep(topic=SEARCH_INDEX_TOPIC, method="index")]
        query = [RouteStep(topic=SEARCH_QUERY_TOPIC, method="query")]
        for doc in DOCS[45:]:
            request = IndexRequest(op="upsert", id=doc.id, document=doc)
            result = await client.call(index, codec.encode_value(request), timeout_s=20)
            assert result.ok, result.error
        result = await client.call(
            query, codec.encode_value(SearchQuery(q="iri", facets=["owner"])), timeout_s=20
        )
        assert result.ok, result.error
        found = decode_payload(result.output, SearchResults)
        assert [hit.document.id for hit in found.hits] == ["alice/iris_rf", "bob/iris_svm"]
        assert found.facets == {
            "owner": [FacetCount(value="alice", count=1), FacetCount(value="bob", count=1)]
        }

        reindex = [RouteStep(topic=SEARCH_REINDEX_TOPIC, method="reindex")]
        result = await client.call(reindex, codec.encode_value(ReindexRequest(documents=DOCS)), timeout_s=60)
        assert result.ok, result.error
        outcome = decode_payload(result.output, ReindexOutcome)
        assert outcome.documents == 50 and outcome.index.startswith(alias + "-")
        result = await client.call(query, codec.encode_value(SearchQuery(limit=0)), timeout_s=20)
        assert decode_payload(result.output, SearchResults).total == 43
        bad = await client.call(query, codec.encode_value({"facets": ["colour"]}), timeout_s=20)
        assert not bad.ok and bad.error is not None and bad.error.code == "invalid_message"
    finally:
        await client.close()
        search_code = processes.stop("search")
        processes.stop("broker")
        cleanup = ElasticsearchSearchEngine(es_config(es_url, alias))
        async with cleanup:
            await drop_alias_indices(cleanup)
    assert search_code == 0, processes.log("search")
    assert "stopped" in processes.log("search")
