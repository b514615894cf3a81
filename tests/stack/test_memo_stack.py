"""The memo on the session's embedded stack: repeated runs answered from it, never for failures or
non-deterministic servables (split from tests/unit/test_memo.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import StackInfo

COUNTED = """
import random


def counted(spec):
    with open(spec["log"], "a") as fh:
        fh.write("run\\n")
    if spec.get("fail"):
        raise ValueError("asked to fail")
    return {"double": 2 * spec["x"]}


def noisy(spec):
    with open(spec["log"], "a") as fh:
        fh.write("run\\n")
    return random.random()
"""


def doc_for(name: str, function: str, *, deterministic: bool | None = None) -> dict[str, Any]:
    doc = python_function_document(
        name=name,
        module="memofns",
        function=function,
        files=["memofns.py"],
        title=f"{function} (memo test)",
        authors=["Doe, Jane"],
    )
    if deterministic is not None:
        doc["servable"]["options"] = {"deterministic": deterministic}
    return doc


def publish(alice: DLHubClient, pkg: Path, function: str, *, deterministic: bool | None = None) -> str:
    name = f"{function}_{uuid.uuid4().hex[:8]}"
    reply = alice.publish(doc_for(name, function, deterministic=deterministic), base_dir=pkg)
    assert reply["status"] == "ready"
    return name


def run(stack: StackInfo, servable: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.api}/servables/{servable}/run",
        json=body,
        headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
        timeout=60,
    )
    assert response.status_code in (200, 202), response.text
    reply: dict[str, Any] = response.json()
    return reply


def executions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def memo_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memo_pkg")
    (path / "memofns.py").write_text(COUNTED)
    return path


def test_a_repeated_run_is_answered_from_the_memo(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    name = publish(alice, memo_pkg, "counted")
    log = tmp_path / "runs.log"
    spec = {"log": str(log), "x": 21}

    first = run(stack, f"alice/{name}", {"inputs": spec})
    assert first["state"] == "completed" and first["output"] == {"double": 42}
    assert first["cached"] is False and executions(log) == 1
    second = run(stack, f"alice/{name}", {"inputs": dict(reversed(list(spec.items())))})
    assert second["state"] == "completed" and second["output"] == {"double": 42}
    assert second["cached"] is True and executions(log) == 1
    assert second["task_id"] != first["task_id"] and second["servable"] == f"alice/{name}@1"
    timings = second["timings"]
    assert timings["inference_ms"] == 0 and timings["invocation_ms"] == 0 and timings["request_ms"] > 0

    other = run(stack, f"alice/{name}", {"inputs": {"log": str(log), "x": 1}})
    assert other["output"] == {"double": 2} and other["cached"] is False and executions(log) == 2

    # memoize: false skips the lookup (the function runs again) ...
    bypass = run(stack, f"alice/{name}", {"inputs": spec, "memoize": False})
    assert bypass["output"] == {"double": 42} and bypass["cached"] is False and executions(log) == 3
    # ... and the pinned version hits the same entry as the latest.
    pinned = run(stack, f"alice/{name}/versions/1", {"inputs": spec})
    assert pinned["cached"] is True and executions(log) == 3
    # A bypassing run still stores its fresh result (keyed once the response is out): the next lookup hits.
    fresh = {"log": str(log), "x": 7}
    stored = run(stack, f"alice/{name}", {"inputs": fresh, "memoize": False})
    assert stored["output"] == {"double": 14} and stored["cached"] is False and executions(log) == 4
    hit = run(stack, f"alice/{name}", {"inputs": fresh})
    assert hit["output"] == {"double": 14} and hit["cached"] is True and executions(log) == 4


def test_asynchronous_runs_use_and_fill_the_memo(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    name = publish(alice, memo_pkg, "counted")
    log = tmp_path / "runs.log"
    spec = {"log": str(log), "x": 5}

    accepted = run(stack, f"alice/{name}", {"inputs": spec, "asynchronous": True})
    assert accepted["cached"] is False
    assert alice.status(accepted["task_id"]) is not None
    wait_until(
        lambda: alice.status(accepted["task_id"])["state"] == "completed",
        timeout_s=30,
        message="the async run",
    )
    assert executions(log) == 1

    hit = run(stack, f"alice/{name}", {"inputs": spec, "asynchronous": True})
    assert hit["state"] == "completed" and hit["cached"] is True
    task = alice.status(hit["task_id"])
    assert task["state"] == "completed" and task["output"] == {"double": 10}
    assert task["timings"]["invocation_ms"] == 0
    sync = run(stack, f"alice/{name}", {"inputs": spec})
    assert sync["cached"] is True and executions(log) == 1


def test_a_non_deterministic_servable_is_never_memoized(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    name = publish(alice, memo_pkg, "noisy", deterministic=False)
    log = tmp_path / "runs.log"
    replies = [run(stack, f"alice/{name}", {"inputs": {"log": str(log)}}) for _ in range(3)]
    assert [r["cached"] for r in replies] == [False, False, False]
    assert executions(log) == 3
    assert len({r["output"] for r in replies}) == 3


def test_a_new_version_never_hits_the_old_versions_entries(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    name = publish(alice, memo_pkg, "counted")
    log = tmp_path / "runs.log"
    spec = {"log": str(log), "x": 3}
    assert run(stack, f"alice/{name}", {"inputs": spec})["cached"] is False
    assert run(stack, f"alice/{name}", {"inputs": spec})["cached"] is True
    assert executions(log) == 1

    reply = alice.update(f"alice/{name}", doc_for(name, "counted"), base_dir=memo_pkg)
    assert reply["version"] == 2
    fresh = run(stack, f"alice/{name}", {"inputs": spec})
    assert fresh["servable"] == f"alice/{name}@2" and fresh["cached"] is False and executions(log) == 2
    assert run(stack, f"alice/{name}", {"inputs": spec})["cached"] is True
    assert run(stack, f"alice/{name}/versions/1", {"inputs": spec})["cached"] is True
    assert executions(log) == 2

    # Deleted and re-published under the same name: a new version number, so a fresh run.
    alice.delete(f"alice/{name}")
    alice.publish(doc_for(name, "counted"), base_dir=memo_pkg)
    again = run(stack, f"alice/{name}", {"inputs": spec})
    assert again["servable"] == f"alice/{name}@3" and again["cached"] is False and executions(log) == 3


def test_a_failure_is_never_memoized(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    name = publish(alice, memo_pkg, "counted")
    log = tmp_path / "runs.log"
    spec = {"log": str(log), "x": 1, "fail": True}
    for expected in (1, 2):
        reply = run(stack, f"alice/{name}", {"inputs": spec})
        assert reply["state"] == "failed" and reply["cached"] is False
        assert reply["error"]["exception_type"].endswith("ValueError")
        assert executions(log) == expected


def test_a_pipeline_result_is_memoized_as_a_whole(
    stack: StackInfo, alice: DLHubClient, memo_pkg: Path, tmp_path: Path
) -> None:
    first = publish(alice, memo_pkg, "counted")
    log = tmp_path / "runs.log"
    body: dict[str, Any] = {
        "steps": [{"servable": f"alice/{first}"}],
        "inputs": {"log": str(log), "x": 4},
    }
    headers = {"Authorization": f"Bearer {stack.tokens['alice']}"}
    replies = [httpx.post(f"{stack.api}/pipelines/run", json=body, headers=headers, timeout=60).json()]
    replies.append(httpx.post(f"{stack.api}/pipelines/run", json=body, headers=headers, timeout=60).json())
    assert [r["output"] for r in replies] == [{"double": 8}, {"double": 8}]
    assert [r["cached"] for r in replies] == [False, True] and executions(log) == 1
    body["memoize"] = False
    bypass = httpx.post(f"{stack.api}/pipelines/run", json=body, headers=headers, timeout=60).json()
    assert bypass["cached"] is False and executions(log) == 2
