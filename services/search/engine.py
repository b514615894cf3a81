"""The search backend interface: the embedded SQLite engine and a future Elasticsearch engine share it.

Every backend returns the same ``SearchResults`` shape for the same ``SearchQuery``: hits best first with a
score where higher is better, the total number of visible matches, and the effective limit and offset.
"""

from __future__ import annotations

import abc
import re
import unicodedata
from types import TracebackType
from typing import Final, Self

from libs.common.errors import InvalidMessage
from libs.common.payloads import SearchDocument, SearchQuery, SearchResults

PUBLIC: Final = "public"
MAX_QUERY_TERMS: Final = 32
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
