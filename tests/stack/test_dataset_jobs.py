"""Dataset jobs on the session's embedded stack (registry, broker, worker, builder as processes): a servable
applied to every row of a 10,000-row CSV dataset in batches through the broker, with progress, one failing
row reported per item, cancellation with partial results kept, and the output published as a dataset linked
to both inputs; through REST, the SDK and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique

ROWS = 10_000
POISONED = 4242
"""The row whose id makes the servable raise."""

JOB_FUNCTIONS = '''
import time


def score(rows):
    """One output per row [id, x]: 2x + 1; the row with id 4242 raises. A call takes at least 50 ms, so
    that a test polling the job sees it half-way."""
    time.sleep(0.05)
    out = []
    for row_id, x in rows:
        if row_id == 4242:
            raise ValueError(f"row id {row_id} is poisoned")
        out.append(2 * x + 1)
    return out


def slow_score(rows):
    time.sleep(0.3)
    return [2 * x + 1 for _, x in rows]
'''
ROWS_OF_FLOATS = {"type": "list", "item_type": {"type": "list", "item_type": {"type": "float"}}}


def expected_output(row_id: int) -> float:
    return 2 * (row_id * 0.5) + 1


@pytest.fixture(scope="module")
def dataset(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 10,000-row CSV dataset of alice's (id, x, label): its owner/name."""
    folder = tmp_path_factory.mktemp("jobdata")
    lines = ["id,x,label"] + [f"{i},{i * 0.5},row {i}" for i in range(ROWS)]
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    name = unique("rows")
    reply = alice.publish_dataset(name, ["rows.csv"], title="Rows", authors=["Doe, Jane"], base_dir=folder)
    assert reply["status"] == "ready"
    return f"alice/{name}"


@pytest.fixture(scope="module")
def servables(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``score`` (raises on the poisoned row) and ``slow`` (0.3 s per call): owner/name@version each."""
    folder = tmp_path_factory.mktemp("jobfns")
    (folder / "jobfns.py").write_text(JOB_FUNCTIONS)
    refs = {}
    for key, function in (("score", "score"), ("slow", "slow_score")):
        document = python_function_document(
            name=unique(f"job_{key}"),
            module="jobfns",
            function=function,
            files=["jobfns.py"],
            title=f"Job {key}",
            authors=["Doe, Jane"],
            input_type=ROWS_OF_FLOATS,
            output_type={"type": "list", "item_type": {"type": "float"}},
        )
        reply = alice.publish(document, base_dir=folder)
        assert reply["status"] == "ready", reply
        refs[key] = f"alice/{reply['name']}@{reply['version']}"
    return refs


def headers(stack: StackInfo, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.tokens[user]}"}


def test_a_10000_row_job_reports_the_failing_row_and_publishes_linked_results(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str]
) -> None:
    body = {"servable": servables["score"], "columns": ["id", "x"], "batch_rows": 500}
    started = time.monotonic()
    reply = httpx.post(f"{stack.api}/servables/{dataset}/apply", json=body, headers=headers(stack))
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert accepted["mode"] == "batch" and accepted["columns"] == ["id", "x"]
    assert accepted["dataset"] == f"{dataset}@1" and accepted["file"] == "rows.csv"
    task_id = accepted["task_id"]

    seen: list[dict[str, Any]] = []

    def ended() -> dict[str, Any] | None:
        task = httpx.get(f"{stack.api}/tasks/{task_id}", headers=headers(stack)).json()
        seen.append(task["progress"])
        return task if task["state"] in ("completed", "failed") else None

    task = wait_until(ended, timeout_s=120, interval_s=0.1)
    elapsed = time.monotonic() - started
    assert task["state"] == "completed", task
    assert task["kind"] == "job" and task["servable"] == servables["score"]
    # Progress was visible while it ran: the total counted, done growing from below it to all rows.
    assert task["progress"] == {"done": ROWS, "total": ROWS, "failed": 1}
    partial = [p["done"] for p in seen if p["total"] == ROWS and 0 < p["done"] < ROWS]
    assert partial, f"no intermediate progress seen in {len(seen)} polls: {seen}"
    assert partial == sorted(partial)

    output = task["output"]
    assert output["rows"] == ROWS and output["succeeded"] == ROWS - 1 and output["failed"] == 1
    [failure] = output["failures"]
    assert failure["index"] == POISONED
    assert failure["error"]["type"] == "servable_error"
    assert failure["error"]["exception_type"] == "ValueError"
    assert "row id 4242 is poisoned" in failure["error"]["message"]

    # The output dataset: the caller's, ready, linked to both inputs, its file the expected outputs.
    out_ref = output["dataset"]
    assert out_ref.startswith("alice/")
    described = alice.describe(out_ref)
    assert described["type"] == "dataset" and described["status"] == "ready"
    links = {(link["relation"], link["relationType"], link["dataset"]) for link in described["datasets"]}
    assert links == {
        ("source", "IsDerivedFrom", f"{dataset}@1"),
        ("model", "IsCompiledBy", servables["score"]),
    }
    used_by = alice.describe(dataset)["used_by"]
    assert {(u["servable"], u["relation"]) for u in used_by} == {(out_ref, "source")}
    datacite = alice.citation(out_ref, format="datacite")
    assert isinstance(datacite, dict) and datacite["resourceType"]["resourceTypeGeneral"] == "Dataset"
    relations = {r["relationType"] for r in datacite["relatedIdentifiers"]}
    assert {"IsDerivedFrom", "IsCompiledBy"} <= relations
    path = f"{stack.api}/servables/{out_ref.replace('@', '/versions/')}/files/results.jsonl"
    assert httpx.get(path).status_code == 404  # the output is the caller's alone by default
    file = httpx.get(path, headers=headers(stack))
    assert file.status_code == 200
    lines = [json.loads(line) for line in file.text.splitlines()]
    assert [line["index"] for line in lines] == list(range(ROWS))
    for line in lines:
        if line["index"] == POISONED:
            assert line["output"] is None and line["error"]["exception_type"] == "ValueError"
        else:
            assert line["error"] is None and line["output"] == pytest.approx(expected_output(line["index"]))
    print(f"\n10,000-row job: {elapsed:.2f} s end to end ({ROWS / elapsed:.0f} rows/s), output {out_ref}")


def test_cancelling_a_job_keeps_its_partial_results(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str]
) -> None:
    handle = alice.apply(dataset, servables["slow"], columns=["id", "x"], batch_rows=100)
    wait_until(lambda: (handle.progress() or {}).get("done", 0) >= 300, timeout_s=60, interval_s=0.1)
    cancelled = handle.cancel()
    assert cancelled["state"] == "failed" and cancelled["error"]["type"] == "cancelled"
    done = cancelled["progress"]["done"]
    assert 300 <= done < ROWS and cancelled["progress"]["total"] == ROWS
    # What was done is kept, in row order, and nothing more happens after the cancel.
    results = handle.results()
    assert [r["index"] for r in results] == list(range(done))
    assert all(r["output"] == pytest.approx(expected_output(r["index"])) for r in results)
    time.sleep(1.0)  # a late batch would show here: the task and its results stay as they were
    assert handle.status()["progress"]["done"] == done
    assert len(handle.results()) == done
    # Cancelling again is a conflict; someone else's job is not found.
    again = httpx.post(f"{stack.api}/tasks/{handle.task_id}/cancel", headers=headers(stack))
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
    other = httpx.post(f"{stack.api}/tasks/{handle.task_id}/cancel", headers=headers(stack, "bob"))
    assert other.status_code == 404
    foreign = httpx.get(f"{stack.api}/tasks/{handle.task_id}/results", headers=headers(stack, "bob"))
    assert foreign.status_code == 404


def test_bad_job_requests_are_refused_typed(
    stack: StackInfo, dataset: str, servables: dict[str, str]
) -> None:
    def apply(body: dict[str, Any], token: str | None = "alice", ref: str = dataset) -> httpx.Response:
        auth = headers(stack, token) if token else {}
        return httpx.post(f"{stack.api}/servables/{ref}/apply", json=body, headers=auth)

    score = servables["score"]
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"servable": score, "columns": ["id", "nope"]}, 400, "columns[1]"),
        ({"servable": score, "file": "other.csv"}, 404, None),
        ({"servable": score, "method": "predict"}, 400, "method"),
        ({"servable": score, "mode": "row"}, 400, "mode"),
        ({"servable": dataset}, 400, "servable"),
        ({"servable": "alice/does_not_exist"}, 404, None),
        ({"servable": score, "batch_rows": 0}, 400, "batch_rows"),
        ({"servable": score, "unknown": 1}, 400, None),
    ]
    for body, status, field in cases:
        reply = apply(body)
        assert reply.status_code == status, (body, reply.text)
        if field is not None:
            assert reply.json()["error"]["field"] == field, (body, reply.text)
    assert apply({"servable": score}, token=None).status_code == 401
    not_a_dataset = servables["score"].partition("@")[0]
    assert apply({"servable": score}, ref=not_a_dataset).json()["error"]["field"] == "dataset"


def test_cli_apply_shows_progress_and_waits(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str], tmp_path: Path
) -> None:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    name = unique("cli_scored")
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "apply", dataset, servables["score"], "--column", "id",
         "--column", "x", "--batch-rows", "1000", "--output-name", name, "--wait"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["state"] == "completed" and record["output"]["dataset"] == f"alice/{name}@1"
    assert record["output"]["failures"][0]["index"] == POISONED
    assert f"{ROWS}/{ROWS} rows (1 failed)" in result.stderr
    assert alice.describe(f"alice/{name}")["status"] == "ready"
