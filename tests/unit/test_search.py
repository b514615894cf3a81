"""Search: the SQLite FTS5 engine directly, the service's topic handlers, and the service over the bus."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dlhub.common.codec import Codec
from dlhub.common.errors import DLHubError, InvalidMessage
from dlhub.common.ids import SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC
from dlhub.common.messages import Dispatch
from dlhub.common.payloads import (
    FacetCount,
    FacetName,
    IndexRequest,
    MethodTypes,
    SearchDocument,
    SearchQuery,
    SearchResults,
    TypeSummary,
    decode_payload,
)
from dlhub.search.engine import query_terms
from dlhub.search.service import SearchService
from dlhub.search.sqlite_engine import SqliteSearchEngine

MAX_PAGE = 25
OWNERS = ("alice", "bob", "carol")
DOMAINS = ("materials", "biology", "chemistry", "physics")
MODEL_TYPES = ("RandomForestClassifier", "SVC", "MLP")
SERVABLE_TYPES = ("Scikit-learn estimator", "Keras Model")


def corpus() -> list[SearchDocument]:
    """45 filler documents plus 5 with known text; 5 of the fillers are private."""
    docs = []
    for i in range(45):
        owner = OWNERS[i % 3]
        docs.append(
            SearchDocument(
                id=f"{owner}/model_{i}",
                owner=owner,
                name=f"model_{i}",
                version=1 + i % 4,
                title=f"Generic model number {i}",
                description=f"A {DOMAINS[i % 4]} model trained on dataset {i}.",
                authors=[f"Author {i % 5}", "Shared Person"],
                domains=[DOMAINS[i % 4]],
                keywords=[f"kw{i % 7}"],
                model_type=MODEL_TYPES[i % 3],
                servable_type=SERVABLE_TYPES[i % 2],
                visible_to=["user:dave"] if i % 9 == 0 else ["public"],
                publication_date_s=1_700_000_000.0 + i,
            )
        )
    docs += [
        SearchDocument(
            id="alice/iris_rf",
            owner="alice",
            name="iris_rf",
            version=2,
            title="Iris random forest",
            description="Classifies iris flowers.",
            authors=["Jane Doe"],
            domains=["biology"],
            keywords=["flowers", "classification"],
            model_type="RandomForestClassifier",
            servable_type="Scikit-learn estimator",
            publication_date_s=1_800_000_000.0,
        ),
        SearchDocument(
            id="bob/iris_svm",
            owner="bob",
            name="iris_svm",
            version=1,
            title="Support vector machine",
            description="Another classifier for the iris data set.",
            authors=["John Roe"],
            domains=["biology"],
            model_type="SVC",
            servable_type="Scikit-learn estimator",
            publication_date_s=1_800_000_001.0,
        ),
        SearchDocument(
            id="carol/formation_energy",
            owner="carol",
            name="formation_energy",
            version=3,
            title="Formation energy of perovskites",
            description="Predicts formation enthalpy; Zürich group.",
            authors=["Ana Müller", "Jane Doe"],
            domains=["materials", "chemistry"],
            keywords=["DFT"],
            model_type="MLP",
            servable_type="Keras Model",
            publication_date_s=1_800_000_002.0,
        ),
        SearchDocument(
            id="dave/secret_iris",
            owner="dave",
            name="secret_iris",
            version=1,
            title="Secret iris model",
            visible_to=["urn:globus:groups:id:1234"],
            publication_date_s=1_800_000_003.0,
        ),
        SearchDocument(
            id="erin/own_only",
            owner="erin",
            name="own_only",
            version=1,
            title="Only the owner sees this",
            visible_to=[],
            publication_date_s=1_800_000_004.0,
        ),
    ]
    return docs


DOCS = corpus()
PUBLIC_IDS = {d.id for d in DOCS if "public" in d.visible_to}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[SqliteSearchEngine]:
    async with SqliteSearchEngine(tmp_path / "search.sqlite3", max_page_size=MAX_PAGE) as eng:
        for doc in DOCS:
            await eng.upsert(doc)
        yield eng


async def ids(engine: SqliteSearchEngine, **query: Any) -> set[str]:
    results = await engine.query(SearchQuery(limit=MAX_PAGE, **query))
    assert results.total <= MAX_PAGE, "test query matched more than one page"
    return {hit.document.id for hit in results.hits}


async def test_indexes_fifty_documents(engine: SqliteSearchEngine) -> None:
    assert len(DOCS) == 50
    assert await engine.count() == 50


async def test_empty_query_matches_everything_visible(engine: SqliteSearchEngine) -> None:
    results = await engine.query(SearchQuery())
    assert results.total == len(PUBLIC_IDS) == 43
    assert results.limit == 20 and results.offset == 0 and len(results.hits) == 20
    dates = [hit.document.publication_date_s for hit in results.hits]
    assert dates == sorted(dates, reverse=True)
    assert results.hits[0].document.id == "carol/formation_energy"


async def test_free_text_with_prefix_matching(engine: SqliteSearchEngine) -> None:
    assert await ids(engine, q="iri") == {"alice/iris_rf", "bob/iris_svm"}
    assert await ids(engine, q="iris") == {"alice/iris_rf", "bob/iris_svm"}
    assert await ids(engine, q="IRIS forest") == {"alice/iris_rf"}
    assert await ids(engine, q="perov") == {"carol/formation_energy"}
    assert await ids(engine, q="flowers") == {"alice/iris_rf"}  # keywords
    assert await ids(engine, q="jane") == {"alice/iris_rf", "carol/formation_energy"}  # authors
    assert await ids(engine, q="mlp perov") == {"carol/formation_energy"}  # model_type
    assert await ids(engine, q="iris_svm") == {"bob/iris_svm"}  # name, split like the index
    assert await ids(engine, q="zurich") == {"carol/formation_energy"}  # diacritics folded
    assert await ids(engine, q="Müll") == {"carol/formation_energy"}
    assert await ids(engine, q="Mu\u0308ller") == {"carol/formation_energy"}  # decomposed form
    assert await ids(engine, q="nothingmatchesthis") == set()


async def test_bm25_ranks_title_hits_first(engine: SqliteSearchEngine) -> None:
    results = await engine.query(SearchQuery(q="iris"))
    assert [hit.document.id for hit in results.hits] == ["alice/iris_rf", "bob/iris_svm"]
    assert results.hits[0].score > results.hits[1].score > 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"owner": "erin", "identities": ["user:erin"]}, {"erin/own_only"}),
        ({"name": "iris_svm"}, {"bob/iris_svm"}),
        ({"name": "IRIS_SVM"}, set()),  # exact
        ({"domain": "chemistry", "q": "formation"}, {"carol/formation_energy"}),
        ({"author": "jane doe"}, {"alice/iris_rf", "carol/formation_energy"}),
        ({"author": "ANA MÜLLER"}, {"carol/formation_energy"}),
        ({"author": "Doe"}, {"alice/iris_rf", "carol/formation_energy"}),  # one part of the name
        ({"author": "Jan"}, set()),  # whole name parts, not prefixes
        ({"model_type": "SVC", "q": "iris"}, {"bob/iris_svm"}),
        ({"servable_type": "Keras Model", "q": "perovskites"}, {"carol/formation_energy"}),
        ({"q": "iris", "owner": "alice"}, {"alice/iris_rf"}),
        ({"q": "iris", "domain": "materials"}, set()),
    ],
)
async def test_exact_filters(engine: SqliteSearchEngine, query: dict[str, Any], expected: set[str]) -> None:
    assert await ids(engine, **query) == expected


async def test_filters_on_the_whole_corpus(engine: SqliteSearchEngine) -> None:
    for owner in OWNERS:
        results = await engine.query(SearchQuery(owner=owner, limit=MAX_PAGE))
        assert results.total == len({i for i in PUBLIC_IDS if i.startswith(owner + "/")})
    for domain in DOMAINS:
        results = await engine.query(SearchQuery(domain=domain))
        expected = {d.id for d in DOCS if domain in d.domains and d.id in PUBLIC_IDS}
        assert results.total == len(expected)
    results = await engine.query(SearchQuery(author="shared person"))
    assert results.total == len([d for d in DOCS if "Shared Person" in d.authors and d.id in PUBLIC_IDS])


async def test_paging_and_totals(engine: SqliteSearchEngine) -> None:
    seen: list[str] = []
    for offset in range(0, 50, 10):
        results = await engine.query(SearchQuery(q="generic", limit=10, offset=offset))
        assert results.total == 40  # 45 fillers, 5 of them private
        assert (results.limit, results.offset) == (10, offset)
        seen += [hit.document.id for hit in results.hits]
    assert len(seen) == len(set(seen)) == 40
    beyond = await engine.query(SearchQuery(q="generic", limit=10, offset=100))
    assert beyond.total == 40 and beyond.hits == []


async def test_limit_is_capped_and_validated(engine: SqliteSearchEngine) -> None:
    capped = await engine.query(SearchQuery(limit=10_000))
    assert capped.limit == MAX_PAGE and len(capped.hits) == MAX_PAGE and capped.total == 43
    count_only = await engine.query(SearchQuery(q="iris", limit=0))
    assert count_only.total == 2 and count_only.hits == []
    with pytest.raises(InvalidMessage):
        await engine.query(SearchQuery(limit=-1))
    with pytest.raises(InvalidMessage):
        await engine.query(SearchQuery(offset=-5))


async def test_visible_to(engine: SqliteSearchEngine) -> None:
    assert await ids(engine, q="secret") == set()
    assert await ids(engine, q="secret", identities=["user:bob"]) == set()
    assert await ids(engine, q="secret", identities=["urn:globus:groups:id:1234"]) == {"dave/secret_iris"}
    assert await ids(engine, q="secret", identities=["user:dave"]) == {"dave/secret_iris"}  # owner
    assert await ids(engine, q="iris", identities=["user:bob", "urn:globus:groups:id:1234"]) == {
        "alice/iris_rf",
        "bob/iris_svm",
        "dave/secret_iris",
    }
    as_dave = await engine.query(SearchQuery(q="generic", identities=["user:dave"]))
    assert as_dave.total == 45
    for doc in DOCS:
        if doc.visible_to == ["user:dave"]:
            assert await ids(engine, name=doc.name) == set()
            assert await ids(engine, name=doc.name, identities=["user:dave"]) == {doc.id}
    assert await ids(engine, q="owner sees") == set()
    assert await ids(engine, q="owner sees", identities=["user:erin"]) == {"erin/own_only"}


async def test_delete(engine: SqliteSearchEngine) -> None:
    assert await engine.delete("alice/iris_rf") is True
    assert await engine.delete("alice/iris_rf") is False
    assert await engine.count() == 49
    assert await ids(engine, q="iris") == {"bob/iris_svm"}
    assert await ids(engine, author="jane doe") == {"carol/formation_energy"}


async def test_upsert_replaces_the_prior_document(engine: SqliteSearchEngine) -> None:
    replacement = msgspec.structs.replace(
        DOCS[45], version=3, title="Iris gradient boosting", domains=["botany"], authors=["New Author"]
    )
    await engine.upsert(replacement)
    assert await engine.count() == 50
    assert await ids(engine, q="forest") == set()
    assert await ids(engine, q="gradient") == {"alice/iris_rf"}
    assert await ids(engine, domain="biology", q="iris") == {"bob/iris_svm"}
    assert await ids(engine, domain="botany") == {"alice/iris_rf"}
    assert await ids(engine, author="jane doe") == {"carol/formation_energy"}
    hit = (await engine.query(SearchQuery(name="iris_rf"))).hits[0]
    assert hit.document == replacement
    hidden = msgspec.structs.replace(replacement, visible_to=["user:zed"])
    await engine.upsert(hidden)
    assert await ids(engine, q="gradient") == set()


@pytest.mark.parametrize(
    "q",
    [
        '"foo AND (',
        "NEAR(iris forest",
        "iris OR",
        "AND",
        "*",
        "^iris",
        "title:iris",
        "{title description}: iris",
        "iris*",
        '"',
        "'",
        "-iris",
        "iris + forest",
        "((((",
        "a" * 5000,
        "x " * 1000,
        "\x00iris",
        "😀 iris",
    ],
)
async def test_fts_syntax_in_the_query_is_plain_text(engine: SqliteSearchEngine, q: str) -> None:
    results = await engine.query(SearchQuery(q=q))
    assert results.total >= 0


async def test_fts_syntax_still_finds_the_words(engine: SqliteSearchEngine) -> None:
    assert await ids(engine, q='"iris" (forest') == {"alice/iris_rf"}
    assert await ids(engine, q='title:"iris"') == set()  # "title" is a word to find, not a column filter
    assert query_terms('"foo AND (') == ["foo", "AND"]
    assert query_terms("(((") == []


async def test_persists_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "search.sqlite3"
    async with SqliteSearchEngine(path) as eng:
        await eng.upsert(DOCS[45])
    async with SqliteSearchEngine(path) as eng:
        assert await eng.count() == 1
        assert await ids(eng, q="iri") == {"alice/iris_rf"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_queries_run_off_the_event_loop(
    engine: SqliteSearchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    seen: list[int] = []
    original = engine._query_sync

    def spy(*args: Any) -> SearchResults:
        seen.append(threading.get_ident())
        return original(*args)

    monkeypatch.setattr(engine, "_query_sync", spy)
    await engine.query(SearchQuery(q="iris"))
    assert seen and seen[0] != threading.get_ident()


async def test_closed_engine_refuses_work(tmp_path: Path) -> None:
    eng = SqliteSearchEngine(tmp_path / "s.sqlite3")
    with pytest.raises(DLHubError):
        await eng.count()
    await eng.open()
    await eng.close()
    await eng.close()
    with pytest.raises(DLHubError):
        await eng.query(SearchQuery())


# --- service glue --------------------------------------------------------------------------------------


def dispatch(topic: str, inputs: msgspec.Raw) -> Dispatch:
    return Dispatch(task_id="t1", step=0, topic=topic, method="run", inputs=inputs)


async def test_service_index_and_query(tmp_path: Path) -> None:
    codec = Codec()
    async with SqliteSearchEngine(tmp_path / "s.sqlite3") as eng:
        service = SearchService(engine=eng, codec=codec)
        upsert = IndexRequest(op="upsert", id="alice/iris_rf", document=DOCS[45])
        result = await service.handle(dispatch(SEARCH_INDEX_TOPIC, codec.encode_value(upsert)))
        assert result.ok and codec.decode_value(result.output) == {"op": "upsert", "id": "alice/iris_rf"}
        result = await service.handle(dispatch(SEARCH_QUERY_TOPIC, codec.encode_value(SearchQuery(q="iri"))))
        found = decode_payload(result.output, SearchResults)
        assert found.total == 1 and found.hits[0].document == DOCS[45]
        delete = IndexRequest(op="delete", id="alice/iris_rf")
        result = await service.handle(dispatch(SEARCH_INDEX_TOPIC, codec.encode_value(delete)))
        assert codec.decode_value(result.output)["existed"] is True


@pytest.mark.parametrize(
    ("topic", "value"),
    [
        (SEARCH_QUERY_TOPIC, {"limit": "ten"}),
        (SEARCH_QUERY_TOPIC, [1, 2, 3]),
        (SEARCH_QUERY_TOPIC, {"limit": -1}),
        (SEARCH_INDEX_TOPIC, {"op": "explode", "id": "a/b"}),
        (SEARCH_INDEX_TOPIC, {"op": "upsert", "id": "a/b"}),
        (SEARCH_INDEX_TOPIC, IndexRequest(op="upsert", id="x/y", document=DOCS[45])),
        ("search/other", {}),
    ],
)
async def test_service_rejects_malformed_payloads(tmp_path: Path, topic: str, value: Any) -> None:
    codec = Codec()
    async with SqliteSearchEngine(tmp_path / "s.sqlite3") as eng:
        service = SearchService(engine=eng, codec=codec)
        with pytest.raises(InvalidMessage):
            await service.handle(dispatch(topic, codec.encode_value(value)))
        with pytest.raises(InvalidMessage):
            await service.handle(dispatch(topic, msgspec.Raw(b"\xc1")))
        assert await eng.count() == 0


# --- over the bus: real broker and search processes -----------------------------------------------------


KIND_DATASET = SearchDocument(
    id="alice/iris_data", owner="alice", name="iris_data", version=1, kind="dataset"
)


async def test_index_written_by_schema_4_gains_the_kind_column(tmp_path: Path) -> None:
    """Kinds are read back from the stored bodies: the filter and the browsing facet are exact at once."""
    path = tmp_path / "search.sqlite3"
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        for doc in (*DOCS, KIND_DATASET):
            await eng.upsert(doc)
        before = await eng.query(SearchQuery(facets=["kind"], identities=["user:dave"], limit=0))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "ALTER TABLE documents DROP COLUMN kind; DELETE FROM public_facets WHERE facet = 'kind';"
        "PRAGMA user_version = 4;"
    )
    conn.close()
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        browse = await eng.query(SearchQuery(facets=["kind"], identities=["user:dave"], limit=0))
        assert browse == before
        assert browse.facets["kind"] == [
            FacetCount(value="servable", count=browse.total - 1),
            FacetCount(value="dataset", count=1),
        ]
        assert [h.document.id for h in (await eng.query(SearchQuery(kind="dataset"))).hits] == [
            "alice/iris_data"
        ]


async def test_index_written_by_schema_2_is_migrated(tmp_path: Path) -> None:
    """Bodies move to their own table and the public facet counts are rebuilt from them."""
    path = tmp_path / "search.sqlite3"
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        for doc in DOCS:
            await eng.upsert(doc)
        await eng.upsert(KIND_DATASET)
        fresh = await eng.query(SearchQuery(q="iris", facets=["owner", "domain", "kind"]))
        browse = await eng.query(SearchQuery(facets=["owner", "domain", "kind"], identities=["user:dave"]))
        datasets = await eng.query(SearchQuery(kind="dataset"))
    conn = sqlite3.connect(path, isolation_level=None)  # rewrite the file into the schema 2 layout
    conn.executescript(
        "ALTER TABLE documents ADD COLUMN body BLOB;"
        "UPDATE documents SET body = (SELECT body FROM document_bodies b WHERE b.pk = documents.pk);"
        "DROP TABLE document_bodies; DROP TABLE public_facets; DROP INDEX documents_public;"
        "ALTER TABLE documents DROP COLUMN domains; DROP TABLE document_methods;"
        "ALTER TABLE documents DROP COLUMN kind; PRAGMA user_version = 2;"
    )
    conn.close()
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        assert await eng.query(SearchQuery(q="iris", facets=["owner", "domain", "kind"])) == fresh
        facets: list[FacetName] = ["owner", "domain", "kind"]
        assert await eng.query(SearchQuery(facets=facets, identities=["user:dave"])) == browse
        assert await eng.query(SearchQuery(kind="dataset")) == datasets and datasets.total == 1
    conn = sqlite3.connect(path)
    assert "body" not in {row[1] for row in conn.execute("PRAGMA table_info(documents)")}
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)
    conn.close()


async def test_index_written_by_schema_3_gains_the_type_table(tmp_path: Path) -> None:
    """Entries indexed before types existed match no type filter, without error, until re-indexed."""
    path = tmp_path / "search.sqlite3"
    typed = msgspec.structs.replace(
        DOCS[45],
        methods=[MethodTypes(method="run", input=TypeSummary(type="ndarray", shape=[None, 4]))],
    )
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        await eng.upsert(typed)
        assert (await eng.query(SearchQuery(input_shape=[None, 4]))).total == 1
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("DROP TABLE document_methods; PRAGMA user_version = 3;")
    conn.close()
    async with SqliteSearchEngine(path, max_page_size=MAX_PAGE) as eng:
        assert (await eng.query(SearchQuery(input_shape=[None, 4], facets=["owner"]))).total == 0
        assert (await eng.query(SearchQuery(q="iris"))).total == 1
        await eng.reindex([typed])
        assert (await eng.query(SearchQuery(input_type="ndarray", input_shape=[7, 4]))).total == 1
