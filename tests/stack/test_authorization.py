"""Authorization through the REST API of the real embedded stack (local provider: tokens and groups made by
``python -m dlhub.registry``): a private servable is invisible to others (describe, citation, search, run,
memoized results, pipelines), becomes runnable by a group once the group is added, by everyone once public;
only the owner and the maintainers it names manage it; tasks are their submitter's; the audit log records
each change and never a token."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, create_token

TIMEOUT_S = 60


def registry_cli(stack: StackInfo, *args: str) -> str:
    command = [sys.executable, "-m", "dlhub.registry", *args, "--data-dir", str(stack.data_dir)]
    done = subprocess.run(command, env=stack.env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def call(method: str, url: str, token: str | None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, headers=auth(token), timeout=TIMEOUT_S, **kwargs)


def found_by_search(stack: StackInfo, token: str | None, name: str) -> bool:
    reply = call("GET", f"{stack.api}/search", token, params={"name": name})
    assert reply.status_code == 200, reply.text
    return any(hit["name"] == name for hit in reply.json()["hits"])


@pytest.fixture(scope="module")
def private_servable(stack: StackInfo, alice: DLHubClient, pkg_dir: Path) -> str:
    name = f"private_{uuid.uuid4().hex[:8]}"
    doc = python_function_document(
        name=name,
        module="e2efns",
        function="double",
        files=["e2efns.py"],
        title="Private",
        authors=["Doe, J"],
    )
    doc["dlhub"]["visible_to"] = ["user:alice"]
    assert alice.publish(doc, base_dir=pkg_dir)["status"] == "ready"
    return f"alice/{name}"


def test_private_group_public(stack: StackInfo, private_servable: str) -> None:
    alice, bob = stack.tokens["alice"], stack.tokens["bob"]
    group, carol = f"lab_{uuid.uuid4().hex[:6]}", f"carol_{uuid.uuid4().hex[:6]}"
    registry_cli(stack, "group", "add", group, carol)  # before carol's first request: no stale cache
    carol_token = create_token(stack.env, stack.data_dir, carol)
    base = f"{stack.api}/servables/{private_servable}"
    name = private_servable.split("/")[1]
    body = {"inputs": [1, 2]}

    owner_run = call("POST", base + "/run", alice, json=body)
    assert owner_run.status_code == 200 and owner_run.json()["output"] == [2, 4]
    assert call("POST", base + "/run", alice, json=body).json()["cached"] is True  # memoized now
    wait_until(lambda: found_by_search(stack, alice, name), timeout_s=30, message="indexed for its owner")

    for who in (bob, carol_token, None):
        for method, path in [("GET", ""), ("GET", "/versions/1"), ("GET", "/citation"), ("GET", "/access")]:
            assert call(method, base + path, who).status_code == 404, (who, path)
        run = call("POST", base + "/run", who, json=body)  # the memoized result is not theirs either
        assert run.status_code == 404 and run.json()["error"]["type"] == "not_found"
        pipeline = {"steps": [{"servable": private_servable}], "inputs": [1]}
        assert call("POST", f"{stack.api}/pipelines/run", who, json=pipeline).status_code == 404
        assert not found_by_search(stack, who, name)
    for method, path, payload in [
        ("PUT", "/access", {"add": ["public"]}),
        ("POST", "/versions/1/deprecate", None),
        ("DELETE", "", None),
    ]:
        assert call(method, base + path, bob, json=payload).status_code == 404, path

    shared = call("PUT", base + "/access", alice, json={"add": [f"group:{group}"]})
    assert shared.status_code == 200 and shared.json()["visible_to"] == ["user:alice", f"group:{group}"]
    # At once: the group member runs it, finds it, reads its citation; others still do not.
    assert call("POST", base + "/run", carol_token, json=body).json()["output"] == [2, 4]
    assert found_by_search(stack, carol_token, name)
    assert call("GET", base + "/citation", carol_token).status_code == 200
    assert call("POST", base + "/run", bob, json=body).status_code == 404
    assert not found_by_search(stack, bob, name)
    # Seeing is not managing: 403 for the member until the owner names it a maintainer.
    assert call("PUT", base + "/access", carol_token, json={"add": ["public"]}).status_code == 403
    assert call("POST", base + "/versions/1/deprecate", carol_token).status_code == 403
    named = call("PUT", base + "/access", alice, json={"maintainers": [f"user:{carol}"]})
    assert named.status_code == 200 and named.json()["maintainers"] == [f"user:{carol}"]
    assert (
        call("POST", base + "/versions/1/deprecate", carol_token, json={"reason": "old"}).status_code == 200
    )
    assert call("POST", base + "/versions/1/undeprecate", carol_token).status_code == 200
    assert call("PUT", base + "/access", carol_token, json={"maintainers": []}).status_code == 403

    public = call("PUT", base + "/access", carol_token, json={"add": ["public"]})  # a maintainer may share
    assert public.status_code == 200 and "public" in public.json()["visible_to"]
    assert call("POST", base + "/run", bob, json=body).json()["output"] == [2, 4]
    assert call("POST", base + "/run", None, json=body).status_code == 200
    assert found_by_search(stack, None, name)
    # And private again, at once.
    assert call("PUT", base + "/access", alice, json={"visible_to": ["user:alice"]}).status_code == 200
    assert call("POST", base + "/run", bob, json=body).status_code == 404
    assert not found_by_search(stack, None, name)


def test_a_task_is_readable_only_by_its_submitter(stack: StackInfo, private_servable: str) -> None:
    alice, bob = stack.tokens["alice"], stack.tokens["bob"]
    accepted = call(
        "POST",
        f"{stack.api}/servables/{private_servable}/run",
        alice,
        json={"inputs": [5], "asynchronous": True, "memoize": False},
    )
    assert accepted.status_code == 202, accepted.text
    task_url = f"{stack.api}/tasks/{accepted.json()['task_id']}"
    wait_until(
        lambda: call("GET", task_url, alice).json()["state"] == "completed", timeout_s=30, message="task done"
    )
    assert call("GET", task_url, alice).json()["output"] == [10]
    for who in (bob, None):
        reply = call("GET", task_url, who)
        assert reply.status_code == 404 and "output" not in reply.text


def test_whoami_and_the_audit_log(stack: StackInfo, private_servable: str) -> None:
    alice, bob = stack.tokens["alice"], stack.tokens["bob"]
    me = call("GET", f"{stack.api}/whoami", alice).json()
    assert me["user"] == "alice" and me["admin"] is True and me["provider"] == "local"
    assert me["token"].startswith("…") and alice not in str(me)
    assert call("GET", f"{stack.api}/whoami", None).json()["provider"] == "anonymous"
    assert call("GET", f"{stack.api}/whoami", "dlh_forged").status_code == 401

    assert call("GET", f"{stack.api}/audit", bob).status_code == 403
    assert call("GET", f"{stack.api}/audit", None).status_code == 401
    events = call("GET", f"{stack.api}/audit", alice, params={"target": private_servable}).json()["events"]
    assert [e["action"] for e in events] == [
        "visibility"
    ] * 4  # newest first: private, public, maintainers, group
    assert events[0]["actor"] == "alice" and events[0]["detail"]["visible_to"] == ["user:alice"]
    assert events[1]["actor"].startswith("carol_") and "public" in events[1]["detail"]["visible_to"]
    versions = call("GET", f"{stack.api}/audit", alice, params={"target": f"{private_servable}@1"}).json()
    assert [e["action"] for e in versions["events"]] == ["undeprecate", "deprecate", "publish"]
    publish = call("GET", f"{stack.api}/audit", alice, params={"action": "publish", "actor": "alice"}).json()
    assert any(e["target"] == f"{private_servable}@1" for e in publish["events"])
    tokens = call("GET", f"{stack.api}/audit", alice, params={"action": "token.create"}).json()["events"]
    assert {"user:alice", "user:bob"} <= {e["target"] for e in tokens}
    everything = call("GET", f"{stack.api}/audit", alice, params={"limit": 1000}).text
    assert alice not in everything and bob not in everything  # never a token, only a short hint
    assert all(e["at"] and e["actor"] for e in events)


def dlhub(stack: StackInfo, home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = stack.env | {"DLHUB_HOME": str(home), "DLHUB_URL": stack.url}
    command = [sys.executable, "-m", "dlhub.client.cli", *args]
    return subprocess.run(
        command, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_login_whoami_share_logout(stack: StackInfo, private_servable: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert "anonymous" in dlhub(stack, home, "whoami").stdout
    refused = dlhub(stack, home, "login", stdin="dlh_wrong\n")
    assert refused.returncode == 1 and "unauthorized" in refused.stderr
    assert not (home / "client.json").exists()  # a refused token is never saved
    done = dlhub(stack, home, "login", stdin=stack.tokens["alice"] + "\n")
    assert done.returncode == 0 and "as alice" in done.stdout, done.stderr
    assert stack.tokens["alice"] not in done.stdout + done.stderr
    assert (home / "client.json").stat().st_mode & 0o077 == 0
    assert "alice (local, administrator)" in dlhub(stack, home, "whoami").stdout
    # The SDK picks the saved credentials up.
    env_home = {"DLHUB_HOME": str(home), "DLHUB_URL": stack.url}
    sdk = subprocess.run(
        [sys.executable, "-c", "from dlhub.client import DLHubClient; print(DLHubClient().whoami()['user'])"],
        env=stack.env | env_home,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert sdk.stdout.strip() == "alice"

    shown = dlhub(stack, home, "share", private_servable)
    assert shown.returncode == 0 and "visible to user:alice" in shown.stdout, shown.stderr
    public = dlhub(stack, home, "share", private_servable, "--public", "--with", "group:friends")
    assert "public" in public.stdout and "group:friends" in public.stdout, public.stderr
    assert (
        call("POST", f"{stack.api}/servables/{private_servable}/run", None, json={"inputs": [1]}).status_code
        == 200
    )
    private = dlhub(stack, home, "share", private_servable, "--private")
    assert private.stdout.splitlines()[0].endswith("visible to user:alice"), private.stdout
    assert (
        call("POST", f"{stack.api}/servables/{private_servable}/run", None, json={"inputs": [1]}).status_code
        == 404
    )

    assert "signed out" in dlhub(stack, home, "logout").stdout
    assert "anonymous" in dlhub(stack, home, "whoami").stdout
