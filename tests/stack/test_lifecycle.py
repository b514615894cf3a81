"""Version lifecycle end to end through the real stack: deprecation (still runnable, warned, skipped by
"latest") and deletion (owner only; a tombstone answering 410 Gone, numbers never reused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.common.errors import Forbidden, Gone, NotFound
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique


def scale_doc(name: str, factor: int, **kwargs: Any) -> dict[str, Any]:
    doc = python_function_document(
        name=name,
        module="e2efns",
        function="scale",
        files=["e2efns.py"],
        title=f"Scale by {factor}",
        authors=["Doe, Jane"],
        **kwargs,
    )
    doc["servable"]["methods"]["run"]["parameters"] = {"factor": factor}
    return doc


def publish_two_versions(alice: DLHubClient, pkg_dir: Path, **kwargs: Any) -> str:
    name = unique("life")
    assert alice.publish(scale_doc(name, 1, **kwargs), base_dir=pkg_dir)["status"] == "ready"
    reply = alice.update(f"alice/{name}", scale_doc(name, 2, **kwargs))
    assert reply["version"] == 2 and reply["status"] == "ready"
    return name


def post(stack: StackInfo, token: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(stack.api + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def indexed_version(alice: DLHubClient, name: str) -> int | None:
    hits = [h for h in alice.search(name)["hits"] if h["name"] == name]
    return int(hits[0]["version"]) if hits else None


def test_deprecated_version_still_runs_with_a_warning_and_latest_skips_it(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path
) -> None:
    name = publish_two_versions(alice, pkg_dir)
    reply = alice.deprecate(f"alice/{name}@2", reason="wrong factor", replacement=f"alice/{name}@1")
    assert reply["deprecated"] is True and reply["deprecation_reason"] == "wrong factor"
    assert reply["deprecation_replacement"] == f"alice/{name}@1"

    described = alice.describe(f"alice/{name}@2")
    assert described["deprecated"] is True and described["deprecation_reason"] == "wrong factor"
    assert alice.describe(f"alice/{name}@1")["deprecated"] is False
    listed = {v["version"]: v for v in alice.versions(f"alice/{name}")}
    assert listed[2]["deprecated"] is True and listed[2]["deprecation_reason"] == "wrong factor"
    assert listed[1]["deprecated"] is False

    # a pinned run of the deprecated version works and carries the warning (body and headers)
    response = post(stack, stack.tokens["alice"], f"/servables/alice/{name}/versions/2/run", {"inputs": [1]})
    assert response.status_code == 200
    body = response.json()
    assert body["output"] == [2]
    expected = f"alice/{name}@2 is deprecated: wrong factor (use alice/{name}@1 instead)"
    assert body["warnings"] == [expected]
    assert response.headers["Deprecation"].startswith("@")
    assert expected in response.headers["Warning"] and response.headers["Warning"].startswith("299 - ")
    asynchronous = post(
        stack,
        stack.tokens["alice"],
        f"/servables/alice/{name}/versions/2/run",
        {"inputs": [1], "asynchronous": True},
    )
    assert asynchronous.status_code == 202 and asynchronous.json()["warnings"] == [expected]

    # "latest" is the newest ready version that is not deprecated, without a warning
    latest = post(stack, stack.tokens["alice"], f"/servables/alice/{name}/run", {"inputs": [1]})
    assert latest.json()["output"] == [1] and latest.json()["servable"] == f"alice/{name}@1"
    assert "warnings" not in latest.json() and "Deprecation" not in latest.headers
    wait_until(lambda: indexed_version(alice, name) == 1, timeout_s=10, message="search to follow latest")

    # when every ready version is deprecated, latest falls back to the newest one (with a warning)
    alice.deprecate(f"alice/{name}@1")
    fallback = post(stack, stack.tokens["alice"], f"/servables/alice/{name}/run", {"inputs": [1]}).json()
    assert fallback["servable"] == f"alice/{name}@2" and fallback["warnings"] == [expected]

    alice.undeprecate(f"alice/{name}@2")
    assert alice.describe(f"alice/{name}@2")["deprecated"] is False
    assert alice.run(f"alice/{name}", [1]) == [2]
    cleared = post(stack, stack.tokens["alice"], f"/servables/alice/{name}/run", {"inputs": [1]}).json()
    assert "warnings" not in cleared
    wait_until(lambda: indexed_version(alice, name) == 2, timeout_s=10, message="search to follow latest")


def test_only_the_owner_may_deprecate(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("life")
    alice.publish(scale_doc(name, 1), base_dir=pkg_dir)
    with pytest.raises(Forbidden):
        bob.deprecate(f"alice/{name}@1", reason="mine now")
    with pytest.raises(Forbidden):
        bob.undeprecate(f"alice/{name}@1")
    with pytest.raises(NotFound):
        alice.deprecate(f"alice/{name}@9")
    assert alice.describe(f"alice/{name}")["deprecated"] is False
    # invisible servables stay 404 for others
    private = unique("life")
    alice.publish(scale_doc(private, 1, visible_to=["user:alice"]), base_dir=pkg_dir)
    with pytest.raises(NotFound):
        bob.deprecate(f"alice/{private}@1")
    # anonymous callers need a token; a malformed replacement is a 400 naming the field
    anonymous = httpx.post(stack.api + f"/servables/alice/{name}/versions/1/deprecate", json={}, timeout=10)
    assert anonymous.status_code == 401
    bad = post(
        stack, stack.tokens["alice"], f"/servables/alice/{name}/versions/1/deprecate", {"replacement": "x"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "replacement"


def test_deleted_versions_are_tombstones(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = publish_two_versions(alice, pkg_dir)
    wait_until(lambda: indexed_version(alice, name) == 2, timeout_s=10, message="indexing")
    with pytest.raises(Forbidden):
        bob.delete(f"alice/{name}@2")

    assert alice.delete(f"alice/{name}@2") == {"deleted": [2]}
    with pytest.raises(Gone):
        alice.describe(f"alice/{name}@2")
    with pytest.raises(Gone):
        alice.run(f"alice/{name}@2", [1])
    with pytest.raises(Gone):
        alice.delete(f"alice/{name}@2")
    with pytest.raises(Gone):
        alice.deprecate(f"alice/{name}@2")
    response = httpx.get(stack.api + f"/servables/alice/{name}/versions/2", timeout=10)
    assert response.status_code == 410 and response.json()["error"]["type"] == "gone"
    # the servable lives on at version 1: describe, run latest and the search entry move back to it
    assert alice.describe(f"alice/{name}")["version"] == 1
    assert alice.run(f"alice/{name}", [1]) == [1]
    wait_until(
        lambda: indexed_version(alice, name) == 1, timeout_s=10, message="search to move back to version 1"
    )
    versions = alice.versions(f"alice/{name}")
    assert [(v["version"], v["status"]) for v in versions] == [(1, "ready"), (2, "deleted")]
    assert versions[1]["deleted_by"] == "alice" and versions[1]["deleted_at"]

    # delete everything: 410 everywhere, gone from listing and search
    assert alice.delete(f"alice/{name}") == {"deleted": [1]}
    with pytest.raises(Gone):
        alice.describe(f"alice/{name}")
    with pytest.raises(Gone):
        alice.run(f"alice/{name}", [1])
    with pytest.raises(Gone):
        alice.delete(f"alice/{name}")
    assert [v["status"] for v in alice.versions(f"alice/{name}")] == ["deleted", "deleted"]
    assert name not in {s["name"] for s in alice.list("alice", limit=1000)}
    wait_until(lambda: indexed_version(alice, name) is None, timeout_s=10, message="de-index")

    # publishing the same name again continues the numbering
    reply = alice.publish(scale_doc(name, 3), base_dir=pkg_dir)
    assert reply["version"] == 3 and reply["status"] == "ready"
    assert alice.run(f"alice/{name}", [1]) == [3]
    assert [v["status"] for v in alice.versions(f"alice/{name}")] == ["deleted", "deleted", "ready"]
    assert name in {s["name"] for s in alice.list("alice", limit=1000)}


def test_tombstones_of_private_servables_stay_hidden(
    alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("life")
    alice.publish(scale_doc(name, 1, visible_to=["user:alice"]), base_dir=pkg_dir)
    alice.delete(f"alice/{name}")
    with pytest.raises(Gone):
        alice.describe(f"alice/{name}@1")
    with pytest.raises(NotFound):
        bob.describe(f"alice/{name}@1")
    with pytest.raises(NotFound):
        bob.run(f"alice/{name}", [1])


def test_pipeline_through_a_deprecated_version_warns(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path
) -> None:
    name = publish_two_versions(alice, pkg_dir)
    alice.deprecate(f"alice/{name}@1", reason="old")
    body = {"steps": [{"servable": f"alice/{name}@1"}, {"servable": f"alice/{name}"}], "inputs": [1]}
    response = post(stack, stack.tokens["alice"], "/pipelines/run", body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["output"] == [2] and reply["servable"] == f"alice/{name}@1,alice/{name}@2"
    assert reply["warnings"] == [f"alice/{name}@1 is deprecated: old"]
    assert response.headers["Warning"] == f'299 - "alice/{name}@1 is deprecated: old"'
