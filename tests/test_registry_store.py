"""The SQLite MetadataStore: versions, tasks with TTL, tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.common.codec import Codec
from libs.common.errors import Unauthorized, ValidationFailed
from libs.common.messages import ErrorInfo, Result, Timings
from services.registry.auth import Authenticator, create_token, hash_token, revoke_token
from services.registry.sqlite_store import SQLiteMetadataStore
from services.registry.store import TaskRecord
from services.registry.tasks import TaskTable, now_ms

META = {"dlhub": {"name": "m", "visible_to": ["public"]}}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMetadataStore]:
    s = SQLiteMetadataStore(tmp_path / "registry.sqlite3")
    await s.open()
    yield s
    await s.close()


async def publish(store: SQLiteMetadataStore, owner: str = "alice", name: str = "m") -> int:
    record = await store.create_version(owner=owner, name=name, metadata=META, published_at_ms=now_ms())
    return record.version


async def test_versions_allocate_1_2_3(store: SQLiteMetadataStore) -> None:
    assert [await publish(store) for _ in range(3)] == [1, 2, 3]
    assert await publish(store, name="other") == 1
    assert await publish(store, owner="bob") == 1
    versions = await store.list_versions("alice", "m")
    assert [v.version for v in versions] == [1, 2, 3]
    assert all(v.status == "building" for v in versions)
    assert versions[0].metadata == META
    assert await store.list_servables() == [("alice", "m"), ("alice", "other"), ("bob", "m")]
    assert await store.list_servables("bob") == [("bob", "m")]


async def test_concurrent_allocations_never_collide(store: SQLiteMetadataStore, tmp_path: Path) -> None:
    second = SQLiteMetadataStore(tmp_path / "registry.sqlite3")  # a second connection to the same file
    await second.open()
    try:
        numbers = await asyncio.gather(*[publish(s) for _ in range(20) for s in (store, second)])
    finally:
        await second.close()
    assert sorted(numbers) == list(range(1, 41))


async def test_numbers_are_not_reused_after_delete(store: SQLiteMetadataStore) -> None:
    for _ in range(3):
        await publish(store)
    assert await store.delete_versions("alice", "m", [3]) == [3]
    assert await store.delete_versions("alice", "m", [3]) == []
    assert await publish(store) == 4
    assert await store.delete_versions("alice", "m") == [1, 2, 4]
    assert await store.list_versions("alice", "m") == []
    assert await publish(store) == 5


async def test_status_updates(store: SQLiteMetadataStore) -> None:
    await publish(store)
    ready = await store.set_version_status("alice", "m", 1, status="ready", digest="d", files=("a", "b"))
    assert ready is not None and ready.status == "ready" and ready.files == ("a", "b") and ready.digest == "d"
    assert await store.list_versions_with_status("building") == []
    assert await store.set_version_status("alice", "m", 9, status="ready") is None


async def test_package_refs(store: SQLiteMetadataStore) -> None:
    for _ in range(2):
        await store.create_version(
            owner="alice",
            name="m",
            metadata=META,
            published_at_ms=1,
            package_sha256="abc",
            package_format="tar",
        )
    assert await store.count_package_refs("abc") == 2
    await store.delete_versions("alice", "m", [1])
    assert await store.count_package_refs("abc") == 1


async def test_task_ttl_expiry(store: SQLiteMetadataStore) -> None:
    table = TaskTable(store, Codec(), ttl_s=0.2)
    task = await table.create(task_id="t1", kind="run", servable="alice/m@1", submitter=None)
    task = await table.mark_running(task)
    codec = Codec()
    result = Result(
        task_id="t1", ok=True, output=codec.encode_value({"y": [1, 2]}), timings=Timings(queue_ms=1)
    )
    await table.finish_run(task, result, request_ms=3.0)
    got = await table.get("t1")
    assert got is not None and got.state == "completed" and got.output_json == b'{"y":[1,2]}'
    assert got.timings is not None and got.timings["request_ms"] == 3.0
    deadline = time.monotonic() + 5
    while await table.get("t1") is not None:  # expires on read, even before the sweep
        assert time.monotonic() < deadline, "task did not expire"
        await asyncio.sleep(0.02)
    assert await table.sweep() == 1
    assert await table.sweep() == 0


async def test_failed_task_keeps_error(store: SQLiteMetadataStore) -> None:
    table = TaskTable(store, Codec(), ttl_s=60)
    task = await table.create(task_id="t2", kind="run", servable="alice/m@1", submitter="alice")
    error = ErrorInfo(code="servable_error", message="boom", exception_type="ValueError", step=0, topic="x")
    await table.finish_run(task, Result(task_id="t2", ok=False, error=error), request_ms=1.0)
    got = await store.get_task("t2", now_ms=now_ms())
    assert isinstance(got, TaskRecord)
    assert got.state == "failed" and got.submitter == "alice"
    assert got.error is not None and got.error["type"] == "servable_error" and got.error["step"] == 0


async def test_token_create_and_lookup_by_hash(store: SQLiteMetadataStore) -> None:
    token = await create_token(store, "alice", label="laptop")
    assert token.startswith("dlh_") and len(token) > 40
    record = await store.get_token(hash_token(token))
    assert record is not None and record.user == "alice" and record.label == "laptop" and not record.revoked
    assert await store.get_token(token) is None  # the secret itself is never stored

    auth = Authenticator(store, cache_ttl_s=0.0)
    caller = await auth.authenticate(f"Bearer {token}")
    assert caller.user == "alice" and caller.identities == ("public", "user:alice")
    assert (await auth.authenticate(None)).identities == ("public",)
    with pytest.raises(Unauthorized):
        await auth.authenticate("Bearer nope")
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Basic {token}")
    assert await revoke_token(store, token)
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {token}")


async def test_expired_token(store: SQLiteMetadataStore) -> None:
    token = await create_token(store, "alice", expires_in_s=-1)
    with pytest.raises(Unauthorized):
        await Authenticator(store).authenticate(f"Bearer {token}")


async def test_token_user_name_checked(store: SQLiteMetadataStore) -> None:
    with pytest.raises(ValidationFailed):
        await create_token(store, "not a name")
