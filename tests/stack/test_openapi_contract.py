"""The OpenAPI document states what the server does: every route is documented and vice versa, the document
is valid OpenAPI 3.1, and real answers of the embedded stack validate against the generated schemas.

Also one test per mismatch a schema-driven fuzzer found (bounds, empty enum values, required bodies and
fields, version 0) and the README's curl example (a JSON body sent as application/x-www-form-urlencoded).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from openapi_spec_validator import validate

from dlhub.client.metadata import python_function_document
from dlhub.common.config import load_settings
from dlhub.registry.http.app import create_app
from dlhub.registry.http.openapi import build_openapi
from tests.support.e2e_servables import FUNCTIONS
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique

SPEC = build_openapi()
METHODS = ("get", "put", "post", "delete", "patch")
NOOP_OUTPUT = "hello world"  # what tests.e2e_servables.noop answers, whatever its input


def schema_of(path: str, method: str, status: int, content_type: str = "application/json") -> dict[str, Any]:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return dict(responses[str(status)]["content"][content_type]["schema"])


def check(body: Any, path: str, method: str, status: int) -> None:
    """Validate a real answer against the documented schema of (path, method, status)."""
    schema = schema_of(path, method, status) | {"components": SPEC["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def answer(response: httpx.Response, path: str, method: str, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    check(body, path, method, status)
    return body


def param(path: str, method: str, name: str) -> dict[str, Any]:
    item = SPEC["paths"][path]
    for p in [*item.get("parameters", []), *item[method].get("parameters", [])]:
        if p["name"] == name:
            return dict(p)
    raise AssertionError(f"{method.upper()} {path} does not document {name}")


# -- the document itself --


def test_the_document_is_valid_openapi() -> None:
    validate(SPEC)


def test_every_route_is_documented_and_every_documented_operation_is_routed(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path))
    routed = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        if not canonical.startswith("/api/v1/"):
            continue  # GET /metrics: Prometheus text, outside the JSON API the document describes
        routed.add((route.method.lower(), canonical.removeprefix("/api/v1")))
    documented = {(m, p) for p, item in SPEC["paths"].items() for m in METHODS if m in item}
    assert routed == documented


def test_every_operation_is_fully_described() -> None:
    for path, item in SPEC["paths"].items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method in (m for m in METHODS if m in item):
            operation = item[method]
            where = f"{method.upper()} {path}"
            assert operation.get("operationId") and operation.get("summary"), where
            params = [*item.get("parameters", []), *operation.get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == templated, where
            assert all(p.get("description") for p in params), where
            assert any(code.startswith("2") for code in operation["responses"]), where
            for code, response in operation["responses"].items():
                assert response.get("description"), f"{where} {code}"
                if code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }


def test_component_schemas_are_generated_from_the_contract_structs() -> None:
    schemas = SPEC["components"]["schemas"]
    assert schemas["RunRequest"]["required"] == ["inputs"]
    assert schemas["Servable"]["properties"]["versions"]["items"] == {
        "$ref": "#/components/schemas/VersionSummary"
    }
    for name in ("Error", "Task", "TaskAccepted", "RunResult", "SearchResults", "Blob", "Health"):
        assert schemas[name]["title"] == name


# -- fuzzer findings: what the document says is what the server enforces --


def test_page_bounds_are_documented() -> None:
    for path in ("/servables", "/search"):
        limit, offset = param(path, "get", "limit")["schema"], param(path, "get", "offset")["schema"]
        assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, 1000)
        assert (offset["type"], offset["minimum"], offset["maximum"]) == ("integer", 0, 2**31)
        assert "400" in SPEC["paths"][path]["get"]["responses"]


def test_version_path_parameters_start_at_one_and_list_400() -> None:
    for path, item in SPEC["paths"].items():
        if "{version}" in path:
            assert param(path, next(m for m in METHODS if m in item), "version")["schema"]["minimum"] == 1
            for method in (m for m in METHODS if m in item):
                assert "400" in item[method]["responses"], f"{method.upper()} {path}"


def test_citation_format_is_an_enum_without_empty() -> None:
    schema = param("/servables/{owner}/{name}/citation", "get", "format")["schema"]
    assert schema["enum"] == ["bibtex", "datacite"]


def test_blob_upload_body_is_required() -> None:
    assert SPEC["paths"]["/blobs"]["post"]["requestBody"]["required"] is True


# -- real answers of the embedded stack --


def _package() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = FUNCTIONS.encode()
        info = tarfile.TarInfo("e2efns.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published(stack: StackInfo) -> str:
    """Publish ``noop`` over raw HTTP (checking the 202 and the build task) and return owner/name."""
    name = unique("contract")
    document = python_function_document(
        name=name, module="e2efns", function="noop", files=["e2efns.py"], title="noop", authors=["Doe, Jane"]
    )
    response = httpx.post(
        f"{stack.api}/servables",
        files={
            "metadata": (None, json.dumps(document), "application/json"),
            "package": ("pkg.tar.gz", _package(), "application/gzip"),
        },
        headers=auth(stack),
        timeout=30,
    )
    accepted = answer(response, "/servables", "post", 202)

    def built() -> dict[str, Any] | None:
        task = httpx.get(stack.url + accepted["status_url"], headers=auth(stack), timeout=10)
        body: dict[str, Any] = task.json()
        return body if body["state"] in ("completed", "failed") else None

    task = wait_until(built, timeout_s=120, message="the build")
    check(task, "/tasks/{task_id}", "get", 200)
    assert task["state"] == "completed", task
    return f"alice/{name}"


def auth(stack: StackInfo, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.tokens[user]}"}


def test_servable_answers_match_the_schema(stack: StackInfo, published: str) -> None:
    base = f"{stack.api}/servables/{published}"
    answer(httpx.get(base, timeout=10), "/servables/{owner}/{name}", "get", 200)
    answer(httpx.get(f"{base}/versions", timeout=10), "/servables/{owner}/{name}/versions", "get", 200)
    version = "/servables/{owner}/{name}/versions/{version}"
    answer(httpx.get(f"{base}/versions/1", timeout=10), version, "get", 200)
    listing = answer(
        httpx.get(f"{stack.api}/servables", params={"limit": 5}, timeout=10), "/servables", "get", 200
    )
    assert listing["limit"] == 5
    deprecated = httpx.post(f"{base}/versions/1/deprecate", json={"reason": "old"}, headers=auth(stack))
    answer(deprecated, version + "/deprecate", "post", 200)
    answer(
        httpx.post(f"{base}/versions/1/undeprecate", headers=auth(stack)),
        version + "/undeprecate",
        "post",
        200,
    )


def test_verify_update_and_delete_answers_match_the_schema(stack: StackInfo, published: str) -> None:
    base = f"{stack.api}/servables/{published}"
    report = answer(httpx.post(f"{base}/verify", timeout=60), "/servables/{owner}/{name}/verify", "post", 200)
    assert report["passed"] is True
    described = httpx.get(base, timeout=10).json()
    update = httpx.put(base, json=described["metadata"], headers=auth(stack), timeout=30)
    accepted = answer(update, "/servables/{owner}/{name}", "put", 202)
    assert accepted["version"] == 2
    wait_until(
        lambda: (
            httpx.get(stack.url + accepted["status_url"], headers=auth(stack)).json()["state"] == "completed"
        ),
        timeout_s=120,
        message="the second build",
    )
    deleted = httpx.delete(f"{base}/versions/2", headers=auth(stack), timeout=30)
    assert answer(deleted, "/servables/{owner}/{name}/versions/{version}", "delete", 200) == {"deleted": [2]}


def test_run_answers_match_the_schema(stack: StackInfo, published: str) -> None:
    run = f"{stack.api}/servables/{published}/run"
    body = {"inputs": [1, 2, 3]}
    result = answer(
        httpx.post(run, json=body, headers=auth(stack), timeout=60),
        "/servables/{owner}/{name}/run",
        "post",
        200,
    )
    assert result["state"] == "completed" and result["output"] == NOOP_OUTPUT
    pinned = f"{stack.api}/servables/{published}/versions/1/run"
    answer(
        httpx.post(pinned, json=body, timeout=60),
        "/servables/{owner}/{name}/versions/{version}/run",
        "post",
        200,
    )
    accepted = answer(
        httpx.post(
            run, json={**body, "asynchronous": True, "memoize": False}, headers=auth(stack), timeout=60
        ),
        "/servables/{owner}/{name}/run",
        "post",
        202,
    )

    def finished() -> dict[str, Any] | None:
        task: dict[str, Any] = httpx.get(stack.url + accepted["status_url"], headers=auth(stack)).json()
        return task if task["state"] in ("completed", "failed") else None

    task = wait_until(finished, timeout_s=60, message="the asynchronous run")
    check(task, "/tasks/{task_id}", "get", 200)
    assert task["output"] == NOOP_OUTPUT
    pipeline = {"steps": [{"servable": published}], "inputs": [4]}
    answer(httpx.post(f"{stack.api}/pipelines/run", json=pipeline, timeout=60), "/pipelines/run", "post", 200)


def test_search_citation_health_and_blob_answers_match_the_schema(stack: StackInfo, published: str) -> None:
    def indexed() -> dict[str, Any] | None:
        found: dict[str, Any] = httpx.get(f"{stack.api}/search", params={"q": published.split("/")[1]}).json()
        return found if found.get("total") else None

    wait_until(indexed, timeout_s=30, message="the search index")
    search = httpx.get(f"{stack.api}/search", params={"q": "noop", "facets": "domain,owner", "limit": 3})
    answer(search, "/search", "get", 200)
    citation = "/servables/{owner}/{name}/citation"
    datacite = httpx.get(f"{stack.api}/servables/{published}/citation", params={"format": "datacite"})
    answer(datacite, citation, "get", 200)
    bibtex = httpx.get(f"{stack.api}/servables/{published}/versions/1/citation")
    assert bibtex.status_code == 200 and bibtex.headers["content-type"].startswith("application/x-bibtex")
    answer(httpx.get(f"{stack.api}/health", timeout=10), "/health", "get", 200)
    blob = answer(
        httpx.post(f"{stack.api}/blobs", params={"filename": "a.txt"}, content=b"hello", headers=auth(stack)),
        "/blobs",
        "post",
        201,
    )
    url = f"{stack.api}/blobs/{blob['blob_id']}"
    answer(httpx.get(url, headers=auth(stack)), "/blobs/{blob_id}", "get", 200)
    answer(httpx.delete(url, headers=auth(stack)), "/blobs/{blob_id}", "delete", 200)


def test_error_answers_match_the_schema(stack: StackInfo, published: str) -> None:
    missing = httpx.get(f"{stack.api}/servables/alice/{unique('nothing')}")
    answer(missing, "/servables/{owner}/{name}", "get", 404)
    unauthorized = httpx.post(f"{stack.api}/servables", headers={"Authorization": "Bearer nope"})
    answer(unauthorized, "/servables", "post", 401)
    wrong = httpx.get(f"{stack.api}/tasks/{unique('task')}")
    answer(wrong, "/tasks/{task_id}", "get", 404)


# -- each fuzzer finding against the server --


def _error(response: httpx.Response, path: str, method: str, status: int = 400) -> dict[str, Any]:
    error: dict[str, Any] = answer(response, path, method, status)["error"]
    return error


def test_out_of_bounds_pages_are_400_naming_the_parameter(stack: StackInfo) -> None:
    too_big = httpx.get(f"{stack.api}/servables", params={"limit": 1001})
    assert _error(too_big, "/servables", "get")["field"] == "limit"
    far = httpx.get(f"{stack.api}/search", params={"offset": 2147483649})
    assert _error(far, "/search", "get")["field"] == "offset"
    assert httpx.get(f"{stack.api}/search", params={"offset": 2**31}).status_code == 200
    not_a_number = httpx.get(f"{stack.api}/servables", params={"offset": "x"})
    assert _error(not_a_number, "/servables", "get")["field"] == "offset"


def test_an_empty_citation_format_is_400(stack: StackInfo, published: str) -> None:
    response = httpx.get(f"{stack.api}/servables/{published}/citation?format=")
    assert _error(response, "/servables/{owner}/{name}/citation", "get")["field"] == "format"
    unknown = httpx.get(f"{stack.api}/servables/{published}/citation", params={"format": "ris"})
    assert _error(unknown, "/servables/{owner}/{name}/citation", "get")["field"] == "format"


def test_a_blob_upload_without_a_body_is_400(stack: StackInfo) -> None:
    response = httpx.post(f"{stack.api}/blobs", headers=auth(stack))
    assert _error(response, "/blobs", "post")["field"] == "body"


def test_version_zero_is_a_documented_400(stack: StackInfo, published: str) -> None:
    path = "/servables/{owner}/{name}/versions/{version}"
    response = httpx.delete(f"{stack.api}/servables/{published}/versions/0", headers=auth(stack))
    assert _error(response, path, "delete")["field"] == "version"
    described = httpx.get(f"{stack.api}/servables/{published}/versions/0")
    assert _error(described, path, "get")["field"] == "version"


def test_a_run_without_inputs_is_400_naming_inputs(stack: StackInfo, published: str) -> None:
    response = httpx.post(
        f"{stack.api}/servables/{published}/run", json={"method": "run"}, headers=auth(stack)
    )
    assert _error(response, "/servables/{owner}/{name}/run", "post")["field"] == "inputs"


# -- the README's curl example --


def test_a_json_body_sent_as_a_form_like_curl_does_runs(stack: StackInfo, published: str) -> None:
    """``curl -X POST URL -H "Authorization: Bearer $TOKEN" -d '{"inputs": [1, 2, 3]}'``: curl labels the
    body application/x-www-form-urlencoded; it is JSON, so the registry takes it as JSON."""
    url = f"{stack.api}/servables/{published}/run"
    data = b'{"inputs": [1, 2, 3]}'
    headers = auth(stack) | {"Content-Type": "application/x-www-form-urlencoded"}
    result = answer(
        httpx.post(url, content=data, headers=headers, timeout=60),
        "/servables/{owner}/{name}/run",
        "post",
        200,
    )
    assert result["output"] == NOOP_OUTPUT
    not_json = httpx.post(url, content=b"inputs=1", headers=headers)
    assert _error(not_json, "/servables/{owner}/{name}/run", "post")["field"] == "Content-Type"
    if shutil.which("curl") is None:
        return
    token = stack.tokens["alice"]
    started = time.monotonic()
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-X",
            "POST",
            url,
            "-H",
            f"Authorization: Bearer {token}",
            "-d",
            '{"inputs": [1, 2, 3]}',
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert time.monotonic() - started < 60
    body = json.loads(out.stdout)
    check(body, "/servables/{owner}/{name}/run", "post", 200)
    assert body["state"] == "completed" and body["output"] == NOOP_OUTPUT
