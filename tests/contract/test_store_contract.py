"""One contract for every ``MetadataStore`` backend: same inputs, same answers.

The ``backend`` fixture is parametrized over SQLite (a file in tmp_path) and MongoDB (the shared test server,
real MongoDB or FerretDB, one fresh database per test, dropped afterwards). ``backend.connect()`` opens one
more independent connection to the same data, for the concurrency checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.codec import Codec
from dlhub.common.errors import Unauthorized, ValidationFailed
from dlhub.common.messages import ErrorInfo, Result, Timings
from dlhub.common.payloads import FileEntry, PreviewColumn, TablePreview
from dlhub.registry.auth import Authenticator, create_token, hash_token, revoke_token
from dlhub.registry.clock import now_ms
from dlhub.registry.store import (
    AuditQuery,
    AuditRecord,
    MetadataStore,
    RegistryInstance,
    StoredVerification,
    TaskRecord,
    TokenRecord,
    VectorCheck,
)
from dlhub.registry.store.mongo import MongoMetadataStore
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from dlhub.registry.tasks import TaskTable
from tests.support.mongo import drop_database, mongo_config, resolve_mongodb_url, unique_database
from tests.support.polling import await_until

META = {"dlhub": {"name": "m", "visible_to": ["public"]}}

# Keys MongoDB rejects or interprets in stored documents, plus values whose JSON type must survive exactly.
ODD_METADATA: dict[str, Any] = {
    "dlhub": {"name": "m", "visible_to": ["public", "user:alice"]},
    "$set": {"x": 1},
    "$": "dollar alone",
    "a.b.c": {"$in": [1, 2], "inner.dot": {"$$deep": None}},
    "": "empty key",
    "_id": "not an id",
    "unicodé ключ 键": ["ü", "\u0000nul", "\U0001f600"],
    "numbers": {"int": 1, "float": 1.0, "neg": -0.5, "big": 2**62, "exp": 1e300},
    "nested": [[{"$k": [{"a.b": True}]}], {}, []],
    "order": {"z": 1, "a": 2, "m": 3},
}


@dataclass
class Backend:
    name: str
    connect: Callable[[], MetadataStore]
    opened: list[MetadataStore] = field(default_factory=list)

    async def open(self) -> MetadataStore:
        store = self.connect()
        await store.open()
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "mongodb"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "registry.sqlite3"
        b = Backend("sqlite", lambda: SQLiteMetadataStore(path))
        try:
            yield b
        finally:
            for store in b.opened:
                await store.close()
        return
    url = resolve_mongodb_url(request)
    database = unique_database()
    b = Backend("mongodb", lambda: MongoMetadataStore(mongo_config(url, database)))
    try:
        yield b
    finally:
        for store in b.opened:
            await store.close()
        await asyncio.to_thread(drop_database, url, database)


@pytest.fixture
async def store(backend: Backend) -> MetadataStore:
    return await backend.open()


async def publish(store: MetadataStore, owner: str = "alice", name: str = "m") -> int:
    record = await store.create_version(owner=owner, name=name, metadata=META, published_at_ms=now_ms())
    return record.version


# -- versions -----------------------------------------------------------------------------------------------


async def test_versions_allocate_1_2_3(store: MetadataStore) -> None:
    assert [await publish(store) for _ in range(3)] == [1, 2, 3]
    assert await publish(store, name="other") == 1
    assert await publish(store, owner="bob") == 1
    versions = await store.list_versions("alice", "m")
    assert [v.version for v in versions] == [1, 2, 3]
    assert all(v.status == "building" for v in versions)
    assert versions[0].metadata == META
    assert await store.list_servables() == [("alice", "m"), ("alice", "other"), ("bob", "m")]
    assert await store.list_servables("bob") == [("bob", "m")]
    assert await store.list_servables("carol") == []
    assert await store.list_versions("carol", "m") == []


async def test_concurrent_allocations_never_collide(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()  # two independent connections
    numbers = await asyncio.gather(*[publish(s) for _ in range(40) for s in (first, second)])
    assert sorted(numbers) == list(range(1, 81))
    stored = [v.version for v in await first.list_versions("alice", "m")]
    assert stored == list(range(1, 81))
    # different servables allocate independently, also concurrently
    others = await asyncio.gather(*[publish(first, name=f"n{i % 4}") for i in range(20)])
    assert sorted(others) == sorted(list(range(1, 6)) * 4)


async def test_record_round_trip(store: MetadataStore) -> None:
    created = await store.create_version(
        owner="alice",
        name="m",
        metadata=META,
        published_at_ms=1_700_000_000_123,
        package_sha256="f" * 64,
        package_format="zip",
        build_task_id="task-1",
        status="ready",
    )
    got = await store.get_version("alice", "m", 1)
    assert got == created
    assert got.package_format == "zip" and got.status == "ready" and got.published_at_ms == 1_700_000_000_123
    assert got.label == "alice/m@1" and got.visible_to == ("public",)
    assert await store.get_version("alice", "m", 2) is None
    assert await store.get_version("alice", "nope", 1) is None


async def test_metadata_with_odd_keys_round_trips(store: MetadataStore) -> None:
    created = await store.create_version(owner="alice", name="m", metadata=ODD_METADATA, published_at_ms=1)
    assert created.metadata == ODD_METADATA
    (listed,) = await store.list_versions("alice", "m")
    for record in (listed, await store.get_version("alice", "m", 1)):
        assert record is not None and record.metadata == ODD_METADATA
        assert list(record.metadata["order"]) == ["z", "a", "m"]  # key order is kept
        assert type(record.metadata["numbers"]["int"]) is int
        assert type(record.metadata["numbers"]["float"]) is float
        assert record.visible_to == ("public", "user:alice")


async def test_numbers_are_not_reused_after_delete(store: MetadataStore) -> None:
    for _ in range(3):
        await publish(store)
    assert await store.delete_versions("alice", "m", [3]) == [3]
    assert await store.delete_versions("alice", "m", [3]) == []
    assert await publish(store) == 4
    assert await store.delete_versions("alice", "m", [9, 1]) == [1]
    assert await store.delete_versions("alice", "m") == [2, 4]
    assert await store.list_versions("alice", "m") == []
    assert await store.list_servables() == []
    assert await publish(store) == 5
    assert await store.delete_versions("bob", "ghost") == []


async def test_status_updates(store: MetadataStore) -> None:
    await publish(store)
    await publish(store)
    building = await store.list_versions_with_status("building")
    assert [v.label for v in building] == ["alice/m@1", "alice/m@2"]
    ready = await store.set_version_status(
        "alice", "m", 1, status="ready", digest="d", files=("a", "b"), bundle_sha256="b" * 64
    )
    assert ready is not None and ready.status == "ready" and ready.files == ("a", "b") and ready.digest == "d"
    assert ready.bundle_sha256 == "b" * 64  # what Task Managers fetch the version by
    assert ready.metadata == META and ready.status_reason == ""
    failed = await store.set_version_status("alice", "m", 2, status="failed", status_reason="no model.pkl")
    assert failed is not None and failed.status_reason == "no model.pkl" and failed.files == ()
    assert failed.bundle_sha256 == ""
    assert await store.get_version("alice", "m", 1) == ready
    assert await store.list_versions_with_status("building") == []
    assert [v.version for v in await store.list_versions_with_status("ready")] == [1]
    assert [v.version for v in await store.list_versions_with_status("failed")] == [2]
    assert await store.set_version_status("alice", "m", 9, status="ready") is None


async def test_manifest_and_previews_round_trip(backend: Backend) -> None:
    store = await backend.open()
    await publish(store)
    manifest = (
        FileEntry(path="data/iris.csv", size_bytes=1234, sha256="a" * 64),
        FileEntry(path="dir/ü ключ.txt", size_bytes=0, sha256="b" * 64),
    )
    previews = (
        TablePreview(
            path="data/iris.csv",
            format="csv",
            columns=[PreviewColumn(name="$id.x", type="integer"), PreviewColumn(name="", type="empty")],
            rows=[["1", ""], ["2", "\u0000"]],
            truncated=True,
        ),
    )
    ready = await store.set_version_status(
        "alice",
        "m",
        1,
        status="ready",
        digest="d",
        files=("data/iris.csv",),
        manifest=manifest,
        previews=previews,
    )
    assert ready is not None and ready.manifest == manifest and ready.previews == previews
    assert await store.get_version("alice", "m", 1) == ready
    (listed,) = await store.list_versions("alice", "m")
    assert listed.manifest == manifest and listed.previews == previews
    assert await (await backend.open()).get_version("alice", "m", 1) == ready  # another connection
    # a version without a build outcome has none; a tombstone drops them with its files
    await publish(store)
    building = await store.get_version("alice", "m", 2)
    assert building is not None and building.manifest == () and building.previews == ()
    await store.mark_deleted("alice", "m", [1], deleted_by="alice", deleted_at_ms=1)
    tomb = await store.get_version("alice", "m", 1)
    assert tomb is not None and tomb.manifest == () and tomb.previews == ()


def linking(name: str, training: list[str], test: list[str] = []) -> dict[str, Any]:  # noqa: B006
    return {"dlhub": {"name": name, "visible_to": ["public"], "training_data": training, "test_data": test}}


async def test_linking_versions_reverse_lookup(store: MetadataStore) -> None:
    await store.create_version(
        owner="bob", name="m1", metadata=linking("m1", ["alice/iris@1"]), published_at_ms=1
    )
    await store.create_version(
        owner="bob",
        name="m1",
        metadata=linking("m1", ["alice/iris@2"], ["10.5281/Zenodo.7"]),
        published_at_ms=2,
    )
    await store.create_version(
        owner="alice",
        name="m2",
        metadata=linking("m2", [], ["alice/iris@1", "alice/other@1"]),
        published_at_ms=3,
    )
    await store.create_version(
        owner="carol", name="m3", metadata=linking("m3", ["alice/irises@1"]), published_at_ms=4
    )
    await publish(store, "dave", "plain")

    def labels(records: list[Any]) -> list[str]:
        return [r.label for r in records]

    assert labels(await store.list_linking_versions(["alice/iris"])) == ["alice/m2@1", "bob/m1@1", "bob/m1@2"]
    assert labels(await store.list_linking_versions(["doi:10.5281/zenodo.7"])) == ["bob/m1@2"]
    assert labels(await store.list_linking_versions(["alice/iris", "doi:10.5281/zenodo.7"])) == [
        "alice/m2@1",
        "bob/m1@1",
        "bob/m1@2",
    ]  # each version once, even when it names several targets
    assert labels(await store.list_linking_versions(["alice/iris"], limit=2)) == ["alice/m2@1", "bob/m1@1"]
    assert await store.list_linking_versions(["alice/nothing"]) == []
    assert await store.list_linking_versions([]) == []
    # tombstones and purged versions no longer link
    await store.mark_deleted("bob", "m1", [1], deleted_by="bob", deleted_at_ms=9)
    assert await store.delete_versions("alice", "m2") == [1]
    assert labels(await store.list_linking_versions(["alice/iris"])) == ["bob/m1@2"]
    assert labels(await store.list_linking_versions(["alice/irises"])) == ["carol/m3@1"]


async def test_package_refs(store: MetadataStore) -> None:
    for _ in range(2):
        await store.create_version(
            owner="alice",
            name="m",
            metadata=META,
            published_at_ms=1,
            package_sha256="abc",
            package_format="tar",
        )
    await store.create_version(owner="bob", name="m", metadata=META, published_at_ms=1, package_sha256="abc")
    assert await store.count_package_refs("abc") == 3
    assert await store.count_package_refs("nope") == 0
    await store.delete_versions("alice", "m", [1])
    assert await store.count_package_refs("abc") == 2
    await store.delete_versions("alice", "m")
    assert await store.count_package_refs("abc") == 1
    # tombstones do not hold on to their package blob
    await store.create_version(owner="bob", name="m", metadata=META, published_at_ms=1, package_sha256="abc")
    assert await store.count_package_refs("abc") == 2
    assert await store.mark_deleted("bob", "m", [1], deleted_by="bob", deleted_at_ms=1) == [1]
    assert await store.count_package_refs("abc") == 1
    await store.mark_deleted("bob", "m", deleted_by="bob", deleted_at_ms=1)
    assert await store.count_package_refs("abc") == 0


async def test_tombstones_keep_the_record_and_its_number(store: MetadataStore) -> None:
    full = {
        "datacite": {"titles": [{"title": "M"}], "creators": [{"creatorName": "A"}]},
        "dlhub": {"name": "m", "owner": "alice", "visible_to": ["user:alice"], "files": {"x": 1}},
        "servable": {"methods": {"run": {}}},
    }
    for _ in range(3):
        await store.create_version(
            owner="alice", name="m", metadata=full, published_at_ms=5, package_sha256="abc", status="ready"
        )
    await store.set_version_status("alice", "m", 2, status="ready", digest="d2", files=("f",))
    await store.set_deprecated("alice", "m", 2, deprecated=True, reason="old", at_ms=7)
    assert await store.mark_deleted("alice", "m", [2, 9], deleted_by="alice", deleted_at_ms=42) == [2]
    assert await store.mark_deleted("alice", "m", [2], deleted_by="alice", deleted_at_ms=43) == []
    tomb = await store.get_version("alice", "m", 2)
    assert tomb is not None and tomb.deleted and tomb.status == "deleted"
    assert (tomb.deleted_at_ms, tomb.deleted_by, tomb.published_at_ms) == (42, "alice", 5)
    assert tomb.metadata == {
        "datacite": full["datacite"],
        "dlhub": {"name": "m", "owner": "alice", "visible_to": ["user:alice"]},
    }
    assert tomb.visible_to == ("user:alice",)  # visibility survives, so tombstones stay hidden
    assert tomb.files == () and tomb.digest == "d2" and tomb.package_sha256 == "abc"
    assert not tomb.deprecated and tomb.deprecation_reason == ""
    # a tombstone is never revived by a late build outcome, nor deprecated
    assert await store.set_version_status("alice", "m", 2, status="ready") is None
    assert await store.set_deprecated("alice", "m", 2, deprecated=True) is None
    assert await store.get_version("alice", "m", 2) == tomb
    assert [v.status for v in await store.list_versions("alice", "m")] == ["ready", "deleted", "ready"]
    assert await store.list_versions_with_status("deleted") == [tomb]
    assert await store.mark_deleted("alice", "m", deleted_by="alice", deleted_at_ms=50) == [1, 3]
    assert [v.deleted_at_ms for v in await store.list_versions("alice", "m")] == [50, 42, 50]
    assert await store.list_servables() == []  # only tombstones left
    assert await publish(store) == 4  # numbers are never reused
    assert await store.list_servables("alice") == [("alice", "m")]
    assert await store.mark_deleted("bob", "ghost", deleted_by="bob", deleted_at_ms=1) == []


async def test_concurrent_tombstoning_claims_each_version_once(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    for _ in range(10):
        await publish(first)
    results = await asyncio.gather(
        *[s.mark_deleted("alice", "m", deleted_by="alice", deleted_at_ms=1) for s in (first, second) * 3]
    )
    claimed = [v for r in results for v in r]
    assert sorted(claimed) == list(range(1, 11))


async def test_deprecation(store: MetadataStore) -> None:
    await publish(store)
    await publish(store)
    record = await store.set_deprecated(
        "alice", "m", 1, deprecated=True, reason="use 2", replacement="alice/m@2", at_ms=1_700_000_000_000
    )
    assert record is not None and record.deprecated
    assert (record.deprecation_reason, record.deprecation_replacement) == ("use 2", "alice/m@2")
    assert record.deprecated_at_ms == 1_700_000_000_000 and record.status == "building"
    assert await store.get_version("alice", "m", 1) == record
    assert [v.deprecated for v in await store.list_versions("alice", "m")] == [True, False]
    # a build outcome does not clear the deprecation
    ready = await store.set_version_status("alice", "m", 1, status="ready", digest="d")
    assert ready is not None and ready.deprecated and ready.deprecation_reason == "use 2"
    cleared = await store.set_deprecated("alice", "m", 1, deprecated=False, reason="ignored", at_ms=5)
    assert cleared is not None and not cleared.deprecated
    assert (cleared.deprecation_reason, cleared.deprecation_replacement, cleared.deprecated_at_ms) == (
        "",
        "",
        0,
    )
    assert await store.set_deprecated("alice", "m", 9, deprecated=True) is None


# -- tasks --------------------------------------------------------------------------------------------------


def task(task_id: str, *, expires_at_ms: int, **changes: Any) -> TaskRecord:
    values: dict[str, Any] = {
        "task_id": task_id,
        "kind": "run",
        "state": "pending",
        "servable": "alice/m@1",
        "created_at_ms": 1000,
        "updated_at_ms": 1000,
        "expires_at_ms": expires_at_ms,
    }
    values.update(changes)
    return TaskRecord(**values)


async def test_task_save_get_replace_expire(store: MetadataStore) -> None:
    now = 1_700_000_000_000
    full = task(
        "t1",
        expires_at_ms=now + 1000,
        state="completed",
        submitter="alice",
        output_json=b'{"y":[1,2],"$k":{"a.b":1}}',
        error={"type": "x", "$odd": {"a.b": 1}},
        timings={"request_ms": 1.5, "queue_ms": 0.0},
    )
    await store.save_task(full)
    assert await store.get_task("t1", now_ms=now) == full
    assert await store.get_task("t1", now_ms=now + 999) == full
    assert await store.get_task("t1", now_ms=now + 1000) is None  # expired at its expiry instant
    assert await store.get_task("nope", now_ms=now) is None

    replaced = task("t1", expires_at_ms=now + 5000, state="running")
    await store.save_task(replaced)
    assert await store.get_task("t1", now_ms=now + 1000) == replaced

    await store.save_task(task("t2", expires_at_ms=now - 1))
    await store.save_task(task("t3", expires_at_ms=now))
    assert await store.get_task("t2", now_ms=now) is None  # expired records read as missing
    assert await store.delete_expired_tasks(now_ms=now) == 2
    assert await store.delete_expired_tasks(now_ms=now) == 0
    assert await store.get_task("t1", now_ms=now) == replaced
    assert await store.delete_expired_tasks(now_ms=now + 5000) == 1


async def test_task_ttl_expiry(store: MetadataStore) -> None:
    table = TaskTable(store, Codec(), ttl_s=0.2)
    task = await table.create(task_id="t1", kind="run", servable="alice/m@1", submitter=None, timeout_s=5)
    task = await table.mark_running(task)
    codec = Codec()
    result = Result(
        task_id="t1", ok=True, output=codec.encode_value({"y": [1, 2]}), timings=Timings(queue_ms=1)
    )
    await table.finish_run(task, result, request_ms=3.0)
    got = await table.get("t1")
    assert got is not None and got.state == "completed" and got.output_json == b'{"y":[1,2]}'
    assert got.timings is not None and got.timings["request_ms"] == 3.0

    async def expired() -> bool:  # expires on read, even before the sweep
        return await table.get("t1") is None

    await await_until(expired, timeout_s=5, message="the task to expire")
    assert await table.sweep() == 1
    assert await table.sweep() == 0


async def test_failed_task_keeps_error(store: MetadataStore) -> None:
    table = TaskTable(store, Codec(), ttl_s=60)
    task = await table.create(task_id="t2", kind="run", servable="alice/m@1", submitter="alice", timeout_s=5)
    error = ErrorInfo(code="servable_error", message="boom", exception_type="ValueError", step=0, topic="x")
    await table.finish_run(task, Result(task_id="t2", ok=False, error=error), request_ms=1.0)
    got = await store.get_task("t2", now_ms=now_ms())
    assert isinstance(got, TaskRecord)
    assert got.state == "failed" and got.submitter == "alice" and got.output_json is None
    assert got.error is not None and got.error["type"] == "servable_error" and got.error["step"] == 0


async def test_terminal_task_states_are_final(store: MetadataStore) -> None:
    table = TaskTable(store, Codec(), ttl_s=60, owner="registry-a", deadline_grace_s=2)
    before = now_ms()
    created = await table.create(task_id="t3", kind="run", servable="alice/m@1", submitter=None, timeout_s=5)
    assert created.owner == "registry-a"
    assert before + 7000 <= created.deadline_ms <= now_ms() + 7000
    running = await table.mark_running(created)
    codec = Codec()
    ok = Result(task_id="t3", ok=True, output=codec.encode_value(1))
    done = await table.finish_run(running, ok, request_ms=1.0)
    assert done.state == "completed" and done.output_json == b"1"

    # A late failure, a duplicate result with another output, a stale "running": all refused, the stored
    # outcome returned.
    late = await table.fail(running, error={"type": "deadline_exceeded", "message": "late"})
    assert late.state == "completed" and late.output_json == b"1"
    again = await table.finish_run(
        running, Result(task_id="t3", ok=True, output=codec.encode_value(2)), request_ms=1
    )
    assert again.output_json == b"1"
    assert (await table.mark_running(created)).state == "completed"
    stored = await table.get("t3")
    assert stored is not None and stored.state == "completed" and stored.output_json == b"1"
    assert stored.owner == "registry-a" and stored.deadline_ms == created.deadline_ms

    # The store's own guard: an open record is replaced, a terminal one or a missing one is not.
    now = now_ms()
    assert not await store.update_open_task(task("t3", expires_at_ms=now + 60_000, state="failed"))
    assert not await store.update_open_task(task("missing", expires_at_ms=now + 60_000, state="failed"))
    assert await store.get_task("missing", now_ms=now) is None
    await store.save_task(task("t4", expires_at_ms=now + 60_000))
    assert await store.update_open_task(task("t4", expires_at_ms=now + 60_000, state="failed"))
    assert not await store.update_open_task(task("t4", expires_at_ms=now + 60_000, state="completed"))


async def test_racing_outcomes_leave_exactly_one(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    now = now_ms()
    ids = [f"race{i}" for i in range(20)]
    for task_id in ids:
        await first.save_task(task(task_id, expires_at_ms=now + 60_000, state="running"))

    async def finish(store: MetadataStore, task_id: str, state: Any) -> bool:
        return await store.update_open_task(task(task_id, expires_at_ms=now + 60_000, state=state))

    wins = await asyncio.gather(
        *(finish(first, t, "completed") for t in ids), *(finish(second, t, "failed") for t in ids)
    )
    for index, task_id in enumerate(ids):
        completed_won, failed_won = wins[index], wins[len(ids) + index]
        assert completed_won != failed_won, task_id  # exactly one write landed
        stored = await first.get_task(task_id, now_ms=now)
        assert stored is not None and stored.state == ("completed" if completed_won else "failed")

    # A late "running" racing an outcome never leaves the task open.
    late = [f"late{i}" for i in range(20)]
    for task_id in late:
        await first.save_task(task(task_id, expires_at_ms=now + 60_000))
    await asyncio.gather(
        *(finish(first, t, "running") for t in late), *(finish(second, t, "failed") for t in late)
    )
    for task_id in late:
        stored = await first.get_task(task_id, now_ms=now)
        assert stored is not None and stored.state == "failed", task_id


async def test_a_takeover_claims_an_open_task_once_and_its_owner_then_writes_nothing(
    backend: Backend,
) -> None:
    """Several registries on one store (takeover.py): a gone owner's open task moves to one new owner."""
    first, second = await backend.open(), await backend.open()
    exp = now_ms() + 60_000
    owned = task("owned", expires_at_ms=exp, owner="a", state="running")
    await first.save_task(owned)
    # Two registries take over from "a" at once: one wins.
    wins = await asyncio.gather(
        first.claim_task(owned, new_owner="b"), second.claim_task(owned, new_owner="c")
    )
    assert sorted(wins) == [False, True]
    winner = "b" if wins[0] else "c"
    stored = await first.get_task("owned", now_ms=now_ms())
    assert stored is not None and stored.owner == winner and stored.state == "running"
    assert not await first.claim_task(owned, new_owner="d")  # a stale record of the old owner claims nothing

    # The old owner, back: neither its "running" nor its outcome lands; the new owner's does.
    assert not await first.update_open_task(owned, owner="a")
    assert not await first.update_open_task(replace(owned, state="completed"), owner="a")
    done = replace(owned, owner=winner, state="completed", output_json=b"1")
    assert await second.update_open_task(done, owner=winner)
    assert await first.get_task("owned", now_ms=now_ms()) == done
    # Ended tasks are never claimed.
    assert not await first.claim_task(done, new_owner="e")


async def test_an_owners_outcome_and_a_takeover_exclude_each_other(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    exp = now_ms() + 60_000
    records = [task(f"own{i}", expires_at_ms=exp, owner="a", state="running") for i in range(20)]
    for record in records:
        await first.save_task(record)
    outcomes = [replace(r, state="completed", output_json=b"2") for r in records]
    wins = await asyncio.gather(
        *(first.update_open_task(o, owner="a") for o in outcomes),
        *(second.claim_task(r, new_owner="b") for r in records),
    )
    for index, record in enumerate(records):
        ended, claimed = wins[index], wins[len(records) + index]
        assert ended != claimed, record.task_id  # exactly one of the two
        stored = await first.get_task(record.task_id, now_ms=now_ms())
        assert stored is not None
        if ended:
            assert stored.state == "completed" and stored.owner == "a", stored
        else:
            assert stored.state == "running" and stored.owner == "b", stored


async def test_registry_heartbeats(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    assert await first.list_registries() == []
    await first.beat_registry("r1", url="http://127.0.0.1:1", now_ms=1000)
    await second.beat_registry("r2", url="http://127.0.0.1:2", now_ms=1500)
    await first.beat_registry("r1", url="http://127.0.0.1:1", now_ms=2000)  # a later beat replaces
    peers = sorted(await second.list_registries(), key=lambda p: p.instance_id)
    assert peers == [
        RegistryInstance(instance_id="r1", url="http://127.0.0.1:1", last_seen_ms=2000),
        RegistryInstance(instance_id="r2", url="http://127.0.0.1:2", last_seen_ms=1500),
    ]


async def test_open_tasks_by_owner_and_deadline(store: MetadataStore) -> None:
    now = now_ms()
    exp = now + 60_000
    records = [
        task("a-open-overdue", expires_at_ms=exp, owner="a", deadline_ms=now - 10, created_at_ms=1),
        task("a-running", expires_at_ms=exp, owner="a", deadline_ms=now + 60_000, state="running",
             created_at_ms=2),
        task("a-done-overdue", expires_at_ms=exp, owner="a", deadline_ms=now - 10, state="completed"),
        task("b-overdue", expires_at_ms=exp, owner="b", deadline_ms=now - 5, state="running",
             created_at_ms=3),
        task("legacy", expires_at_ms=exp, created_at_ms=4),  # no owner, no deadline (older records)
    ]  # fmt: skip
    for record in records:
        await store.save_task(record)
    ids = [t.task_id for t in await store.list_open_tasks(owner="a")]
    assert ids == ["a-open-overdue", "a-running"]
    overdue = [t.task_id for t in await store.list_open_tasks(deadline_before_ms=now)]
    assert overdue == ["a-open-overdue", "b-overdue"]
    assert [t.task_id for t in await store.list_open_tasks(owner="b", deadline_before_ms=now)] == [
        "b-overdue"
    ]
    everything = [t.task_id for t in await store.list_open_tasks()]
    assert everything == ["a-open-overdue", "a-running", "b-overdue", "legacy"]
    assert len(await store.list_open_tasks(limit=2)) == 2
    legacy = await store.get_task("legacy", now_ms=now)
    assert legacy is not None and legacy.owner == "" and legacy.deadline_ms == 0


async def test_task_documents_without_owner_or_deadline_read_with_defaults(store: MetadataStore) -> None:
    """Records written before tasks had an owner and a deadline (raw rows/documents of the old shape)."""
    now = now_ms()
    if isinstance(store, MongoMetadataStore):
        from dlhub.registry.store.mongo import _task_doc

        doc = _task_doc(task("old", expires_at_ms=now + 60_000))
        del doc["owner"], doc["deadline_ms"]
        await store.tasks.insert_one(doc)
    else:
        assert isinstance(store, SQLiteMetadataStore)
        await store.db.execute(
            "INSERT INTO tasks (task_id, kind, state, servable, created_at_ms, updated_at_ms, expires_at_ms) "
            "VALUES ('old', 'run', 'pending', 'alice/m@1', 1000, 1000, ?)",
            (now + 60_000,),
        )
    old = await store.get_task("old", now_ms=now)
    assert old is not None and old.owner == "" and old.deadline_ms == 0 and old.state == "pending"
    assert [t.task_id for t in await store.list_open_tasks()] == ["old"]
    assert await store.list_open_tasks(deadline_before_ms=now) == []  # never reaped: it has no deadline
    assert await store.update_open_task(task("old", expires_at_ms=now + 60_000, state="failed"))


async def test_sqlite_file_of_an_older_release_gains_the_task_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    import sqlite3

    with sqlite3.connect(path) as db:  # the tasks table as the first release created it
        db.execute(
            "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, "
            "servable TEXT NOT NULL, submitter TEXT, created_at_ms INTEGER NOT NULL, "
            "updated_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL, output BLOB, error TEXT, "
            "timings TEXT)"
        )
        db.execute(
            "INSERT INTO tasks VALUES ('t', 'run', 'running', 'alice/m@1', NULL, 1, 1, ?, NULL, NULL, NULL)",
            (now_ms() + 60_000,),
        )
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        old = await store.get_task("t", now_ms=now_ms())
        assert old is not None and old.state == "running" and old.owner == "" and old.deadline_ms == 0
        table = TaskTable(store, Codec(), ttl_s=60, owner="r")
        assert (await table.fail(old, error={"type": "x", "message": "y"})).state == "failed"
    finally:
        await store.close()


# -- tokens -------------------------------------------------------------------------------------------------


async def test_token_records(store: MetadataStore) -> None:
    plain = TokenRecord(token_hash="a" * 64, user="alice", created_at_ms=5)
    full = TokenRecord(token_hash="b" * 64, user="bob", created_at_ms=6, label="ci", expires_at_ms=99)
    await store.add_token(plain)
    await store.add_token(full)
    assert await store.get_token("a" * 64) == plain
    assert await store.get_token("b" * 64) == full
    assert await store.get_token("c" * 64) is None
    assert await store.revoke_token("a" * 64)
    assert await store.revoke_token("a" * 64)  # revoking twice still reports an existing token
    assert not await store.revoke_token("c" * 64)
    revoked = await store.get_token("a" * 64)
    assert revoked is not None and revoked.revoked and revoked.user == "alice"


async def test_token_create_and_lookup_by_hash(store: MetadataStore) -> None:
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


async def test_expired_token(store: MetadataStore) -> None:
    token = await create_token(store, "alice", expires_in_s=-1)
    with pytest.raises(Unauthorized):
        await Authenticator(store).authenticate(f"Bearer {token}")


async def test_token_user_name_checked(store: MetadataStore) -> None:
    with pytest.raises(ValidationFailed):
        await create_token(store, "not a name")


# -- memoized results ---------------------------------------------------------------------------------------


async def test_memo_put_get_replace_expire(store: MetadataStore) -> None:
    now = now_ms()
    key = "ab" * 32
    assert await store.get_memo(key, now_ms=now) is None
    value = b'{"y":[1,2]}' + bytes(range(256))  # stored as bytes, exactly
    await store.put_memo(key, value, expires_at_ms=now + 60_000)
    assert await store.get_memo(key, now_ms=now) == value
    await store.put_memo(key, b'"new"', expires_at_ms=now + 60_000)
    assert await store.get_memo(key, now_ms=now) == b'"new"'
    assert await store.get_memo("cd" * 32, now_ms=now) is None
    # Expired entries read as missing at and after their expiry.
    assert await store.get_memo(key, now_ms=now + 60_000) is None
    await store.put_memo("ef" * 32, b"1", expires_at_ms=now - 1)
    assert await store.get_memo("ef" * 32, now_ms=now) is None


async def test_memo_is_shared_between_connections(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    expires = now_ms() + 60_000
    await first.put_memo("k1", b'"shared"', expires_at_ms=expires)
    assert await second.get_memo("k1", now_ms=now_ms()) == b'"shared"'
    await asyncio.gather(*(second.put_memo(f"c{i}", b"%d" % i, expires_at_ms=expires) for i in range(20)))
    got = await asyncio.gather(*(first.get_memo(f"c{i}", now_ms=now_ms()) for i in range(20)))
    assert got == [b"%d" % i for i in range(20)]


# -- test-vector verifications ------------------------------------------------------------------------------


async def test_latest_verification_per_version(backend: Backend) -> None:
    store = await backend.open()
    v1, v2 = await publish(store), await publish(store)
    assert await store.get_verification("alice", "m", v1) is None
    at_publish = StoredVerification(
        at_unix_s=1_700_000_000.25,
        passed=True,
        trigger="publish",
        vectors=(VectorCheck(index=0, passed=True), VectorCheck(index=1, passed=True)),
    )
    await store.save_verification("alice", "m", v1, at_publish)
    assert await store.get_verification("alice", "m", v1) == at_publish
    assert await store.get_verification("alice", "m", v2) is None  # per version
    assert await store.get_verification("alice", "other", v1) is None
    failed = StoredVerification(
        at_unix_s=1_700_000_100.5,
        passed=False,
        trigger="verify",
        vectors=(
            VectorCheck(index=0, passed=True),
            VectorCheck(
                index=1, passed=False, message='output["ключ"]: expected 4, got 5 (rel 1e-09, abs 0)'
            ),
        ),
    )
    await store.save_verification("alice", "m", v1, failed)  # the latest replaces the previous one
    assert await store.get_verification("alice", "m", v1) == failed
    await store.close()
    again = await backend.open()  # kept across connections and restarts
    assert await again.get_verification("alice", "m", v1) == failed
    # a purged version takes its verification along (a reused number never shows a stale one)
    assert await again.delete_versions("alice", "m", [v1]) == [v1]
    assert await again.get_verification("alice", "m", v1) is None


# -- lifecycle ----------------------------------------------------------------------------------------------


async def test_data_survives_reopen(backend: Backend) -> None:
    store = await backend.open()
    await publish(store)
    await store.add_token(TokenRecord(token_hash="a" * 64, user="alice", created_at_ms=1))
    await store.close()
    await store.close()  # closing twice is harmless
    again = await backend.open()
    assert [v.version for v in await again.list_versions("alice", "m")] == [1]
    assert await publish(again) == 2
    assert await again.get_token("a" * 64) is not None


# -- identity: groups, linked identities, access, audit -----------------------------------------------------


async def test_group_membership(store: MetadataStore) -> None:
    assert await store.add_group_member("lab", "bob")
    assert not await store.add_group_member("lab", "bob")  # already a member
    assert await store.add_group_member("lab", "alice")
    assert await store.add_group_member("other", "bob")
    assert await store.group_members("lab") == ["alice", "bob"]
    assert await store.groups_of("bob") == ["lab", "other"]
    assert await store.remove_group_member("lab", "bob")
    assert not await store.remove_group_member("lab", "bob")
    assert await store.groups_of("bob") == ["other"]
    caller = await Authenticator(store, cache_ttl_s=0.0).authenticate(
        f"Bearer {await create_token(store, 'bob')}"
    )
    assert caller.identities == ("public", "user:bob", "group:other") and caller.groups == ("other",)


async def test_identity_links(store: MetadataStore) -> None:
    assert await store.user_for_identities(["id-1", "id-2"]) is None
    assert not await store.user_has_identities("alice")
    await store.link_identities("alice", ["id-1", "id-2"])
    await store.link_identities("mallory", ["id-2", "id-3"])  # id-2 keeps its user
    assert await store.user_for_identities(["id-2"]) == "alice"
    assert await store.user_for_identities(["zzz", "id-1"]) == "alice"
    assert await store.user_for_identities(["id-3"]) == "mallory"
    assert await store.user_has_identities("alice")


async def test_set_access_rewrites_every_version(store: MetadataStore) -> None:
    for _ in range(2):
        await store.create_version(owner="alice", name="m", metadata=ODD_METADATA, published_at_ms=1)
    await store.mark_deleted("alice", "m", [1], deleted_by="alice", deleted_at_ms=2)
    changed = await store.set_access("alice", "m", visible_to=["group:lab"], maintainers=["user:bob"])
    assert changed == [1, 2]
    for record in await store.list_versions("alice", "m"):
        assert record.visible_to == ("group:lab",) and record.maintainers == ("user:bob",)
    live = await store.get_version("alice", "m", 2)
    assert live is not None and live.metadata["$set"] == {"x": 1}  # the rest of the document is untouched
    assert await store.set_access("alice", "nope", visible_to=[], maintainers=[]) == []


async def test_audit_log(store: MetadataStore) -> None:
    for i, (actor, action) in enumerate([("alice", "publish"), ("bob", "update"), ("alice", "delete")]):
        detail = {"n": i, "$odd.key": [1]}
        await store.add_audit(
            AuditRecord(at_ms=1000 + i, actor=actor, action=action, target="alice/m", detail=detail)
        )
    events = await store.list_audit(AuditQuery())
    assert [e.action for e in events] == ["delete", "update", "publish"]  # newest first
    assert events[0].detail == {"n": 2, "$odd.key": [1]}
    assert [e.action for e in await store.list_audit(AuditQuery(actor="alice"))] == ["delete", "publish"]
    assert [e.action for e in await store.list_audit(AuditQuery(action="update"))] == ["update"]
    window = await store.list_audit(AuditQuery(since_ms=1001, until_ms=1002))
    assert [e.action for e in window] == ["update"]
    assert len(await store.list_audit(AuditQuery(limit=1))) == 1
    token = await create_token(store, "carol", label="ci")
    created = (await store.list_audit(AuditQuery(action="token.create")))[0]
    assert created.target == "user:carol" and token not in str(created.detail)
    assert str(created.detail["token"]) == "…" + hash_token(token)[-6:]


async def test_pending_index_updates_are_kept_until_cleared_with_their_latest_mark(
    store: MetadataStore,
) -> None:
    assert await store.list_index_pending() == []
    await store.mark_index_pending("alice", "b", "m1")
    await store.mark_index_pending("alice", "a", "m2")
    await store.mark_index_pending("alice", "b", "m3")  # a newer failure replaces the mark
    assert await store.list_index_pending() == [("alice", "a", "m2"), ("alice", "b", "m3")]
    assert not await store.clear_index_pending("alice", "b", "m1")  # an older mark clears nothing
    assert await store.list_index_pending() == [("alice", "a", "m2"), ("alice", "b", "m3")]
    assert await store.clear_index_pending("alice", "b", "m3")
    assert await store.clear_index_pending("alice", "a", "m2")
    assert await store.list_index_pending() == []
