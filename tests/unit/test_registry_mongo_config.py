"""The MongoDB store's configuration and errors without a server: typed 503s, redacted URLs, backend choice
(split from tests/contract/test_registry_mongo.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dlhub.common.config import StoreConfig, load_settings
from dlhub.common.errors import ERRORS_BY_CODE, StoreUnavailable
from dlhub.registry.store.factory import make_store
from dlhub.registry.store.mongo import MongoMetadataStore, redact_url
from tests.support.net import free_port


def test_store_unavailable_is_a_registered_503() -> None:
    assert ERRORS_BY_CODE["store_unavailable"] is StoreUnavailable
    assert StoreUnavailable.http_status == 503


def test_redact_url() -> None:
    assert redact_url("mongodb://bob:s3cr%40t@db1:27017,db2/x?authSource=admin") == (
        "mongodb://bob:***@db1:27017,db2/x?authSource=admin"
    )
    assert (
        redact_url("mongodb+srv://bob:pw@cluster.example.org/")
        == "mongodb+srv://bob:***@cluster.example.org/"
    )
    assert redact_url("mongodb://bob@host/") == "mongodb://bob@host/"
    assert redact_url("mongodb://127.0.0.1:27017/") == "mongodb://127.0.0.1:27017/"


def test_backend_is_chosen_by_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(data_dir=tmp_path, store=StoreConfig(backend="mongodb", mongodb_database="x"))
    store = make_store(settings)
    assert isinstance(store, MongoMetadataStore) and store.database_name == "x"
    monkeypatch.setenv("DLHUB_STORE__BACKEND", "mongodb")
    monkeypatch.setenv("DLHUB_STORE__MONGODB_SERVER_SELECTION_TIMEOUT_S", "1.5")
    from_env = load_settings(data_dir=tmp_path).store
    assert from_env.backend == "mongodb" and from_env.mongodb_server_selection_timeout_s == 1.5


async def test_unreachable_server_is_a_typed_error_naming_the_url() -> None:
    port = free_port()  # nothing listens here
    config = StoreConfig(
        backend="mongodb",
        mongodb_url=f"mongodb://alice:hunter2@127.0.0.1:{port}/",
        mongodb_server_selection_timeout_s=0.5,
    )
    store = MongoMetadataStore(config)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert time.monotonic() - started < 5
    message = info.value.message
    assert f"mongodb://alice:***@127.0.0.1:{port}/" in message and "hunter2" not in message
    assert "cannot reach MongoDB" in message and ("refused" in message or "failed" in message)
    with pytest.raises(RuntimeError):  # not open
        await store.get_version("a", "b", 1)
