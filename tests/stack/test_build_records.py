"""Build records in the registry (issue 11): the capped log, the store methods (SQLite and MongoDB), the
tracker saving a record as events arrive, and GET .../build (plain and followed) against the real embedded
stack, with every answer validated against the generated OpenAPI document; `dlhub publish` and
`dlhub build-log` on the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.client.sdk import TaskHandle
from dlhub.common.config import StoreConfig
from dlhub.common.payloads import BuildEvent, BuildOutcome, StateChange
from dlhub.registry.builds import BuildTracker, CappedLog, marker, new_build
from dlhub.registry.http.builds import events_between, new_lines
from dlhub.registry.http.openapi import build_openapi
from dlhub.registry.store import MetadataStore, StoredBuild, VersionRecord
from dlhub.registry.store.mongo import MongoMetadataStore
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique

SPEC = build_openapi()
BUILD_PATH = "/servables/{owner}/{name}/versions/{version}/build"


def validate(body: Any, path: str, status: int = 200, content_type: str = "application/json") -> None:
    """Validate a real answer against the documented schema of GET ``path``."""
    schema = SPEC["paths"][path]["get"]["responses"][str(status)]["content"][content_type]["schema"]
    jsonschema.Draft202012Validator(dict(schema) | {"components": SPEC["components"]}).validate(body)


def component(body: Any, name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


# -- the capped log ------------------------------------------------------------------------------------------


def test_capped_log_keeps_head_and_tail_and_counts_what_it_drops() -> None:
    capped = CappedLog(200)  # 100 bytes for the head, 100 for the tail
    for i in range(100):
        capped.add(f"line {i:03d}")  # 9 bytes each with the newline
    lines = capped.lines()
    assert lines[0] == "line 000" and lines[-1] == "line 099"
    assert sum(len(line) + 1 for line in lines if not line.startswith("[...")) <= 200
    assert lines[len(capped.head)] == marker(capped.dropped)
    assert len(capped.head) + capped.dropped + len(capped.tail) == 100
    # A stored capped log continues where it stopped.
    again = CappedLog(200, lines, capped.dropped)
    again.add("line 100")
    assert again.head == capped.head and again.lines()[-1] == "line 100"
    assert again.dropped == capped.dropped + 1
    # Under the cap nothing is dropped.
    small = CappedLog(1 << 20, ["a", "b"])
    assert small.lines() == ["a", "b"] and small.dropped == 0


def _stored(log: list[str], dropped: int, states: list[str]) -> StoredBuild:
    return StoredBuild(
        servable="a/b@1",
        state=states[-1],  # type: ignore[arg-type]
        states=[StateChange(state=s, at_unix_s=float(i)) for i, s in enumerate(states)],  # type: ignore[arg-type]
        log=log,
        dropped_lines=dropped,
    )


def test_followers_get_only_what_is_new_even_across_the_cap() -> None:
    old = _stored(["a", "b"], 0, ["queued"])
    new = _stored(["a", "b", "c", "d"], 0, ["queued", "resolving"])
    events = events_between(old, new)
    assert [e.state for e in events] == ["resolving", msgspec_unset()]
    assert events[-1].lines == ["c", "d"]
    # 10 lines logged: head a, b; 5 dropped; tail 8, 9, 10 (numbered from 1).
    capped = _stored(["a", "b", marker(5), "8", "9", "10"], 5, ["queued", "installing", "failed"])
    capped.error = "boom"
    assert new_lines(capped, 8) == ["9", "10"]
    assert new_lines(capped, 1) == ["b", marker(5), "8", "9", "10"]
    assert new_lines(capped, 4) == [marker(3), "8", "9", "10"]
    events = events_between(_stored(["a"], 0, ["queued"]), capped)
    assert events[-1].state == "failed" and events[-1].error == "boom"  # the terminal state comes last


def msgspec_unset() -> Any:
    import msgspec

    return msgspec.UNSET


# -- the store methods, on both backends ---------------------------------------------------------------------


async def _store_round_trip(store: MetadataStore) -> None:
    owner, name = "alice", unique("store")
    version = await store.create_version(owner=owner, name=name, metadata={"dlhub": {}}, published_at_ms=1)
    assert version.build_state == "" and version.environment == ""
    assert await store.get_build(owner, name, 1) is None
    build = new_build(version)
    build.log.append("queued")
    await store.save_build(owner, name, 1, build)
    stored = await store.get_build(owner, name, 1)
    assert stored is not None and stored.state == "queued" and stored.log == ["queued"]
    got = await store.get_version(owner, name, 1)
    assert got is not None and got.build_state == "queued" and got.environment == ""
    build.state, build.environment, build.lock = "ready", "venv-abc", "six==1.16.0 --hash=sha256:x\n"
    await store.save_build(owner, name, 1, build)
    stored = await store.get_build(owner, name, 1)
    assert stored == build
    got = (await store.list_versions(owner, name))[0]
    assert got.build_state == "ready" and got.environment == "venv-abc"


def test_sqlite_store_saves_build_records(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteMetadataStore(tmp_path / "registry.db")
        await store.open()
        try:
            await _store_round_trip(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_mongodb_store_saves_build_records(mongodb_url: str) -> None:
    async def main() -> None:
        store = MongoMetadataStore(
            StoreConfig(backend="mongodb", mongodb_url=mongodb_url, mongodb_database=unique("builds"))
        )
        await store.open()
        try:
            await _store_round_trip(store)
        finally:
            await store.db.client.drop_database(store.database_name)
            await store.close()

    asyncio.run(main())


def test_tracker_saves_state_changes_at_once_and_lines_in_batches(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteMetadataStore(tmp_path / "registry.db")
        await store.open()
        try:
            version = await store.create_version(
                owner="alice", name="t", metadata={"dlhub": {}}, published_at_ms=1
            )
            saved: list[str] = []
            tracker = BuildTracker(
                store,
                version,
                new_build(version),
                max_log_bytes=400,
                save_interval_s=0.3,
                on_state_saved=lambda: saved.append("state"),
            )
            await tracker.save()
            tracker.start()
            tracker.apply([BuildEvent(state="resolving", at_unix_s=time.time())])
            await _until(store, version, lambda b: b.state == "resolving")
            tracker.apply([BuildEvent(lines=[f"installing package {i}" for i in range(100)])])
            await _until(store, version, lambda b: b.dropped_lines > 0)
            tracker.apply([BuildEvent(state="ready", at_unix_s=time.time())])  # the registry decides ready
            tracker.environment(BuildOutcome(digest="d", files=[], size_bytes=0, path="", environment="e1"))
            tracker.set_state("ready")
            await tracker.close()
            build = await store.get_build("alice", "t", 1)
            assert build is not None
            assert [s.state for s in build.states] == ["queued", "resolving", "ready"]
            assert build.total_lines == 100 and marker(build.dropped_lines) in build.log
            assert build.log[0] == "installing package 0" and build.log[-1] == "installing package 99"
            assert sum(len(line) + 1 for line in build.log) <= 400 + len(marker(build.dropped_lines)) + 1
            record = await store.get_version("alice", "t", 1)
            assert record is not None and (record.build_state, record.environment) == ("ready", "e1")
            assert saved == ["state", "state", "state"]
        finally:
            await store.close()

    asyncio.run(main())


async def _until(store: MetadataStore, version: VersionRecord, predicate: Any, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        build = await store.get_build(version.owner, version.name, version.version)
        if build is not None and predicate(build):
            return
        assert time.monotonic() < deadline, f"timed out; the record is {build}"
        await asyncio.sleep(0.02)


# -- the embedded stack ------------------------------------------------------------------------------------


def function_doc(name: str, function: str, **common: Any) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module="e2efns",
        function=function,
        files=["e2efns.py"],
        title=f"{function} with a build record",
        authors=["Doe, Jane"],
        **common,
    )


def http_get(stack: StackInfo, path: str, user: str | None = "alice", **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.tokens[user]}"} if user else {}
    return httpx.get(stack.api + path, headers=headers, params=params, timeout=30)


def test_a_published_version_has_a_build_record(stack: StackInfo, alice: DLHubClient, pkg_dir: Path) -> None:
    name = unique("rec")
    reply = alice.publish(function_doc(name, "noop"), base_dir=pkg_dir)
    path = f"/servables/alice/{name}/versions/1/build"
    response = http_get(stack, path)
    assert response.status_code == 200, response.text
    record = response.json()
    validate(record, BUILD_PATH)
    assert record["servable"] == f"alice/{name}@1" and record["state"] == "ready"
    assert record["states"][0]["state"] == "queued"
    assert record["states"][-1]["state"] == "ready" and record["error"] == ""
    assert record["environment"] == "" and record["backend"] == ""  # the shared stack
    assert any("published" in line for line in record["log"])
    assert any("extracted the package" in line for line in record["log"])  # the builder's own lines
    assert alice.build_log(f"alice/{name}@1") == record
    assert alice.build_log(f"alice/{name}")["servable"] == record["servable"]
    # describe and versions carry the build state and the environment.
    described = alice.describe(reply["shorthand_name"])
    assert described["build_state"] == "ready" and described["environment"] == ""
    versions = alice.versions(reply["shorthand_name"])
    assert versions[0]["build_state"] == "ready" and versions[0]["environment"] == ""
    # Following a finished build answers the record alone, as NDJSON.
    streamed = http_get(stack, path, follow="true")
    assert streamed.status_code == 200 and streamed.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines() if line]
    assert len(lines) == 1 and lines[0]["state"] == "ready"
    validate(lines[0], BUILD_PATH, content_type="application/x-ndjson")
    assert list(alice.build_log(f"alice/{name}@1", follow=True)) == lines
    # A pipeline has nothing to build: its record is ready at once.
    pipeline = alice.publish_pipeline(unique("pipe"), [f"alice/{name}@1"], title="p", authors=["Doe, Jane"])
    piped = alice.build_log(f"{pipeline['shorthand_name']}@1")
    validate(piped, BUILD_PATH)
    assert piped["state"] == "ready" and "nothing to build" in piped["log"][0]
    assert http_get(stack, f"/servables/{pipeline['shorthand_name']}/versions/1/export").status_code == 400


def test_build_record_visibility_follows_describe(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("private")
    alice.publish(function_doc(name, "noop", visible_to=["user:alice"]), base_dir=pkg_dir)
    path = f"/servables/alice/{name}/versions/1/build"
    assert http_get(stack, path).status_code == 200
    for user in ("bob", None):
        response = http_get(stack, path, user=user)
        assert response.status_code == 404, response.text
        component(response.json(), "Error")
    assert http_get(stack, f"/servables/alice/{name}/versions/2/build").status_code == 404
    assert http_get(stack, f"/servables/alice/{name}/versions/1/build", follow="maybe").status_code == 400
    alice.delete(f"alice/{name}")
    gone = http_get(stack, path)
    assert gone.status_code == 410
    component(gone.json(), "Error")


def test_a_failed_build_records_the_same_error_as_the_version(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("broken")
    document = function_doc(name, "noop")
    document["dlhub"]["files"] = {"other": ["e2efns.py"]}
    package = _tar({"other.py": b"x = 1\n"})  # the declared e2efns.py is missing
    alice.publish(document, package=package, wait=False)
    record = wait_until(lambda: finished(alice, f"alice/{name}@1"), timeout_s=60, message="the failed build")
    assert record["state"] == "failed"
    validate(record, BUILD_PATH)
    version = wait_until(
        lambda: (v := alice.versions(f"alice/{name}")[0])["status"] == "failed" and v,
        timeout_s=30,
        message="failed version",
    )
    assert record["error"] and record["error"] == version["status_reason"]
    assert "e2efns.py" in record["error"]
    assert version["build_state"] == "failed"


def finished(client: DLHubClient, ref: str) -> dict[str, Any] | None:
    record = client.build_log(ref)
    return record if record["state"] in ("ready", "failed") else None


def _tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cli(stack: StackInfo, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = stack.env | {"DLHUB_URL": stack.url, "DLHUB_TOKEN": stack.tokens["alice"]}
    return subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )


def test_cli_publish_shows_progress_and_build_log_prints_the_record(stack: StackInfo, pkg_dir: Path) -> None:
    name = unique("clirec")
    metadata = pkg_dir / f"{name}.json"
    metadata.write_text(json.dumps(function_doc(name, "noop")))
    published = cli(stack, "publish", str(metadata))
    assert published.returncode == 0, published.stderr
    assert f"published alice/{name}@1 (ready)" in published.stdout
    assert f"alice/{name}@1: ready" in published.stderr  # plain lines: not a terminal
    shown = cli(stack, "build-log", f"alice/{name}@1")
    assert shown.returncode == 0, shown.stderr
    assert "extracted the package" in shown.stdout and f"alice/{name}@1: ready" in shown.stderr
    followed = cli(stack, "build-log", "--follow", "--json", f"alice/{name}")
    assert followed.returncode == 0 and json.loads(followed.stdout.splitlines()[0])["state"] == "ready"


# -- a registry restart mid-build ----------------------------------------------------------------------------


class Services:
    """Broker, registry and builder as separate processes on one data directory (no `dlhub up`), so that the
    registry can be restarted while the broker keeps its queue."""

    def __init__(self, tmp: Path) -> None:
        from tests.support.net import free_port

        broker = f"tcp://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")} | {
            "DLHUB_HOME": str(tmp / "home"),
            "DLHUB_DATA_DIR": str(tmp / "data"),
            "DLHUB_BROKER__BIND_URL": broker,
            "DLHUB_BUS__BROKER_URL": broker,
            "DLHUB_BUS__HEARTBEAT_INTERVAL_S": "0.25",
            "DLHUB_REGISTRY__PORT": str(self.port),
            "DLHUB_ENVIRONMENTS__MODE": "shared",
            "DLHUB_LOGGING__FORMAT": "json",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self, module: str) -> None:
        log = (self.tmp / f"{module}.log").open("ab")
        self.processes[module] = subprocess.Popen(
            [sys.executable, "-m", module], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, module: str) -> str:
        return (self.tmp / f"{module}.log").read_text(errors="replace")

    def stop(self, module: str) -> int:
        process = self.processes.pop(module)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def wait_registry(self) -> None:
        def up() -> bool:
            process = self.processes["dlhub.registry"]
            assert process.poll() is None, self.log("dlhub.registry")
            try:
                return httpx.get(self.api + "/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=30, message="the registry")

    def token(self, user: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "dlhub.registry", "token", "create", user],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1]


def test_a_registry_restart_mid_build_requeues_the_record_and_the_build_finishes(
    tmp_path: Path, pkg_dir: Path
) -> None:
    services = Services(tmp_path)
    try:
        services.start("dlhub.broker")
        services.start("dlhub.registry")  # no builder yet: the build waits in the broker's queue
        services.wait_registry()
        client = DLHubClient(f"http://127.0.0.1:{services.port}", services.token("alice"))
        name = unique("restart")
        reply = client.publish(function_doc(name, "noop"), base_dir=pkg_dir, wait=False)
        ref = f"alice/{name}@{reply['version']}"
        assert client.build_log(ref)["state"] == "queued"
        assert services.stop("dlhub.registry") == 0
        services.start("dlhub.registry")  # resumes the build it left
        services.wait_registry()
        record = client.build_log(ref)
        assert record["state"] == "queued"
        assert any("the registry restarted during this build" in line for line in record["log"])
        services.start("dlhub.builder")
        done = wait_until(lambda: finished(client, ref), timeout_s=60, message="the resumed build")
        assert done["state"] == "ready", done
        assert any("extracted the package" in line for line in done["log"])
        assert TaskHandle(client, reply["task_id"]).wait(30)["state"] == "completed"
    finally:
        for module in list(services.processes)[::-1]:
            services.stop(module)
