"""Choose the ``MetadataStore`` backend named by the configuration."""

from __future__ import annotations

from libs.common.config import DLHubSettings
from services.registry.store import MetadataStore


def make_store(settings: DLHubSettings) -> MetadataStore:
    """Return an unopened store for ``settings.store.backend``."""
    if settings.store.backend == "sqlite":
        from services.registry.sqlite_store import SQLiteMetadataStore

        return SQLiteMetadataStore(settings.store_sqlite_path)
    if settings.store.backend == "mongodb":
        from services.registry.mongo_store import MongoMetadataStore

        return MongoMetadataStore(settings.store)
    raise ValueError(f"unknown store backend {settings.store.backend!r}")
