"""Embedded search backend: SQLite with an FTS5 index, one connection on one dedicated thread.

Free text goes to an FTS5 table (bm25 ranking, every term a quoted prefix match); exact filters use plain
columns and an indexed (field, value) side table for the multi-valued fields (domains, authors, visibility).
All SQLite work runs on the engine's own thread so a slow query never blocks the event loop's heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from dlhub.common.errors import DLHubError
from dlhub.common.links import query_link_term
from dlhub.common.payloads import SearchDocument, SearchHit, SearchQuery, SearchResults
from dlhub.search.engine import (
    ANY_SIZE,
    PUBLIC,
    ROLES,
    TOKEN_SEPARATOR,
    SearchEngine,
    check_query,
    doi_term,
    doi_terms,
    facet_counts,
    kind_of,
    method_tokens,
    owner_principal,
    page,
    principals,
    query_terms,
    requested_facets,
    sort_order,
    type_requirements,
)

T = TypeVar("T")

SCHEMA_VERSION: Final = 5
"""2: ``documents.public`` (visible to everyone), so the common visibility check needs no subquery.
3: bodies moved to ``document_bodies`` so that scans, counts and facets read narrow rows only (with the
domains folded into one column for facet scans);
``public_facets`` keeps the facet counts (and the total) of the public documents up to date on every write.
4: ``document_methods``, the argument-type tokens of each method (created empty: older entries match no type
filter until re-indexed).
5: ``documents.kind`` (servable, pipeline or dataset), a filter and a facet, filled from the bodies."""
FTS_COLUMNS: Final = ("title", "description", "name", "owner", "authors", "keywords", "domains", "model_type")
BM25_WEIGHTS: Final = (10.0, 2.0, 8.0, 3.0, 4.0, 5.0, 4.0, 3.0)
"""Column weights for bm25, in FTS_COLUMNS order: a title or name hit outranks a description hit."""


FIELD_DOMAIN: Final = "domain"
FIELD_AUTHOR: Final = "author"
FIELD_VISIBLE: Final = "visible"
FIELD_DOI: Final = "doi"
"""The document's own DOI and its related identifiers, case-folded (the ``doi`` filter matches any)."""
FIELD_TRAINED_ON: Final = "trained_on"
FIELD_TESTED_ON: Final = "tested_on"
"""Link terms of a servable's training and test datasets (``dlhub.common.links``)."""
FIELD_SHAPE: Final = "shape"
"""Every declared ndarray shape as one value (``input=*,4``). A shape query lists the few declared shapes
that could accept it, so the index finds the candidates; the exact per-method test then runs on those only
(without it, counting the matches tested the type tokens of every document)."""
MAX_SHAPE_KEYS: Final = 256
"""A query shape with more known sizes than log2 of this is matched without the index (still exactly)."""

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS documents (
    pk INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    model_type TEXT NOT NULL,
    servable_type TEXT NOT NULL,
    publication_date_s REAL NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    domains TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'servable'
);
CREATE INDEX IF NOT EXISTS documents_public ON documents (public);
CREATE TABLE IF NOT EXISTS document_bodies (
    pk INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS public_facets (
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (facet, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_owner_name ON documents (owner, name);
CREATE INDEX IF NOT EXISTS documents_published ON documents (publication_date_s DESC, id);
CREATE TABLE IF NOT EXISTS document_values (
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    doc INTEGER NOT NULL,
    PRIMARY KEY (field, value, doc)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS document_values_doc ON document_values (doc);
CREATE TABLE IF NOT EXISTS document_methods (
    doc INTEGER NOT NULL,
    tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS document_methods_doc ON document_methods (doc);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    {", ".join(FTS_COLUMNS)},
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);
PRAGMA user_version = {SCHEMA_VERSION};
"""

CACHE_KIB: Final = 64 * 1024
MMAP_BYTES: Final = 256 * 1024 * 1024

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(SearchDocument)


def fts_match_expression(terms: Iterable[str]) -> str:
    """All terms must match, each as a quoted prefix (terms hold only letters and digits)."""
    return " ".join('"' + term.replace('"', '""') + '"*' for term in terms)


def _fts_row(document: SearchDocument) -> tuple[str, ...]:
    return (
        document.title,
        document.description,
        document.name,
        document.owner,
        " ; ".join(document.authors),
        " ; ".join(document.keywords),
        " ; ".join(document.domains),
        document.model_type,
    )


def _value_rows(pk: int, document: SearchDocument) -> set[tuple[str, str, int]]:
    rows = {(FIELD_DOMAIN, domain, pk) for domain in document.domains}
    # An author filter matches the full name or any single part of it ("Curie" finds "Marie Curie").
    for author in document.authors:
        full = author.casefold().strip()
        rows |= {(FIELD_AUTHOR, part, pk) for part in (full, *full.split())}
    rows |= {(FIELD_VISIBLE, who, pk) for who in (*document.visible_to, owner_principal(document.owner))}
    rows |= {(FIELD_DOI, value, pk) for value in doi_terms(document)}
    rows |= {(FIELD_TRAINED_ON, value, pk) for value in document.trained_on}
    rows |= {(FIELD_TESTED_ON, value, pk) for value in document.tested_on}
    for method in document.methods:
        for role, summary in zip(ROLES, (method.input, method.output), strict=True):
            if summary is not None and summary.shape is not None:
                rows.add((FIELD_SHAPE, _shape_key(role, summary.shape), pk))
    return rows


def _shape_key(role: str, shape: Iterable[int | None]) -> str:
    return f"{role}=" + ",".join(ANY_SIZE if size is None else str(size) for size in shape)


def _shape_candidates(role: str, shape: list[int | None]) -> list[str] | None:
    """The declared shapes that accept data of ``shape`` (a known size: itself or any; a null: any)."""
    if 2 ** sum(size is not None for size in shape) > MAX_SHAPE_KEYS:
        return None
    options = [[None] if size is None else [None, size] for size in shape]
    return [_shape_key(role, combination) for combination in itertools.product(*options)]


def _method_rows(pk: int, document: SearchDocument) -> list[tuple[int, str]]:
    """One row per method that declares types: its tokens, each delimited on both sides."""
    rows = []
    for method in document.methods:
        tokens = method_tokens(method)
        if tokens:
            rows.append((pk, TOKEN_SEPARATOR + TOKEN_SEPARATOR.join(tokens) + TOKEN_SEPARATOR))
    return rows


def _facet_values(document: SearchDocument) -> list[tuple[str, str]]:
    """The (facet, value) pairs a document counts under; ('', '') is the document itself (the total)."""
    pairs = [("", ""), ("owner", document.owner), ("model_type", document.model_type)]
    pairs.append(("servable_type", document.servable_type))
    pairs.append(("kind", kind_of(document)))
    pairs.extend(("domain", domain) for domain in dict.fromkeys(document.domains))
    return pairs


DOMAIN_SEPARATOR: Final = "\x1f"


def _domains_column(document: SearchDocument) -> str:
    return DOMAIN_SEPARATOR.join(dict.fromkeys(document.domains))


def _bump_public_facets(db: sqlite3.Connection, document: SearchDocument, delta: int) -> None:
    """Keep ``public_facets`` equal to the facet counts over all public documents."""
    if PUBLIC not in document.visible_to:
        return
    db.executemany(
        "INSERT INTO public_facets (facet, value, count) VALUES (?, ?, ?) "
        "ON CONFLICT (facet, value) DO UPDATE SET count = count + excluded.count",
        [(facet, value, delta) for facet, value in _facet_values(document)],
    )
    db.execute("DELETE FROM public_facets WHERE count <= 0")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an index file written by an older version to the current schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(documents)")}
    if columns and "public" not in columns:  # schema 1
        with _transaction(conn):
            conn.execute("ALTER TABLE documents ADD COLUMN public INTEGER NOT NULL DEFAULT 0")
            conn.execute(
                "UPDATE documents SET public = 1 WHERE pk IN "
                "(SELECT doc FROM document_values WHERE field = ? AND value = ?)",
                (FIELD_VISIBLE, PUBLIC),
            )
    if "body" in columns:  # schema 1 or 2
        with _transaction(conn):
            conn.execute("CREATE TABLE document_bodies (pk INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            conn.execute("INSERT INTO document_bodies (pk, body) SELECT pk, body FROM documents")
            conn.execute("ALTER TABLE documents DROP COLUMN body")
            conn.execute("ALTER TABLE documents ADD COLUMN domains TEXT NOT NULL DEFAULT ''")
            for pk, body in conn.execute("SELECT pk, body FROM document_bodies").fetchall():
                domains = _domains_column(_decoder.decode(body))
                conn.execute("UPDATE documents SET domains = ? WHERE pk = ?", (domains, pk))
            conn.execute(
                "CREATE TABLE public_facets (facet TEXT NOT NULL, value TEXT NOT NULL, "
                "count INTEGER NOT NULL, PRIMARY KEY (facet, value)) WITHOUT ROWID"
            )
            for (body,) in conn.execute("SELECT body FROM document_bodies").fetchall():
                _bump_public_facets(conn, _decoder.decode(body), +1)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(documents)")}
    if columns and "kind" not in columns:  # schema 4 or older
        _add_kind_column(conn)


def _add_kind_column(conn: sqlite3.Connection) -> None:
    """Schema 5: the kind column and its public facet counts, from the stored bodies."""
    with _transaction(conn):
        conn.execute("ALTER TABLE documents ADD COLUMN kind TEXT NOT NULL DEFAULT 'servable'")
        rows = conn.execute(
            "SELECT d.pk, d.public, b.body FROM documents d JOIN document_bodies b ON b.pk = d.pk"
        )
        kinds: Counter[str] = Counter()
        for pk, public, body in rows.fetchall():
            kind = kind_of(_decoder.decode(body))
            conn.execute("UPDATE documents SET kind = ? WHERE pk = ?", (kind, pk))
            kinds[kind] += int(public)
        conn.execute("DELETE FROM public_facets WHERE facet = 'kind'")  # a schema 1-2 migration counted them
        conn.executemany(
            "INSERT INTO public_facets (facet, value, count) VALUES ('kind', ?, ?)",
            [(kind, count) for kind, count in kinds.items() if count],
        )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class _Filters:
    """WHERE clauses and their parameters, built from the query's exact filters and visibility."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def has_value(self, field: str, values: list[str]) -> None:
        marks = ", ".join("?" for _ in values)
        self.add(
            "EXISTS (SELECT 1 FROM document_values v WHERE v.doc = d.pk AND v.field = ? "
            f"AND v.value IN ({marks}))",
            field,
            *values,
        )

    def one_method_has(self, groups: list[list[str]]) -> None:
        """Some method of the document holds a token of every group (delimited, so never a substring)."""
        tests = ["(" + " OR ".join("instr(m.tokens, ?) > 0" for _ in group) + ")" for group in groups]
        self.add(
            f"EXISTS (SELECT 1 FROM document_methods m WHERE m.doc = d.pk AND {' AND '.join(tests)})",
            *(TOKEN_SEPARATOR + token + TOKEN_SEPARATOR for group in groups for token in group),
        )

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "1"


def _filters(query: SearchQuery, match: str) -> _Filters:
    filters = _Filters()
    if match:
        filters.add("documents_fts MATCH ?", match)
    for column, value in (
        ("owner", query.owner),
        ("name", query.name),
        ("model_type", query.model_type),
        ("servable_type", query.servable_type),
        ("kind", query.kind),
    ):
        if value is not None:
            filters.add(f"d.{column} = ?", value)
    if query.domain is not None:
        filters.has_value(FIELD_DOMAIN, [query.domain])
    if query.author is not None:
        filters.has_value(FIELD_AUTHOR, [query.author.casefold()])
    if query.doi is not None:
        filters.has_value(FIELD_DOI, [doi_term(query.doi)])
    if query.trained_on is not None:
        filters.has_value(FIELD_TRAINED_ON, [query_link_term(query.trained_on)])
    if query.tested_on is not None:
        filters.has_value(FIELD_TESTED_ON, [query_link_term(query.tested_on)])
    groups = type_requirements(query)
    if groups:
        filters.one_method_has(groups)
    for role, shape in zip(ROLES, (query.input_shape, query.output_shape), strict=True):
        keys = None if shape is None else _shape_candidates(role, shape)
        if keys:
            marks = ", ".join("?" for _ in keys)
            filters.add(
                f"d.pk IN (SELECT doc FROM document_values WHERE field = ? AND value IN ({marks}))",
                FIELD_SHAPE,
                *keys,
            )
    if query.published_from_s is not None:
        filters.add("d.publication_date_s >= ?", query.published_from_s)
    if query.published_to_s is not None:
        filters.add("d.publication_date_s <= ?", query.published_to_s)
    # Everyone is "public": a flag on the row; other identities (owner, groups) via the side table.
    others = [who for who in principals(query) if who != PUBLIC]
    if others:
        marks = ", ".join("?" for _ in others)
        filters.add(
            "(d.public = 1 OR EXISTS (SELECT 1 FROM document_values v WHERE v.doc = d.pk AND v.field = ? "
            f"AND v.value IN ({marks})))",
            FIELD_VISIBLE,
            *others,
        )
    else:
        filters.add("d.public = 1")
    return filters


def _only_visibility(query: SearchQuery, match: str) -> bool:
    """True when nothing but visibility narrows the result set (the maintained aggregates then apply)."""
    narrowing = (
        query.owner,
        query.name,
        query.domain,
        query.author,
        query.doi,
        query.model_type,
        query.servable_type,
        query.kind,
        query.published_from_s,
        query.published_to_s,
        query.trained_on,
        query.tested_on,
    )
    return not match and all(value is None for value in narrowing) and not type_requirements(query)


_GROUP_COLUMN: Final = {"owner": 0, "model_type": 1, "servable_type": 2, "kind": 4}
"""Position of each plain-column facet in the grouped facet rows."""


class SqliteSearchEngine(SearchEngine):
    """``SearchEngine`` over one SQLite file (WAL mode), driven from a single dedicated thread."""

    def __init__(self, path: Path, *, max_page_size: int = 1000) -> None:
        self.path = path
        self.max_page_size = max_page_size
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- plumbing ----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise DLHubError("search engine is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise DLHubError(f"search index error: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DLHubError("search engine is not open")
        return self._conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 5000")
            # The default 2 MiB page cache cannot hold the FTS index of a few thousand servables, so every
            # query re-read pages from the OS; keep the working set in this process instead.
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            _migrate(conn)
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- interface ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def upsert(self, document: SearchDocument) -> None:
        await self._call(self._upsert_sync, document)

    async def delete(self, doc_id: str) -> bool:
        return await self._call(self._delete_sync, doc_id)

    async def query(self, query: SearchQuery) -> SearchResults:
        check_query(query)
        limit, offset = page(query, self.max_page_size)
        return await self._call(self._query_sync, query, limit, offset)

    async def reindex(self, documents: Sequence[SearchDocument]) -> str:
        await self._call(self._reindex_sync, list(documents))
        return str(self.path)

    async def count(self) -> int:
        return await self._call(self._count_sync)

    # --- SQLite, on the engine thread --------------------------------------------------------------

    def _remove(self, db: sqlite3.Connection, doc_id: str) -> bool:
        row = db.execute(
            "SELECT d.pk, b.body FROM documents d JOIN document_bodies b ON b.pk = d.pk WHERE d.id = ?",
            (doc_id,),
        ).fetchone()
        if row is None:
            return False
        pk = row[0]
        _bump_public_facets(db, _decoder.decode(row[1]), -1)
        db.execute("DELETE FROM documents_fts WHERE rowid = ?", (pk,))
        db.execute("DELETE FROM document_values WHERE doc = ?", (pk,))
        db.execute("DELETE FROM document_methods WHERE doc = ?", (pk,))
        db.execute("DELETE FROM document_bodies WHERE pk = ?", (pk,))
        db.execute("DELETE FROM documents WHERE pk = ?", (pk,))
        return True

    def _insert(self, db: sqlite3.Connection, document: SearchDocument) -> None:
        cursor = db.execute(
            "INSERT INTO documents (id, owner, name, model_type, servable_type, publication_date_s, "
            "public, domains, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                document.id,
                document.owner,
                document.name,
                document.model_type,
                document.servable_type,
                document.publication_date_s,
                int(PUBLIC in document.visible_to),
                _domains_column(document),
                kind_of(document),
            ),
        )
        pk = cursor.lastrowid
        assert pk is not None
        db.execute("INSERT INTO document_bodies (pk, body) VALUES (?, ?)", (pk, _encoder.encode(document)))
        _bump_public_facets(db, document, +1)
        marks = ", ".join("?" for _ in FTS_COLUMNS)
        db.execute(
            f"INSERT INTO documents_fts (rowid, {', '.join(FTS_COLUMNS)}) VALUES (?, {marks})",
            (pk, *_fts_row(document)),
        )
        db.executemany(
            "INSERT INTO document_values (field, value, doc) VALUES (?, ?, ?)",
            sorted(_value_rows(pk, document)),
        )
        db.executemany("INSERT INTO document_methods (doc, tokens) VALUES (?, ?)", _method_rows(pk, document))

    def _upsert_sync(self, document: SearchDocument) -> None:
        db = self._db
        with _transaction(db):
            self._remove(db, document.id)
            self._insert(db, document)

    def _reindex_sync(self, documents: list[SearchDocument]) -> None:
        """Empty and refill every table in one transaction: readers see the old index until COMMIT.

        All engine work runs on this one thread, so queries submitted meanwhile wait for the commit and then
        answer from the new index; they never see a partial one. The last document with a given id wins.
        """
        latest = {document.id: document for document in documents}
        db = self._db
        with _transaction(db):
            db.execute("DELETE FROM documents_fts")
            db.execute("DELETE FROM document_values")
            db.execute("DELETE FROM document_methods")
            db.execute("DELETE FROM document_bodies")
            db.execute("DELETE FROM public_facets")
            db.execute("DELETE FROM documents")
            for document in latest.values():
                self._insert(db, document)
        db.execute("INSERT INTO documents_fts (documents_fts) VALUES ('optimize')")

    def _delete_sync(self, doc_id: str) -> bool:
        db = self._db
        with _transaction(db):
            return self._remove(db, doc_id)

    def _query_sync(self, query: SearchQuery, limit: int, offset: int) -> SearchResults:
        db = self._db
        match = fts_match_expression(query_terms(query.q))
        filters = _filters(query, match)
        direction = "ASC" if sort_order(query) == "asc" else "DESC"
        if match:
            source = "documents_fts JOIN documents d ON d.pk = documents_fts.rowid"
            weights = ", ".join(str(w) for w in BM25_WEIGHTS)
            score = f"-bm25(documents_fts, {weights})"
        else:
            source = "documents d"
            score = "0.0"
        if query.sort == "name":
            order = f"d.name {direction}, d.id"
        elif query.sort == "relevance" and match:
            order = f"score {direction}, d.publication_date_s {direction}, d.id"
        else:
            order = f"d.publication_date_s {direction}, d.id"
        where = filters.sql()
        facets = requested_facets(query)
        with _transaction(db):
            if facets and _only_visibility(query, match):
                total, counts = self._facets_from_aggregates(db, query, facets)
            elif facets:
                total, counts = self._grouped_facets(db, f"{source} WHERE {where}", filters.params, facets)
            else:
                (total,) = db.execute(
                    f"SELECT count(*) FROM {source} WHERE {where}", filters.params
                ).fetchone()
                counts = {}
            # Rank narrow rows first; read the (wide) bodies of the one page only.
            ranked = (
                db.execute(
                    f"SELECT d.pk, {score} AS score FROM {source} WHERE {where} "
                    f"ORDER BY {order} LIMIT ? OFFSET ?",
                    [*filters.params, limit, offset],
                ).fetchall()
                if limit > 0
                else []
            )
            bodies = self._bodies(db, [pk for pk, _ in ranked])
        hits = [SearchHit(document=_decoder.decode(bodies[pk]), score=float(score)) for pk, score in ranked]
        return SearchResults(
            total=int(total),
            hits=hits,
            limit=limit,
            offset=offset,
            facets={facet: facet_counts(counts.get(facet, [])) for facet in facets},
        )

    @staticmethod
    def _facets_from_aggregates(
        db: sqlite3.Connection, query: SearchQuery, facets: list[str]
    ) -> tuple[int, dict[str, list[tuple[str, int]]]]:
        """Browsing without filters: the maintained public counts plus the caller's own non-public rows."""
        counts: dict[str, dict[str, int]] = {facet: {} for facet in facets}
        total = 0
        marks = ", ".join("?" for _ in facets)
        rows = db.execute(
            f"SELECT facet, value, count FROM public_facets WHERE facet = '' OR facet IN ({marks})", facets
        ).fetchall()
        others = [who for who in principals(query) if who != PUBLIC]
        if others:
            who = ", ".join("?" for _ in others)
            private = db.execute(
                "SELECT b.body FROM documents d JOIN document_bodies b ON b.pk = d.pk WHERE d.public = 0 "
                "AND EXISTS (SELECT 1 FROM document_values v WHERE v.doc = d.pk AND v.field = ? "
                f"AND v.value IN ({who}))",
                [FIELD_VISIBLE, *others],
            ).fetchall()
            for (body,) in private:
                pairs = _facet_values(_decoder.decode(body))
                rows.extend((facet, value, 1) for facet, value in pairs if facet in counts or not facet)
        for facet, value, count in rows:
            if facet == "":
                total += int(count)
            else:
                counts[facet][value] = counts[facet].get(value, 0) + int(count)
        return total, {facet: list(values.items()) for facet, values in counts.items()}

    @staticmethod
    def _bodies(db: sqlite3.Connection, pks: list[int]) -> dict[int, bytes]:
        if not pks:
            return {}
        marks = ", ".join("?" for _ in pks)
        rows = db.execute(f"SELECT pk, body FROM document_bodies WHERE pk IN ({marks})", pks)
        return {pk: body for pk, body in rows}

    @staticmethod
    def _grouped_facets(
        db: sqlite3.Connection, matching: str, params: list[Any], facets: list[str]
    ) -> tuple[int, dict[str, list[tuple[str, int]]]]:
        """The total and every requested facet from one grouped pass over the matching rows.

        Rows are grouped by all facet columns at once (no ranking needed), so SQLite reads each match once;
        the few resulting groups are folded into per-facet counts here.
        """
        rows = db.execute(
            "SELECT d.owner, d.model_type, d.servable_type, d.domains, d.kind, count(*) "
            f"FROM {matching} GROUP BY 1, 2, 3, 4, 5",
            params,
        ).fetchall()
        total = sum(row[5] for row in rows)
        counters: dict[str, Counter[str]] = {}
        for facet in facets:
            counter: Counter[str] = Counter()
            if facet == "domain":
                for row in rows:
                    if row[3]:
                        for domain in row[3].split(DOMAIN_SEPARATOR):
                            counter[domain] += row[5]
            else:
                column = _GROUP_COLUMN[facet]
                for row in rows:
                    counter[row[column]] += row[5]
            counters[facet] = counter
        return total, {facet: list(counter.items()) for facet, counter in counters.items()}

    def _count_sync(self) -> int:
        (total,) = self._db.execute("SELECT count(*) FROM documents").fetchone()
        return int(total)
