"""The registry's HTTP behaviour with aiohttp's test client and an in-process fake of the bus.

The fake stands in for the broker and the builder/search/worker services so publish -> build -> run can be
checked at the HTTP level; the lead's end-to-end tests cover the real processes.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings, RegistryConfig, load_settings
from dlhub.common.errors import BrokerUnavailable
from dlhub.common.ids import (
    BUILDER_TOPIC,
    SEARCH_INDEX_TOPIC,
    SEARCH_QUERY_TOPIC,
    SEARCH_REINDEX_TOPIC,
    new_id,
    parse_servable_topic,
)
from dlhub.common.messages import (
    ErrorInfo,
    HandlerInfo,
    Result,
    RouteStep,
    Started,
    StatsReply,
    TaskStatus,
    Timings,
)
from dlhub.common.payloads import (
    BuildOutcome,
    BuildRequest,
    FacetCount,
    IndexRequest,
    ReindexOutcome,
    ReindexRequest,
    SearchHit,
    SearchQuery,
    SearchResults,
    decode_payload,
)
from dlhub.registry.auth import create_token
from dlhub.registry.http.app import create_app
from dlhub.registry.http.keys import BACKGROUND, STORE
from tests.support.polling import await_until
from tests.support.sdk_documents import SDK_EXAMPLE_PATH

API = "/api/v1"


def sdk_example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SDK_EXAMPLE_PATH.read_text())
    return doc


class FakeBus:
    """Builder, search and an echo worker behind the BusClient interface."""

    def __init__(self) -> None:
        self.codec = Codec()
        self.calls: list[tuple[list[RouteStep], Any]] = []
        self.index: list[IndexRequest] = []
        self.builds: list[BuildRequest] = []
        self.reindexed: list[ReindexRequest] = []
        self.acked: list[str] = []
        self.broker_up = True
        self.fail_builds = False
        self.release_runs = asyncio.Event()
        self.release_runs.set()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(
        self,
        route: Sequence[RouteStep],
        inputs: msgspec.Raw,
        *,
        timeout_s: float,
        task_id: str | None = None,
        on_started: Callable[[Started], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        require_handler: bool = False,
        durable: bool = False,
        on_queued: Callable[[Any], None] | None = None,
    ) -> Result:
        task_id = task_id or new_id()
        self.calls.append((list(route), self.codec.decode_value(inputs)))
        if not self.broker_up:
            return Result(
                task_id=task_id, ok=False, error=ErrorInfo(code="broker_unavailable", message="down")
            )
        if on_started is not None:
            on_started(Started(task_id=task_id, handler_id="fake"))
        topic = route[0].topic
        if topic == BUILDER_TOPIC:
            request = decode_payload(inputs, BuildRequest)
            self.builds.append(request)
            if self.fail_builds:
                error = ErrorInfo(code="build_failed", message="no model.pkl in the package")
                return Result(task_id=task_id, ok=False, error=error)
            outcome = BuildOutcome(digest="sha256:abc", files=["model.pkl"], size_bytes=3, path="/x")
            return Result(task_id=task_id, ok=True, output=self.codec.encode_value(outcome))
        if topic == SEARCH_INDEX_TOPIC:
            self.index.append(decode_payload(inputs, IndexRequest))
            return Result(task_id=task_id, ok=True)
        if topic == SEARCH_REINDEX_TOPIC:
            reindex = decode_payload(inputs, ReindexRequest)
            self.reindexed.append(reindex)
            rebuilt = ReindexOutcome(documents=len(reindex.documents), index="idx-2")
            return Result(task_id=task_id, ok=True, output=self.codec.encode_value(rebuilt))
        if topic == SEARCH_QUERY_TOPIC:
            query = decode_payload(inputs, SearchQuery)
            docs = [r.document for r in self.index if r.document is not None and r.op == "upsert"]
            hits = [SearchHit(document=d, score=1.0) for d in docs if query.q in d.name]
            facets: dict[str, list[FacetCount]] = {
                f: [FacetCount(value="x", count=len(hits))] for f in query.facets
            }
            results = SearchResults(
                total=len(hits), hits=hits, limit=query.limit, offset=query.offset, facets=facets
            )
            return Result(task_id=task_id, ok=True, output=self.codec.encode_value(results))
        await self.release_runs.wait()
        value = self.codec.decode_value(inputs)
        for step in route:
            parse_servable_topic(step.topic)
            params = self.codec.decode_value(step.parameters)
            if params.get("fail"):
                error = ErrorInfo(code="servable_error", message="bad input", exception_type="ValueError")
                return Result(task_id=task_id, ok=False, error=error)
            value = {"echo": value, "topic": step.topic}
        timings = Timings(inference_ms=0.1, invocation_ms=0.2, queue_ms=0.3)
        return Result(task_id=task_id, ok=True, output=self.codec.encode_value(value), timings=timings)

    async def stats(self, *, timeout_s: float = 2.0) -> StatsReply:
        if not self.broker_up:
            raise BrokerUnavailable("the broker did not answer")
        handler = HandlerInfo(handler_id="w1", kind="worker", topics=["servable/*"], capacity=1, inflight=0)
        return StatsReply(request_id="r", handlers=[handler], queued=0, inflight=0)

    def ack(self, task_id: str) -> None:
        self.acked.append(task_id)

    def listen(
        self,
        *,
        on_orphan_result: Callable[[Result], None] | None = None,
        on_broker_change: Callable[[str, str], None] | None = None,
    ) -> None:
        pass

    def awaiting(self, task_id: str) -> bool:
        return False

    async def query_tasks(
        self,
        task_ids: Sequence[str],
        *,
        timeout_s: float = 5.0,
        adopt: bool = False,
        resend_all: bool = True,
    ) -> TaskStatus:
        if not self.broker_up:
            raise BrokerUnavailable("the broker did not answer")
        return TaskStatus(request_id="q", broker_id="fake", known=[])


class Env:
    def __init__(self, client: TestClient[Any, Any], bus: FakeBus, settings: DLHubSettings) -> None:
        self.client = client
        self.bus = bus
        self.settings = settings
        self.tokens: dict[str, str] = {}

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def settle(self) -> None:
        """Wait for background builds, index updates and async runs to finish."""
        background = self.client.app[BACKGROUND]
        # until only the periodic sweeps (tasks, blobs, job results), the task reaper and the registry
        # heartbeat are left
        await await_until(
            lambda: len(background) <= 5, timeout_s=10, interval_s=0.01, message="background work to finish"
        )

    async def publish(
        self, user: str, doc: dict[str, Any] | None = None, package: bytes | None = None
    ) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("metadata", json.dumps(doc or sdk_example()), content_type="application/json")
        if package is not None:
            form.add_field("package", package, filename="model.tar.gz", content_type="application/gzip")
        return await self.client.post(f"{API}/servables", data=form, headers=self.auth(user))


def make_package() -> bytes:
    """The same bytes on every call (gzip's header would otherwise carry the current second)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("model.pkl")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = load_settings(
        data_dir=tmp_path,
        registry=RegistryConfig(port=0, max_upload_bytes=64 * 1024, max_request_json_bytes=16 * 1024),
    )
    bus = FakeBus()
    app = create_app(settings, bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    e = Env(client, bus, settings)
    store = app[STORE]
    for user in ("alice", "bob"):
        e.tokens[user] = await create_token(store, user)
    try:
        yield e
    finally:
        await client.close()


IRIS_ROWS = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}  # valid for the SDK example's ndarray [null, 4] of floats


async def error_of(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    return body["error"]  # type: ignore[no-any-return]


# -- contract-level checks --------------------------------------------------------------------------------


async def test_openapi_document_validates(env: Env) -> None:
    response = await env.client.get(f"{API}/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = set(document["paths"])
    assert {"/servables", "/servables/{owner}/{name}/run", "/pipelines/run", "/tasks/{task_id}"} <= paths
    routes = {
        (r.method.lower(), r.resource.canonical.removeprefix(API))
        for r in env.client.app.router.routes()
        if r.resource is not None and r.method != "HEAD" and r.resource.canonical.startswith(API)
    }
    operations = {(m, p) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert routes == operations
    # The components are generated from the typed contract (msgspec structs), not written by hand.
    schemas = document["components"]["schemas"]
    assert schemas["RunRequest"]["required"] == ["inputs"]
    limit = next(p for p in document["paths"]["/servables"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 1000


async def test_publish_needs_a_token(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("metadata", json.dumps(sdk_example()))
    error = await error_of(await env.client.post(f"{API}/servables", data=form), 401)
    assert error["type"] == "unauthorized"


async def test_bad_token_is_401_even_for_reads(env: Env) -> None:
    response = await env.client.get(f"{API}/servables", headers={"Authorization": "Bearer dlh_wrong"})
    assert (await error_of(response, 401))["type"] == "unauthorized"


async def test_invalid_metadata_names_the_field(env: Env) -> None:
    doc = sdk_example()
    del doc["datacite"]["creators"]
    error = await error_of(await env.publish("alice", doc), 400)
    assert error == {
        "type": "validation_error",
        "message": "datacite.creators is required",
        "field": "datacite.creators",
    }


async def test_malformed_metadata_part(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("metadata", "{not json", content_type="application/json")
    response = await env.client.post(f"{API}/servables", data=form, headers=env.auth("alice"))
    error = await error_of(response, 400)
    assert error["field"] == "metadata" and "malformed JSON" in error["message"]


async def test_unparsable_multipart_part_header_is_a_400(env: Env) -> None:
    headers = {**env.auth("alice"), "Content-Type": "multipart/form-data; boundary=x"}
    response = await env.client.post(f"{API}/servables", data=b"--x\r\nnot a part header", headers=headers)
    error = await error_of(response, 400)
    assert error["type"] == "validation_error" and "malformed multipart" in error["message"]
    assert (await env.client.get(f"{API}/health")).status == 200


async def test_missing_metadata_part(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("package", make_package(), filename="m.tar.gz")
    error = await error_of(
        await env.client.post(f"{API}/servables", data=form, headers=env.auth("alice")), 400
    )
    assert error["field"] == "metadata"


async def test_publish_wrong_content_type(env: Env) -> None:
    response = await env.client.post(f"{API}/servables", json=sdk_example(), headers=env.auth("alice"))
    assert (await error_of(response, 400))["field"] == "Content-Type"


async def test_unsupported_package_format(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("metadata", json.dumps(sdk_example()))
    form.add_field("package", b"plain text, not an archive", filename="model.txt")
    response = await env.client.post(f"{API}/servables", data=form, headers=env.auth("alice"))
    assert (await error_of(response, 400))["field"] == "package"


async def test_oversize_upload_is_json_413(env: Env) -> None:
    response = await env.publish("alice", package=b"\x1f\x8b" + b"0" * 70_000)
    assert (await error_of(response, 413))["type"] == "payload_too_large"


async def test_oversize_chunked_body_uses_aiohttp_limit_as_json_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's client_max_size applies
        yield b'{"inputs": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = await env.client.post(
        f"{API}/servables/alice/iris_rf/run", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (await error_of(response, 413))["type"] == "payload_too_large"


async def test_unknown_route_and_method_are_json(env: Env) -> None:
    assert (await error_of(await env.client.get(f"{API}/nope"), 404))["type"] == "not_found"
    response = await env.client.patch(f"{API}/servables")
    assert (await error_of(response, 405))["type"] == "method_not_allowed"


async def test_unknown_servable_404(env: Env) -> None:
    for path in (
        "/servables/alice/ghost",
        "/servables/alice/ghost/versions",
        "/servables/alice/ghost/versions/1",
    ):
        assert (await error_of(await env.client.get(API + path), 404))["type"] == "not_found"
    response = await env.client.post(f"{API}/servables/alice/ghost/run", json={"inputs": 1})
    assert (await error_of(response, 404))["type"] == "not_found"


async def test_malformed_json_run_body(env: Env) -> None:
    response = await env.client.post(
        f"{API}/servables/alice/x/run", data=b"{oops", headers={"Content-Type": "application/json"}
    )
    error = await error_of(response, 400)
    assert error["type"] == "validation_error" and "malformed JSON" in error["message"]
    response = await env.client.post(f"{API}/servables/alice/x/run", json={"timeout_s": "soon"})
    assert (await error_of(response, 400))["field"] == "timeout_s"
    response = await env.client.post(f"{API}/servables/alice/x/run", json=[1, 2])
    assert (await error_of(response, 400))["type"] == "validation_error"
    response = await env.client.post(f"{API}/servables/alice/x/run", data="x=1")
    assert (await error_of(response, 400))["field"] == "Content-Type"


async def test_bad_paging_values(env: Env) -> None:
    for query in ("limit=0", "limit=abc", "offset=-1", "limit=100000"):
        response = await env.client.get(f"{API}/search?{query}")
        assert (await error_of(response, 400))["field"] in ("limit", "offset")
        response = await env.client.get(f"{API}/servables?{query}")
        assert response.status == 400


async def test_health(env: Env) -> None:
    response = await env.client.get(f"{API}/health")
    assert response.status == 200
    body = await response.json()
    assert body == {"status": "ok", "broker": {"handler_counts": {"worker": 1}, "queued": 0, "inflight": 0}}
    # The handler table is for administrators only (registry.admin_users).
    assert (
        "handlers"
        not in (await (await env.client.get(f"{API}/health", headers=env.auth("alice"))).json())["broker"]
    )
    env.settings.registry.admin_users.append("alice")
    body = await (await env.client.get(f"{API}/health", headers=env.auth("alice"))).json()
    assert body["broker"]["handlers"][0]["handler_id"] == "w1"
    assert (
        "handlers"
        not in (await (await env.client.get(f"{API}/health", headers=env.auth("bob"))).json())["broker"]
    )
    env.bus.broker_up = False
    assert (await error_of(await env.client.get(f"{API}/health"), 503))["type"] == "broker_unavailable"


# -- flows through the fake bus ---------------------------------------------------------------------------


async def test_publish_build_describe_run(env: Env) -> None:
    response = await env.publish("alice", package=make_package())
    assert response.status == 202, await response.text()
    accepted = await response.json()
    assert accepted["owner"] == "alice" and accepted["name"] == "iris_rf" and accepted["version"] == 1
    assert accepted["shorthand_name"] == "alice/iris_rf" and accepted["status"] == "building"
    await env.settle()

    build = env.bus.builds[0]
    assert (build.owner, build.name, build.version, build.package_format) == ("alice", "iris_rf", 1, "tar")
    assert build.package == make_package()
    task = await (
        await env.client.get(f"{API}/tasks/{accepted['task_id']}", headers=env.auth("alice"))
    ).json()
    assert (
        task["kind"] == "build" and task["state"] == "completed" and task["output"]["digest"] == "sha256:abc"
    )

    described = await (await env.client.get(f"{API}/servables/alice/iris_rf")).json()
    assert described["status"] == "ready" and described["digest"] == "sha256:abc"
    assert described["metadata"]["dlhub"]["owner"] == "alice"
    assert described["metadata"]["dlhub"]["shorthand_name"] == "alice/iris_rf"
    assert isinstance(described["metadata"]["dlhub"]["publication_date"], int)
    assert described["versions"][0]["version"] == 1

    upsert = env.bus.index[-1]
    assert upsert.op == "upsert" and upsert.document is not None and upsert.document.title == "Iris RF"

    response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json={"inputs": [[1, 2, 3, 4]]})
    assert response.status == 200
    result = await response.json()
    assert result["state"] == "completed" and result["servable"] == "alice/iris_rf@1"
    assert result["output"] == {"echo": [[1, 2, 3, 4]], "topic": "servable/alice/iris_rf@1"}
    assert set(result["timings"]) == {"inference_ms", "invocation_ms", "queue_ms", "request_ms"}
    assert result["timings"]["request_ms"] > 0

    response = await env.client.post(
        f"{API}/servables/alice/iris_rf/versions/1/run",
        json={"inputs": [[1, 2, 3, 4]], "parameters": {"fail": True}},
    )
    failed = await response.json()
    assert response.status == 200 and failed["state"] == "failed"
    assert failed["error"]["type"] == "servable_error" and failed["error"]["exception_type"] == "ValueError"

    response = await env.client.post(
        f"{API}/servables/alice/iris_rf/run", json={"inputs": 1, "method": "nope"}
    )
    assert (await error_of(response, 400))["field"] == "method"

    calls = len(env.bus.calls)  # inputs are checked against the declared type before anything is queued
    response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json={"inputs": [[1, 2, 3]]})
    assert (await error_of(response, 400)) == {
        "type": "validation_error",
        "message": "inputs[0]: expected 4 floats, got 3",
        "field": "inputs[0]",
    }
    assert len(env.bus.calls) == calls

    env.bus.broker_up = False
    response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json=IRIS_ROWS)
    assert (await error_of(response, 503))["type"] == "broker_unavailable"


async def test_not_ready_is_409_and_failed_build_reason(env: Env) -> None:
    env.bus.release_runs.clear()
    env.bus.fail_builds = True
    accepted = await (await env.publish("alice")).json()
    await env.settle()
    described = await (await env.client.get(f"{API}/servables/alice/iris_rf")).json()
    assert described["status"] == "failed" and described["status_reason"] == "no model.pkl in the package"
    task = await (
        await env.client.get(f"{API}/tasks/{accepted['task_id']}", headers=env.auth("alice"))
    ).json()
    assert task["state"] == "failed" and task["error"]["type"] == "build_failed"
    response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json={"inputs": 1})
    assert (await error_of(response, 409))["type"] == "servable_not_ready"
    response = await env.client.post(f"{API}/servables/alice/iris_rf/versions/1/run", json={"inputs": 1})
    assert (await error_of(response, 409))["type"] == "servable_not_ready"
    assert not any(r.op == "upsert" for r in env.bus.index)


async def test_versions_update_and_delete(env: Env) -> None:
    await env.publish("alice", package=make_package())
    await env.publish("alice")
    await env.settle()
    doc = sdk_example()
    doc["datacite"]["titles"] = [{"title": "Iris RF v3"}]
    response = await env.client.put(f"{API}/servables/alice/iris_rf", json=doc, headers=env.auth("alice"))
    assert response.status == 202 and (await response.json())["version"] == 3
    await env.settle()
    # a metadata-only update rebuilds from the previous version's files (none for version 2)
    assert env.bus.builds[-1].version == 3

    versions = await (await env.client.get(f"{API}/servables/alice/iris_rf/versions")).json()
    assert [v["version"] for v in versions["versions"]] == [1, 2, 3]
    v1 = await (await env.client.get(f"{API}/servables/alice/iris_rf/versions/1")).json()
    assert v1["version"] == 1

    response = await env.client.put(f"{API}/servables/alice/iris_rf", json=doc, headers=env.auth("bob"))
    assert (await error_of(response, 403))["type"] == "forbidden"
    response = await env.client.put(f"{API}/servables/alice/iris_rf", json=doc)
    assert response.status == 401
    doc["dlhub"]["name"] = "other"
    response = await env.client.put(f"{API}/servables/alice/iris_rf", json=doc, headers=env.auth("alice"))
    assert (await error_of(response, 400))["field"] == "dlhub.name"

    response = await env.client.delete(f"{API}/servables/alice/iris_rf/versions/3", headers=env.auth("bob"))
    assert response.status == 403
    response = await env.client.delete(f"{API}/servables/alice/iris_rf/versions/3", headers=env.auth("alice"))
    assert (await response.json()) == {"deleted": [3]}
    await env.settle()
    last = env.bus.index[-1]
    assert last.op == "upsert" and last.document is not None and last.document.version == 2
    run = await (await env.client.post(f"{API}/servables/alice/iris_rf/run", json=IRIS_ROWS)).json()
    assert run["servable"] == "alice/iris_rf@2"

    response = await env.client.delete(f"{API}/servables/alice/iris_rf", headers=env.auth("alice"))
    assert (await response.json()) == {"deleted": [1, 2]}
    await env.settle()
    assert [r.op for r in env.bus.index][-1] == "delete"
    # deleted versions are kept as tombstones: 410 Gone (was 404 before tombstones)
    assert (await error_of(await env.client.get(f"{API}/servables/alice/iris_rf"), 410))["type"] == "gone"


async def test_update_reuses_previous_package(env: Env) -> None:
    await env.publish("alice", package=make_package())
    await env.settle()
    response = await env.client.put(
        f"{API}/servables/alice/iris_rf", json=sdk_example(), headers=env.auth("alice")
    )
    assert response.status == 202
    await env.settle()
    assert env.bus.builds[-1].version == 2 and env.bus.builds[-1].package == make_package()


async def test_visibility(env: Env) -> None:
    doc = sdk_example()
    doc["dlhub"]["visible_to"] = ["user:bob"]
    await env.publish("alice", doc)
    await env.settle()
    assert (await env.client.get(f"{API}/servables/alice/iris_rf")).status == 404
    response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json={"inputs": None})
    assert response.status == 404
    assert (await env.client.get(f"{API}/servables/alice/iris_rf", headers=env.auth("bob"))).status == 200
    assert (await env.client.get(f"{API}/servables/alice/iris_rf", headers=env.auth("alice"))).status == 200
    listed = await (await env.client.get(f"{API}/servables")).json()
    assert listed["total"] == 0
    listed = await (await env.client.get(f"{API}/servables", headers=env.auth("bob"))).json()
    assert listed["total"] == 1 and listed["servables"][0]["title"] == "Iris RF"
    # bob may see it but not change it
    response = await env.client.delete(f"{API}/servables/alice/iris_rf", headers=env.auth("bob"))
    assert response.status == 403


async def test_async_run_and_task_access(env: Env) -> None:
    await env.publish("alice")
    await env.settle()
    env.bus.release_runs.clear()
    response = await env.client.post(
        f"{API}/servables/alice/iris_rf/run",
        json={"inputs": [[5, 5, 5, 5]], "asynchronous": True},
        headers=env.auth("bob"),
    )
    assert response.status == 202
    accepted = await response.json()
    assert accepted["state"] == "pending" and accepted["status_url"] == f"{API}/tasks/{accepted['task_id']}"
    url = accepted["status_url"]

    async def running() -> bool:
        task = await (await env.client.get(url, headers=env.auth("bob"))).json()
        return bool(task["state"] == "running")

    await await_until(running, timeout_s=10, interval_s=0.01, message="the task to be running")
    env.bus.release_runs.set()
    await env.settle()
    task = await (await env.client.get(url, headers=env.auth("bob"))).json()
    assert task["state"] == "completed" and task["kind"] == "run" and task["output"]["echo"] == [[5] * 4]
    assert task["servable"] == "alice/iris_rf@1" and "request_ms" in task["timings"]
    assert (await env.client.get(url)).status == 404  # only the submitter reads it
    assert (await env.client.get(url, headers=env.auth("alice"))).status == 404
    assert (await env.client.get(f"{API}/tasks/{new_id()}")).status == 404


async def test_pipeline(env: Env) -> None:
    await env.publish("alice")
    doc = sdk_example()
    doc["dlhub"]["name"] = "second"
    await env.publish("alice", doc)
    await env.settle()
    body = {"steps": [{"servable": "alice/iris_rf"}, {"servable": "alice/second@1"}], **IRIS_ROWS}
    response = await env.client.post(f"{API}/pipelines/run", json=body)
    result = await response.json()
    assert response.status == 200 and result["state"] == "completed"
    assert result["output"]["topic"] == "servable/alice/second@1"
    assert result["output"]["echo"]["topic"] == "servable/alice/iris_rf@1"
    assert result["servable"] == "alice/iris_rf@1,alice/second@1"
    route = env.bus.calls[-1][0]
    assert [s.topic for s in route] == ["servable/alice/iris_rf@1", "servable/alice/second@1"]

    response = await env.client.post(f"{API}/pipelines/run", json={"steps": [{"servable": "bad"}]})
    assert (await error_of(response, 400))["field"] == "steps[0].servable"
    response = await env.client.post(f"{API}/pipelines/run", json={"steps": []})
    assert (await error_of(response, 400))["field"] == "steps"
    response = await env.client.post(f"{API}/pipelines/run", json={"steps": [{"servable": "alice/ghost"}]})
    assert response.status == 404
    body["asynchronous"] = True
    response = await env.client.post(f"{API}/pipelines/run", json=body)
    assert response.status == 202


async def test_search(env: Env) -> None:
    await env.publish("alice")
    await env.settle()
    response = await env.client.get(f"{API}/search?q=iri&limit=5", headers=env.auth("bob"))
    assert response.status == 200
    body = await response.json()
    assert body["total"] == 1 and body["limit"] == 5 and body["offset"] == 0
    hit = body["hits"][0]
    assert hit["shorthand_name"] == "alice/iris_rf" and hit["authors"] == ["Jane Doe"] and hit["score"] == 1.0
    query = env.bus.calls[-1][1]
    assert query["identities"] == ["public", "user:bob"] and query["q"] == "iri"


async def test_search_range_facets_and_sort(env: Env) -> None:
    await env.publish("alice")
    await env.settle()
    params = (
        "q=iri&published_from=2024-05-01&published_to=2024-05-31&facets=domain,owner,domain"
        "&sort=publication_date&order=asc"
    )
    response = await env.client.get(f"{API}/search?{params}")
    assert response.status == 200
    body = await response.json()
    assert body["facets"] == {"domain": [{"value": "x", "count": 1}], "owner": [{"value": "x", "count": 1}]}
    query = env.bus.calls[-1][1]
    assert query["published_from_s"] == 1714521600.0  # 2024-05-01T00:00:00Z
    assert query["published_to_s"] == 1717199999.999  # the whole of May 31st
    assert (query["facets"], query["sort"], query["order"]) == (
        ["domain", "owner"],
        "publication_date",
        "asc",
    )
    for value, expected in (
        ("1700000000", 1700000000.0),
        ("1700000000.5", 1700000000.5),
        ("2024-05-01T12:00:00Z", 1714564800.0),
        ("2024-05-01T12:00:00+02:00", 1714557600.0),
        ("2024-05-01T12:00:00", 1714564800.0),
    ):
        response = await env.client.get(f"{API}/search", params={"published_from": value})
        assert response.status == 200, value
        assert env.bus.calls[-1][1]["published_from_s"] == expected, value
    plain = await env.client.get(f"{API}/search?q=iri")
    assert "facets" in await plain.json() and "sort" not in env.bus.calls[-1][1]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("published_from", "yesterday"),
        ("published_to", "2024-13-01"),
        ("published_from", "nan"),
        ("facets", "domain,colour"),
        ("sort", "random"),
        ("order", "up"),
        ("input_shape", "[null,4"),
        ("input_shape", "[-1]"),
        ("input_shape", "4"),
        ("input_shape", "[04]"),
        ("input_shape", "[" + "1," * 32 + "1]"),  # 33 dimensions
        ("output_shape", "[1.5]"),
        ("output_shape", '["x"]'),
    ],
)
async def test_search_rejects_bad_parameters(env: Env, param: str, value: str) -> None:
    response = await env.client.get(f"{API}/search", params={param: value})
    error = await error_of(response, 400)
    assert error["field"] == param and error["type"] == "validation_error"


async def test_search_passes_the_type_filters(env: Env) -> None:
    params = {
        "input_type": "ndarray",
        "input_item_type": "float",
        "input_shape": " [ null , 4 ]\n",
        "output_type": "list",
        "output_item_type": "integer",
        "output_shape": "[]",
    }
    response = await env.client.get(f"{API}/search", params=params)
    assert response.status == 200, await response.text()
    query = env.bus.calls[-1][1]
    assert {k: query[k] for k in params} == {**params, "input_shape": [None, 4], "output_shape": []}
    response = await env.client.get(f"{API}/search", params={"input_shape": "", "input_type": ""})
    assert response.status == 200
    assert not {"input_shape", "input_type"} & env.bus.calls[-1][1].keys()  # empty is absent


async def test_search_reindex_is_for_admins(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, registry=RegistryConfig(admin_users=["alice"]))
    bus = FakeBus()
    app = create_app(settings, bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    env = Env(client, bus, settings)
    try:
        for user in ("alice", "bob"):
            env.tokens[user] = await create_token(app[STORE], user)
        await env.publish("alice")
        await env.publish("bob")
        await env.settle()
        bus.fail_builds = True
        await env.publish("bob", {**sdk_example(), "dlhub": {**sdk_example()["dlhub"], "name": "broken"}})
        await env.settle()
        assert (await error_of(await client.post(f"{API}/search/reindex"), 401))["type"] == "unauthorized"
        response = await client.post(f"{API}/search/reindex", headers=env.auth("bob"))
        assert (await error_of(response, 403))["type"] == "forbidden"
        assert bus.reindexed == []
        response = await client.post(f"{API}/search/reindex", headers=env.auth("alice"))
        assert response.status == 200, await response.text()
        assert await response.json() == {"documents": 2, "index": "idx-2"}
        (request,) = bus.reindexed
        assert sorted(d.id for d in request.documents) == ["alice/iris_rf", "bob/iris_rf"]
        assert all(d.status == "ready" for d in request.documents)
        # re-indexing is how entries indexed before the type filters gain their method types
        assert all(d.methods[0].input and d.methods[0].input.shape == [None, 4] for d in request.documents)
    finally:
        await client.close()


async def test_anonymous_runs_can_be_disabled(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, registry=RegistryConfig(allow_anonymous_run=False))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, bus=FakeBus())))
    await client.start_server()
    try:
        response = await client.post(f"{API}/servables/alice/x/run", json={})
        assert (await error_of(response, 401))["type"] == "unauthorized"
    finally:
        await client.close()


async def test_unexpected_errors_are_opaque_500(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(env.client.app[STORE], "list_servables", boom)
    response = await env.client.get(f"{API}/servables")
    error = await error_of(response, 500)
    assert error["type"] == "internal_error" and "secret" not in error["message"]
    assert response.headers["X-Request-ID"] in error["message"]


# -- metrics ----------------------------------------------------------------------------------------------


OUTCOMES = "dlhub_registry_task_outcomes_total"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_by_route_template_status_and_run_outcome(env: Env) -> None:
    run_route = "/api/v1/servables/{owner}/{name}/run"
    ok = {"method": "POST", "route": run_route, "status": "200"}
    bad = {"method": "POST", "route": run_route, "status": "400"}
    before = {
        "ok": sample("dlhub_registry_requests_total", **ok),
        "bad": sample("dlhub_registry_requests_total", **bad),
        "failed": sample(
            "dlhub_registry_task_outcomes_total", mode="sync", outcome="failed", error="servable_error"
        ),
        "lat": sample("dlhub_registry_request_duration_seconds_count", **ok),
    }
    assert (await env.publish("alice", package=make_package())).status == 202
    await env.settle()
    for _ in range(3):
        response = await env.client.post(f"{API}/servables/alice/iris_rf/run", json=IRIS_ROWS)
        assert response.status == 200
    response = await env.client.post(
        f"{API}/servables/alice/iris_rf/run", json={**IRIS_ROWS, "parameters": {"fail": True}}
    )
    assert (await response.json())["state"] == "failed"
    await error_of(await env.client.post(f"{API}/servables/alice/iris_rf/run", json={"inputs": [[1]]}), 400)
    await error_of(await env.client.get("/no/such/path"), 404)

    response = await env.client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'route="/api/v1/servables/{owner}/{name}/run"' in text and "iris_rf" not in text
    assert sample("dlhub_registry_requests_total", **ok) - before["ok"] == 4
    assert sample("dlhub_registry_request_duration_seconds_count", **ok) - before["lat"] == 4
    assert sample("dlhub_registry_requests_total", **bad) - before["bad"] == 1
    failed = sample(
        "dlhub_registry_task_outcomes_total", mode="sync", outcome="failed", error="servable_error"
    )
    assert failed - before["failed"] == 1
    assert sample("dlhub_registry_requests_total", method="GET", route="<unmatched>", status="404") >= 1


async def test_metrics_disabled_has_no_endpoint(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path, metrics={"enabled": False}), bus=FakeBus())
    assert all(getattr(r.resource, "canonical", "") != "/metrics" for r in app.router.routes())


async def test_a_popular_datasets_describe_lists_the_first_users_and_says_there_are_more(env: Env) -> None:
    """A dataset 120 servables were trained on: describe lists 100 and flags the rest (search has all)."""
    store = env.client.app[STORE]
    public = {"visible_to": ["public"]}
    dataset = {"datacite": {}, "dlhub": {"type": "dataset", "name": "gaps", **public}}
    ready: dict[str, Any] = {"published_at_ms": 1, "status": "ready"}
    await store.create_version(owner="alice", name="gaps", metadata=dataset, **ready)
    for index in range(120):
        model = {"datacite": {}, "dlhub": {"name": f"m{index:03}", "training_data": ["alice/gaps"], **public}}
        await store.create_version(owner="bob", name=f"m{index:03}", metadata=model, **ready)
    described = await (await env.client.get(f"{API}/servables/alice/gaps")).json()
    assert [u["servable"] for u in described["used_by"]] == [f"bob/m{i:03}@1" for i in range(100)]
    assert described["used_by_truncated"] is True
    await store.create_version(owner="alice", name="lone", metadata=dataset, **ready)
    lone = await (await env.client.get(f"{API}/servables/alice/lone")).json()
    assert lone["used_by"] == [] and lone["used_by_truncated"] is False
    model_answer = await (await env.client.get(f"{API}/servables/bob/m000")).json()
    assert "used_by" not in model_answer and "used_by_truncated" not in model_answer
