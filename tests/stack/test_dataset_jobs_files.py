"""Dataset jobs over files on the session's embedded stack (registry, broker, worker, builder as processes):
each of a dataset's 50 small files passed to a servable as a file input (the worker fetches it through a
signed URL the registry serves straight out of the stored package), one at a time or in batches split on
failure, the malformed file reported with its path, cancellation keeping partial results, the output
published as a dataset linked to both inputs; refusals typed; through REST, the SDK and the CLI.
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

FILES = 50
MALFORMED = 17
"""The file whose content is no number: the servable raises on it."""

FILE_FUNCTIONS = """
import os
import time


def _value(path):
    # The extension survives the download (the worker names the copy after the served file name).
    if not path.endswith(".txt"):
        raise ValueError(f"unexpected local name {os.path.basename(path)}")
    with open(path) as fh:
        return 2 * int(fh.read())


def one(path):
    return _value(path)


def many(paths):
    time.sleep(0.05)
    return [_value(p) for p in paths]


def slow_many(paths):
    time.sleep(0.4)
    return [_value(p) for p in paths]


def not_files(text):
    return text
"""
FILE = {"type": "file"}
SERVABLES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "one": ("one", FILE, {"type": "integer"}),
    "many": ("many", {"type": "list", "item_type": FILE}, {"type": "list", "item_type": {"type": "integer"}}),
    "slow": ("slow_many", {"type": "list", "item_type": FILE}, {"type": "list"}),
    "plain": ("not_files", {"type": "string"}, {"type": "string"}),
}


def file_path(i: int) -> str:
    return f"items/f{i:02d}.txt"


def expected(i: int) -> int:
    return 2 * (i * 3)


@pytest.fixture(scope="module")
def dataset(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """50 small text files (each a number; ``items/f17.txt`` malformed) plus a README: owner/name."""
    folder = tmp_path_factory.mktemp("filedata")
    (folder / "items").mkdir()
    for i in range(FILES):
        (folder / file_path(i)).write_text("not a number\n" if i == MALFORMED else f"{i * 3}\n")
    (folder / "README.md").write_text("fifty numbers\n")
    name = unique("numbers")
    names = ["README.md"] + [file_path(i) for i in range(FILES)]
    reply = alice.publish_dataset(name, names, title="Numbers", authors=["Doe, Jane"], base_dir=folder)
    assert reply["status"] == "ready", reply
    return f"alice/{name}"


@pytest.fixture(scope="module")
def servables(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("filefns")
    (folder / "filefns.py").write_text(FILE_FUNCTIONS)
    refs = {}
    for key, (function, input_type, output_type) in SERVABLES.items():
        document = python_function_document(
            name=unique(f"files_{key}"),
            module="filefns",
            function=function,
            files=["filefns.py"],
            title=f"Files {key}",
            authors=["Doe, Jane"],
            input_type=input_type,
            output_type=output_type,
        )
        reply = alice.publish(document, base_dir=folder)
        assert reply["status"] == "ready", reply
        refs[key] = f"alice/{reply['name']}@{reply['version']}"
    return refs


def headers(stack: StackInfo, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.tokens[user]}"}


def check_lines(lines: list[dict[str, Any]]) -> None:
    """Every file once, in path order, with its path; the malformed one failed, the others computed."""
    assert [line["index"] for line in lines] == list(range(FILES))
    assert [line["path"] for line in lines] == [file_path(i) for i in range(FILES)]
    for line in lines:
        if line["index"] == MALFORMED:
            assert line["output"] is None and line["error"]["exception_type"] == "ValueError"
        else:
            assert line["error"] is None and line["output"] == expected(line["index"]), line


@pytest.mark.parametrize("key", ["one", "many"])
def test_each_file_runs_and_the_malformed_one_is_reported_by_path(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str], key: str
) -> None:
    body = {"servable": servables[key], "over": "files", "files": "items/*.txt", "batch_files": 8}
    reply = httpx.post(f"{stack.api}/servables/{dataset}/apply", json=body, headers=headers(stack))
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert accepted["over"] == "files" and accepted["files"] == "items/*.txt" and accepted["total"] == FILES
    assert accepted["file"] is None and accepted["columns"] == []
    assert accepted["mode"] == ("row" if key == "one" else "batch")
    handle_id = accepted["task_id"]

    def ended() -> dict[str, Any] | None:
        task = httpx.get(f"{stack.api}/tasks/{handle_id}", headers=headers(stack)).json()
        return task if task["state"] in ("completed", "failed") else None

    task = wait_until(ended, timeout_s=120, interval_s=0.1)
    assert task["state"] == "completed", task
    assert task["progress"] == {"done": FILES, "total": FILES, "failed": 1}
    output = task["output"]
    assert output["over"] == "files" and output["items"] == FILES and output["files"] == "items/*.txt"
    assert output["succeeded"] == FILES - 1 and output["failed"] == 1
    [failure] = output["failures"]
    assert failure["index"] == MALFORMED and failure["path"] == file_path(MALFORMED)
    assert failure["error"]["type"] == "servable_error" and "not a number" in failure["error"]["message"]
    results = httpx.get(f"{stack.api}/tasks/{handle_id}/results", headers=headers(stack))
    check_lines([json.loads(line) for line in results.text.splitlines()])

    # The output dataset: the caller's, linked to the dataset and the servable, its file the same lines.
    out_ref = output["dataset"]
    described = alice.describe(out_ref)
    assert described["type"] == "dataset" and described["status"] == "ready"
    links = {(link["relation"], link["relationType"], link["dataset"]) for link in described["datasets"]}
    assert links == {
        ("source", "IsDerivedFrom", f"{dataset}@1"),
        ("model", "IsCompiledBy", servables[key]),
    }
    assert (out_ref, "source") in {(u["servable"], u["relation"]) for u in alice.describe(dataset)["used_by"]}
    path = f"{stack.api}/servables/{out_ref.replace('@', '/versions/')}/files/results.jsonl"
    published = httpx.get(path, headers=headers(stack))
    assert published.status_code == 200
    check_lines([json.loads(line) for line in published.text.splitlines()])


def test_cancelling_a_file_job_keeps_its_partial_results(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str]
) -> None:
    handle = alice.apply(dataset, servables["slow"], over="files", files="*.txt", batch_files=2)
    wait_until(lambda: (handle.progress() or {}).get("done", 0) >= 6, timeout_s=60, interval_s=0.05)
    cancelled = handle.cancel()
    assert cancelled["state"] == "failed" and cancelled["error"]["type"] == "cancelled"
    done = cancelled["progress"]["done"]
    assert 6 <= done < FILES and cancelled["progress"]["total"] == FILES
    assert "files done" in cancelled["error"]["message"]
    results = handle.results()
    assert [r["index"] for r in results] == list(range(done))
    assert [r["path"] for r in results] == [file_path(i) for i in range(done)]
    time.sleep(1.0)  # a late batch would show here: the task and its results stay as they were
    assert handle.status()["progress"]["done"] == done
    assert len(handle.results()) == done


def test_bad_file_job_requests_are_refused_typed(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str]
) -> None:
    def apply(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{stack.api}/servables/{dataset}/apply", json=body, headers=headers(stack))

    one = servables["one"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"servable": servables["plain"], "over": "files"}, "over"),
        ({"servable": one, "over": "files", "files": "*.png"}, "files"),
        ({"servable": one, "over": "files", "files": "items/[x"}, "files"),
        ({"servable": one, "over": "files", "columns": ["x"]}, "columns"),
        ({"servable": one, "over": "files", "file": "README.md"}, "file"),
        ({"servable": one, "over": "files", "mode": "batch"}, "mode"),
        ({"servable": one, "files": "*.txt"}, "files"),
        ({"servable": one, "over": "files", "batch_files": 10**6}, "batch_files"),
        ({"servable": one, "over": "files", "batch_files": 0}, "batch_files"),
    ]
    for body, field in cases:
        reply = apply(body)
        assert reply.status_code == 400, (body, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "validation_error" and error["field"] == field, (body, error)
    plain = apply({"servable": servables["plain"], "over": "files"}).json()["error"]["message"]
    assert "'string'" in plain and "'file'" in plain
    # The signed download a worker gets is no open door: without (or with a forged) signature it is a 403.
    sha = alice.files(dataset)["package"]["sha256"]
    url = f"{stack.api}/packages/{sha}/files/{file_path(0)}"
    assert httpx.get(url).status_code == 403
    forged = httpx.get(url, params={"expires": str(int(time.time()) + 60), "sig": "0" * 64})
    assert forged.status_code == 403 and forged.json()["error"]["type"] == "forbidden"


def test_cli_apply_over_files(
    stack: StackInfo, alice: DLHubClient, dataset: str, servables: dict[str, str], tmp_path: Path
) -> None:
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])
    name = unique("cli_files")
    result = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "apply", dataset, servables["many"], "--over", "files",
         "--files", "*.txt", "--batch-files", "10", "--output-name", name, "--wait"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["state"] == "completed" and record["output"]["dataset"] == f"alice/{name}@1"
    assert record["output"]["failures"][0]["path"] == file_path(MALFORMED)
    assert f"{FILES}/{FILES} files (1 failed)" in result.stderr
