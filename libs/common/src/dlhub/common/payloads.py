"""Typed bodies of the service-to-service tasks (build, index, query).

They travel inside ``Submit.inputs`` / ``Result.output`` (encoded with ``Codec.encode_value`` and decoded with
``decode_payload``), so the registry, builder and search services agree on one schema.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from dlhub.common.errors import InvalidMessage

T = TypeVar("T")


class BuildRequest(msgspec.Struct, kw_only=True):
    """Registry -> builder: install ``package`` (a .tar.gz/.tgz/.tar or .zip, may be empty) as a version."""

    owner: str
    name: str
    version: int
    metadata: dict[str, Any]
    package: bytes = b""
    package_format: Literal["tar", "zip", "none"] = "tar"


class FileEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One regular file of a built version: its package path, size and sha256 (hex)."""

    path: str
    size_bytes: int
    sha256: str


PreviewType = Literal["integer", "number", "boolean", "string", "empty"]


class PreviewColumn(msgspec.Struct, kw_only=True, frozen=True):
    """A column of a tabular preview: its header and the simple type its previewed cells share."""

    name: str
    type: PreviewType


class TablePreview(msgspec.Struct, kw_only=True, frozen=True):
    """The first rows of one tabular file (CSV, TSV, JSON lines), computed once when the version is built.

    Cells are untrusted text: strings, each cut to ``builder.preview_max_cell_chars``; ``truncated`` says the
    file has more rows, columns or bytes than the preview shows.
    """

    path: str
    format: Literal["csv", "tsv", "jsonl"]
    columns: list[PreviewColumn]
    rows: list[list[str]]
    truncated: bool = False


class BuildOutcome(msgspec.Struct, kw_only=True):
    """Builder -> registry on success: where the version lives and what it holds."""

    digest: str
    files: list[str]
    size_bytes: int
    path: str
    environment: str = ""
    """The environment id the version runs in ("" for the shared worker environment); added later, so
    optional."""
    backend: str = ""
    """The environment's backend (venv, docker; "" when shared); the fields below were added for exports."""
    python: str = ""
    lock: str = ""
    """The environment's hash-pinned lock (``uv pip compile --generate-hashes`` output; "" when shared)."""
    base_image: str = ""
    manifest: list[FileEntry] = msgspec.field(default_factory=list)
    """Every regular file with its size and sha256 (added later, so optional)."""
    previews: list[TablePreview] = msgspec.field(default_factory=list)
    """Datasets only: previews of their tabular files (added later, so optional)."""
    bundle: bytes = b""
    """The version's whole folder as one archive (``dlhub.common.bundles``): the registry keeps it by its
    sha256 for Task Managers that do not share the builder's disk."""


BuildState = Literal["queued", "resolving", "installing", "ready", "failed"]


class StateChange(msgspec.Struct, kw_only=True):
    state: BuildState
    at_unix_s: float


class BuildRecord(msgspec.Struct, kw_only=True):
    """The build of one version: its states with timestamps and the full log (resolver/installer output)."""

    servable: str
    state: BuildState = "queued"
    states: list[StateChange] = msgspec.field(default_factory=list)
    environment: str = ""
    error: str = ""
    log: list[str] = msgspec.field(default_factory=list)


class BuildEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Builder -> registry, a list of them per ``Progress`` report: a state change or new log lines."""

    state: BuildState | None = None
    at_unix_s: float = 0.0
    error: str = ""
    lines: list[str] = msgspec.field(default_factory=list)


class TypeSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The searchable facets of one argument-type description (a method's input or output).

    ``type`` is the top-level type name, lower-cased (``ndarray``, ``list``, ``dict``, ``python object`` ...);
    ``item_types`` every type met by following ``item_type`` down through lists and ndarrays (a list of
    ndarrays of floats: ``["ndarray", "float"]``); ``shape`` the declared shape of a top-level ndarray
    (``None`` for "any size" along an axis), or ``None`` when no shape is declared.
    """

    type: str
    item_types: list[str] = msgspec.field(default_factory=list)
    shape: list[int | None] | None = None


class MethodTypes(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one method of a servable accepts and returns (``None``: not declared)."""

    method: str
    input: TypeSummary | None = None
    output: TypeSummary | None = None


class SearchDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the search service indexes for one servable (its latest visible version).

    ``doi`` (the version's own DOI, "" without one) and ``related_identifiers`` (the values of
    ``datacite.relatedIdentifiers``: paper and data DOIs ...) were added later; they are optional so older
    peers still decode the document.
    """

    id: str
    owner: str
    name: str
    version: int
    title: str = ""
    description: str = ""
    authors: list[str] = msgspec.field(default_factory=list)
    domains: list[str] = msgspec.field(default_factory=list)
    keywords: list[str] = msgspec.field(default_factory=list)
    model_type: str = ""
    servable_type: str = ""
    visible_to: list[str] = msgspec.field(default_factory=lambda: ["public"])
    publication_date_s: float = 0.0
    status: str = "ready"
    doi: str = ""
    related_identifiers: list[str] = msgspec.field(default_factory=list)
    kind: str = ""
    """servable, pipeline or dataset ("" from older peers: a servable)."""
    columns: list[str] = msgspec.field(default_factory=list)
    """Datasets: the column names of their tabular previews (capped in number and length)."""
    trained_on: list[str] = msgspec.field(default_factory=list)
    """Link terms of the training datasets: ``owner/name``, ``owner/name@version`` and case-folded DOIs."""
    tested_on: list[str] = msgspec.field(default_factory=list)
    """Link terms of the test datasets, as ``trained_on``."""
    methods: list[MethodTypes] = msgspec.field(default_factory=list)
    """The declared input and output types of each method (added later: documents indexed before have
    none, and match no type filter until re-indexed)."""


class IndexRequest(msgspec.Struct, kw_only=True):
    """Registry -> search: upsert or delete the document with ``id`` (``owner/name``)."""

    op: Literal["upsert", "delete"]
    id: str
    document: SearchDocument | None = None


FacetName = Literal["domain", "model_type", "servable_type", "owner", "kind"]
Kind = Literal["servable", "pipeline", "dataset"]
SortField = Literal["relevance", "publication_date", "name"]
SortOrder = Literal["asc", "desc"]


class SearchQuery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Free text (with prefix matching) plus exact field filters, seen by ``identities``.

    Fields after ``offset`` were added later; they are optional so older peers still decode the query.
    ``published_from_s``/``published_to_s`` bound the publication date (epoch seconds, inclusive);
    ``facets`` asks for value counts over every matching visible document; ``sort`` orders hits (relevance
    falls back to publication date without free text) and ``order`` defaults to the natural direction of
    the sort (relevance and publication_date descending, name ascending). Ties always break on ``id``.
    ``doi`` matches the servable's own DOI or any of its related identifiers (case-insensitive).
    """

    q: str = ""
    owner: str | None = None
    name: str | None = None
    domain: str | None = None
    author: str | None = None
    model_type: str | None = None
    servable_type: str | None = None
    identities: list[str] = msgspec.field(default_factory=list)
    limit: int = 20
    offset: int = 0
    published_from_s: float | None = None
    published_to_s: float | None = None
    facets: list[FacetName] = msgspec.field(default_factory=list)
    sort: SortField = "relevance"
    order: SortOrder | None = None
    doi: str | None = None
    """Matches the servable's DOI or any of its related identifiers, case-insensitively."""
    trained_on: str | None = None
    """Servables trained on this dataset: ``owner/name``, ``owner/name@version`` or a DOI (any case)."""
    tested_on: str | None = None
    """Servables tested on this dataset, as ``trained_on``."""
    input_type: str | None = None
    """Type filters (added later): ``*_type`` matches a method's top-level type and ``*_item_type`` any
    type in its item-type chain (both case-insensitive); ``*_shape`` is the shape of the caller's data,
    ``None`` for a size that varies, and matches declared ndarray shapes that accept it (see
    ``dlhub.search.engine.type_requirements``). All the input and output filters must hold for one method."""
    input_item_type: str | None = None
    input_shape: list[int | None] | None = None
    output_type: str | None = None
    output_item_type: str | None = None
    output_shape: list[int | None] | None = None
    kind: Kind | None = None
    """Only this kind of publication (added later); a document of an older peer without a kind is a
    servable."""


class SearchHit(msgspec.Struct, kw_only=True):
    document: SearchDocument
    score: float


class FacetCount(msgspec.Struct, kw_only=True):
    value: str
    count: int


class SearchResults(msgspec.Struct, kw_only=True):
    """One page of hits; ``facets`` maps each requested facet to counts sorted by count desc, value asc."""

    total: int
    hits: list[SearchHit]
    limit: int
    offset: int
    facets: dict[str, list[FacetCount]] = msgspec.field(default_factory=dict)


class ReindexRequest(msgspec.Struct, kw_only=True):
    """Registry -> search: replace the whole index with ``documents`` (the latest ready version of each)."""

    documents: list[SearchDocument]


class ReindexOutcome(msgspec.Struct, kw_only=True):
    """Search -> registry after a full reindex: how many documents and the index now behind the name."""

    documents: int
    index: str


def decode_payload(raw: msgspec.Raw | bytes, type_: type[T]) -> T:
    """Decode a task body into its struct, turning schema errors into ``InvalidMessage``."""
    try:
        return msgspec.msgpack.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidMessage(f"invalid {type_.__name__}: {exc}") from exc
