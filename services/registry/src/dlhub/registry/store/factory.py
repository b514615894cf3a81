"""Choose the ``MetadataStore`` backend named by the configuration."""

from __future__ import annotations

from dlhub.common.config import DLHubSettings
from dlhub.registry.store import MetadataStore


def make_store(settings: DLHubSettings) -> MetadataStore:
    """Return an unopened store for ``settings.store.backend``."""
    if settings.store.backend == "sqlite":
        from dlhub.registry.store.sqlite import SQLiteMetadataStore

        return SQLiteMetadataStore(
            settings.store_sqlite_path, busy_timeout_ms=settings.store.sqlite_busy_timeout_s * 1000
        )
    if settings.store.backend == "mongodb":
        from dlhub.registry.store.mongo import MongoMetadataStore

        return MongoMetadataStore(settings.store)
    raise ValueError(f"unknown store backend {settings.store.backend!r}")
