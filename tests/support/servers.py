"""The database and search test servers (scripts/test-servers): finding them, or skipping without them."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import pymongo
import pytest

TEST_SERVERS_HINT = 'run `scripts/test-servers start` and `eval "$(scripts/test-servers env)"`'


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_test_server(reason: str) -> NoReturn:
    """A missing test server fails the run in CI and skips the test locally."""
    if in_ci():
        pytest.fail(f"{reason} (CI requires the test servers)", pytrace=False)
    pytest.skip(f"{reason}; {TEST_SERVERS_HINT}")


def mongodb_build_info(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``buildInfo`` of the MongoDB-wire server at ``url`` (after a ``ping``); raises PyMongoError."""
    ms = int(timeout_s * 1000)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        info: dict[str, Any] = client.admin.command("buildInfo")
        return info
    finally:
        client.close()


_FERRETDB: dict[str, bool] = {}


def is_ferretdb(mongodb_url: str) -> bool:
    """Whether the server at ``mongodb_url`` is FerretDB, to skip assertions FerretDB cannot satisfy.

    Asks ``buildInfo`` once per URL (FerretDB adds ``ferretdbVersion``); PyMongoError if none answers.
    """
    if mongodb_url not in _FERRETDB:
        _FERRETDB[mongodb_url] = "ferretdbVersion" in mongodb_build_info(mongodb_url)
    return _FERRETDB[mongodb_url]
