"""The search backend interface, shared by the embedded SQLite engine and the Elasticsearch engine.

Every backend returns the same ``SearchResults`` shape for the same ``SearchQuery``: hits in the requested
order (best first by default) with a score where higher is better, the total number of visible matches, the
effective limit and offset, and the requested facet counts over every visible match. The contract suite
(tests/contract/test_search_contract.py) runs the same documents and queries against each backend.
"""

from __future__ import annotations

import abc
import re
import unicodedata
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self, get_args

from dlhub.common.errors import InvalidMessage
from dlhub.common.payloads import (
    FacetCount,
    FacetName,
    Kind,
    MethodTypes,
    SearchDocument,
    SearchQuery,
    SearchResults,
    SortField,
    SortOrder,
)

PUBLIC: Final = "public"
MAX_QUERY_TERMS: Final = 32
FACETS: Final[tuple[str, ...]] = get_args(FacetName)
FACET_SIZE: Final = 100
"""At most this many values per facet (the most frequent ones)."""
SORTS: Final[tuple[str, ...]] = get_args(SortField)
KINDS: Final[tuple[str, ...]] = get_args(Kind)
ORDERS: Final[tuple[str, ...]] = get_args(SortOrder)
_TERM_RE: Final = re.compile(r"[^\W_]+")


def query_terms(q: str) -> list[str]:
    """Split free text into plain word terms (letters and digits); everything else is a separator.

    Backends turn each term into a prefix match, so user text never reaches a query parser as syntax.
    """
    # NFC first: a decomposed "u" + combining diaeresis must stay one term, as the index tokenizer sees it.
    return _TERM_RE.findall(unicodedata.normalize("NFC", q))[:MAX_QUERY_TERMS]


def page(query: SearchQuery, max_page_size: int) -> tuple[int, int]:
    """Return the effective (limit, offset): limit capped at ``max_page_size``; negatives are refused."""
    if query.limit < 0:
        raise InvalidMessage(f"limit must be >= 0, got {query.limit}", field="limit")
    if query.offset < 0:
        raise InvalidMessage(f"offset must be >= 0, got {query.offset}", field="offset")
    return min(query.limit, max_page_size), query.offset


def check_query(query: SearchQuery) -> None:
    """Refuse values the wire schema would refuse too (for queries built in-process, not decoded)."""
    for facet in query.facets:
        if facet not in FACETS:
            expected = ", ".join(FACETS)
            raise InvalidMessage(f"unknown facet {facet!r}; expected some of {expected}", field="facets")
    if query.kind is not None and query.kind not in KINDS:
        raise InvalidMessage(f"unknown kind {query.kind!r}; expected one of {', '.join(KINDS)}", field="kind")
    if query.sort not in SORTS:
        raise InvalidMessage(f"unknown sort {query.sort!r}; expected one of {', '.join(SORTS)}", field="sort")
    if query.order is not None and query.order not in ORDERS:
        raise InvalidMessage(f"order must be asc or desc, got {query.order!r}", field="order")
    for field, shape in (("input_shape", query.input_shape), ("output_shape", query.output_shape)):
        if shape is not None and (
            len(shape) > MAX_DIMENSIONS or any(size is not None and size < 0 for size in shape)
        ):
            raise InvalidMessage(
                f"{field} must list at most {MAX_DIMENSIONS} sizes, each null or >= 0", field=field
            )


def sort_order(query: SearchQuery) -> str:
    """The effective direction: explicit, else descending for relevance and date, ascending for name."""
    if query.order is not None:
        return query.order
    return "asc" if query.sort == "name" else "desc"


def requested_facets(query: SearchQuery) -> list[str]:
    """The requested facets, de-duplicated in request order."""
    return list(dict.fromkeys(query.facets))


def kind_of(document: SearchDocument) -> str:
    """The document's kind as filtered and counted: documents of older peers carry none (servables)."""
    return document.kind or "servable"


def facet_counts(pairs: Sequence[tuple[str, int]]) -> list[FacetCount]:
    """Sort (value, count) pairs by count desc then value, drop empty values, keep the top FACET_SIZE."""
    ordered = sorted(((v, c) for v, c in pairs if v), key=lambda vc: (-vc[1], vc[0]))
    return [FacetCount(value=v, count=c) for v, c in ordered[:FACET_SIZE]]


def doi_term(value: str) -> str:
    """How a DOI or related identifier is indexed and matched: trimmed and case-folded."""
    return value.strip().casefold()


MAX_IDENTIFIER_CHARS: Final = 2048
"""Longer identifiers are stored but not matched by the ``doi`` filter (Elasticsearch caps keyword terms)."""


def doi_terms(document: SearchDocument) -> list[str]:
    """The values the ``doi`` filter matches: the document's DOI and every related identifier."""
    values = (document.doi, *document.related_identifiers)
    return sorted({doi_term(v) for v in values if v.strip() and len(v) <= MAX_IDENTIFIER_CHARS})


# --- argument-type filters ------------------------------------------------------------------------------
#
# Each method of a document is indexed as a set of tokens, one per facet of its input and output types:
# ``input.type=ndarray``, ``input.item=float`` (one per type in the item-type chain), ``input.ndim=2`` and
# one ``input.dim<i>=<size>`` per axis, ``*`` standing for a size declared as null (any). A type query is a
# list of token groups that must all hold for one method, each group satisfied by any of its tokens. Both
# engines match these same tokens, so they share one set of matching rules.

MAX_DIMENSIONS: Final = 32
"""A query shape may list at most this many sizes (as many as a publication may declare)."""
ANY_SIZE: Final = "*"
TOKEN_SEPARATOR: Final = "\x1f"
"""Delimits tokens where an engine keeps them in one string; never part of a token."""
ROLES: Final = ("input", "output")


def type_term(name: str) -> str:
    """How type names are indexed and matched: trimmed and lower-cased, like the registry reads them."""
    return name.strip().lower().replace(TOKEN_SEPARATOR, " ")


def method_tokens(method: MethodTypes) -> list[str]:
    """The tokens one method is indexed under (empty when it declares no types)."""
    tokens: list[str] = []
    for role, summary in zip(ROLES, (method.input, method.output), strict=True):
        if summary is None:
            continue
        tokens.append(f"{role}.type={type_term(summary.type)}")
        tokens.extend(f"{role}.item={type_term(item)}" for item in dict.fromkeys(summary.item_types))
        if summary.shape is not None:
            tokens.append(f"{role}.ndim={len(summary.shape)}")
            tokens.extend(
                f"{role}.dim{axis}={ANY_SIZE if size is None else size}"
                for axis, size in enumerate(summary.shape)
            )
    return tokens


def shape_requirements(role: str, shape: Sequence[int | None]) -> list[list[str]]:
    """Token groups for "the declared shape accepts data of ``shape``".

    Same number of dimensions, and along each axis: a known size is accepted by that size or by a declared
    null (any size); a null in the query (a size that varies) is accepted only by a declared null.
    """
    groups = [[f"{role}.ndim={len(shape)}"]]
    for axis, size in enumerate(shape):
        wildcard = f"{role}.dim{axis}={ANY_SIZE}"
        groups.append([wildcard] if size is None else [wildcard, f"{role}.dim{axis}={size}"])
    return groups


def type_requirements(query: SearchQuery) -> list[list[str]]:
    """The token groups the query's type filters demand of one method ([] without type filters)."""
    groups: list[list[str]] = []
    for role, type_, item, shape in (
        ("input", query.input_type, query.input_item_type, query.input_shape),
        ("output", query.output_type, query.output_item_type, query.output_shape),
    ):
        if type_ is not None:
            groups.append([f"{role}.type={type_term(type_)}"])
        if item is not None:
            groups.append([f"{role}.item={type_term(item)}"])
        if shape is not None:
            groups.extend(shape_requirements(role, shape))
    return groups


def principals(query: SearchQuery) -> list[str]:
    """Who is asking: always ``public`` plus the caller's identities."""
    return sorted({PUBLIC, *query.identities})


def owner_principal(owner: str) -> str:
    """The identity under which an owner always sees its own servables."""
    return f"user:{owner}"


class SearchEngine(abc.ABC):
    """Index of ``SearchDocument``s keyed by ``id`` (``owner/name``). Methods must not block the loop."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect or create the index."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the engine is unusable afterwards."""

    @abc.abstractmethod
    async def upsert(self, document: SearchDocument) -> None:
        """Insert ``document`` or replace the one with the same id."""

    @abc.abstractmethod
    async def delete(self, doc_id: str) -> bool:
        """Remove the document; return whether it existed."""

    @abc.abstractmethod
    async def query(self, query: SearchQuery) -> SearchResults:
        """Free text with prefix matching, exact filters and visibility, one page of hits."""

    @abc.abstractmethod
    async def reindex(self, documents: Sequence[SearchDocument]) -> str:
        """Replace the whole index with ``documents`` atomically; return the name of the new index.

        Queries running meanwhile keep answering from the previous index until the swap.
        """

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of indexed documents, regardless of visibility."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
