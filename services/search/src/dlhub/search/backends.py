"""Choose the ``SearchEngine`` backend named by the configuration (``search.backend``)."""

from __future__ import annotations

from dlhub.common.config import DLHubSettings
from dlhub.search.engine import SearchEngine


def make_engine(settings: DLHubSettings) -> SearchEngine:
    """Return an unopened engine for ``settings.search.backend``."""
    if settings.search.backend == "sqlite":
        from dlhub.search.sqlite_engine import SqliteSearchEngine

        return SqliteSearchEngine(settings.search_sqlite_path, max_page_size=settings.search.max_page_size)
    if settings.search.backend == "elasticsearch":
        from dlhub.search.es_engine import ElasticsearchSearchEngine

        return ElasticsearchSearchEngine(settings.search)
    raise ValueError(f"unknown search backend {settings.search.backend!r}")


def describe_engine(settings: DLHubSettings) -> str:
    """Where the index lives, for logs (never with credentials)."""
    if settings.search.backend == "elasticsearch":
        from dlhub.search.es_engine import safe_url

        search = settings.search
        return f"{safe_url(search.elasticsearch_url)} alias {search.elasticsearch_index_alias}"
    return str(settings.search_sqlite_path)
