"""Pipelines published as servables, end to end against the real stack (`dlhub up`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import pipeline_document, python_function_document
from dlhub.common.errors import Gone, NotFound, ValidationFailed
from dlhub.common.ids import servable_topic
from dlhub.registry.pipelines import MAX_PIPELINE_STEPS
from tests.stack.test_cli import dlhub
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique

AUTHORS = ["Doe, Jane"]

STEPS_V1 = """
def parse(text):
    return [float(x) for x in text.split(",")]


def scale(values, factor=2):
    if any(v < 0 for v in values):
        raise ValueError("negative values cannot be scaled")
    return [factor * v for v in values]


def total(values):
    return sum(values)
"""

# Version 2 of the scale step lives in another module so both versions can be loaded side by side.
STEPS_V2 = """
def scale(values, factor=10):
    return [factor * v for v in values]
"""

TEXT = {"type": "string", "description": "comma-separated numbers"}
NUMBERS = {"type": "list", "item_type": {"type": "float"}}
NUMBER = {"type": "float"}


def function_doc(name: str, module: str, function: str, **kwargs: Any) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module=module,
        function=function,
        files=[f"{module}.py"],
        title=f"{function} step",
        authors=AUTHORS,
        **kwargs,
    )


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipefns")
    (path / "pipefns.py").write_text(STEPS_V1)
    (path / "pipefns_v2.py").write_text(STEPS_V2)
    return path


def publish_step(client: DLHubClient, steps_dir: Path, function: str, **kwargs: Any) -> str:
    name = unique(function)
    reply = client.publish(function_doc(name, "pipefns", function, **kwargs), base_dir=steps_dir)
    assert reply["status"] == "ready"
    return str(reply["shorthand_name"])


@pytest.fixture(scope="module")
def steps(alice: DLHubClient, steps_dir: Path) -> list[str]:
    """parse (string -> numbers) -> scale (x2) -> total (sum), each a python-function servable of alice."""
    return [
        publish_step(alice, steps_dir, "parse", input_type=TEXT, output_type=NUMBERS),
        publish_step(alice, steps_dir, "scale", input_type=NUMBERS, output_type=NUMBERS),
        publish_step(alice, steps_dir, "total", input_type=NUMBERS, output_type=NUMBER),
    ]


def publish_pipeline(client: DLHubClient, steps: list[Any], **kwargs: Any) -> str:
    name = kwargs.pop("name", None) or unique("pipe")
    reply = client.publish_pipeline(name, steps, title="parse, scale, sum", authors=AUTHORS, **kwargs)
    assert reply["status"] == "ready" and reply["version"] >= 1
    return str(reply["shorthand_name"])


def publish_status(stack: StackInfo, token: str, document: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.api}/servables", json=document, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def bad_publish(stack: StackInfo, steps: list[Any], token: str | None = None) -> dict[str, Any]:
    document = pipeline_document(name=unique("badpipe"), steps=steps, title="bad", authors=AUTHORS)
    response = publish_status(stack, token or stack.tokens["alice"], document)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "validation_error"
    return error


# -- publish and run ---------------------------------------------------------------------------------------


def test_three_step_pipeline_runs_sync_and_async(alice: DLHubClient, steps: list[str]) -> None:
    pipe = publish_pipeline(alice, steps)
    assert alice.run(pipe, "1,2,3.5") == 13.0
    assert alice.run_async(pipe, "4,5").result(30) == 18.0
    record = alice.run_detailed(pipe, "1")
    assert record["servable"] == f"{pipe}@1" and record["output"] == 2.0


def test_pipeline_is_described_listed_and_searchable_with_pinned_steps(
    alice: DLHubClient, steps: list[str]
) -> None:
    pipe = publish_pipeline(alice, steps, domains=["pipelines"])
    described = alice.describe(pipe)
    pinned = [f"{s}@1" for s in steps]
    assert described["type"] == "pipeline" and described["status"] == "ready"
    assert [s["servable"] for s in described["steps"]] == pinned
    assert described["digest"].startswith("sha256:") and described["files"] == []
    run = described["metadata"]["servable"]["methods"]["run"]
    assert run["input"]["type"] == "string" and run["output"]["type"] == "float"  # first in, last out
    listed = {s["shorthand_name"]: s for s in alice.list(owner="alice", limit=1000)}
    assert listed[pipe]["type"] == "pipeline" and len(listed[pipe]["steps"]) == 3
    assert listed[steps[0]]["type"] == "servable"

    def found() -> bool:
        hits = alice.search("", servable_type="pipeline", domain="pipelines")["hits"]
        return pipe in {f"{h['owner']}/{h['name']}" for h in hits}

    wait_until(found, timeout_s=20, message="the pipeline in the search index")


def test_inputs_are_checked_against_the_first_step(
    stack: StackInfo, alice: DLHubClient, steps: list[str]
) -> None:
    pipe = publish_pipeline(alice, steps)
    response = httpx.post(
        f"{stack.api}/servables/{pipe}/run",
        json={"inputs": [1, 2]},
        headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "inputs"
    with pytest.raises(ValidationFailed) as excinfo:
        alice.run(pipe, "1", parameters={"factor": 3})
    assert excinfo.value.field == "parameters"


def test_error_in_step_two_names_the_step(alice: DLHubClient, steps: list[str]) -> None:
    pipe = publish_pipeline(alice, steps)
    record = alice.run_detailed(pipe, "1,-2")
    assert record["state"] == "failed"
    error = record["error"]
    owner, name = steps[1].split("/")
    assert error["step"] == 1 and error["topic"] == servable_topic(owner, name, 1), error
    assert error["exception_type"] == "ValueError" and "negative" in error["message"]
    with pytest.raises(TaskFailed) as excinfo:
        alice.run_async(pipe, "-1").result(30)
    assert excinfo.value.step == 1 and excinfo.value.exception_type == "ValueError"


def test_step_parameters_are_part_of_the_pipeline(alice: DLHubClient, steps: list[str]) -> None:
    pipe = publish_pipeline(alice, [steps[0], {"servable": steps[1], "parameters": {"factor": 3}}, steps[2]])
    assert alice.run(pipe, "1,2") == 9.0


# -- bad documents -----------------------------------------------------------------------------------------


def test_unknown_step_is_refused_naming_it(stack: StackInfo, steps: list[str]) -> None:
    error = bad_publish(stack, [steps[0], f"alice/{unique('missing')}"])
    assert error["field"] == "servable.steps[1].servable"
    error = bad_publish(stack, [steps[0], f"{steps[1]}@99"])
    assert error["field"] == "servable.steps[1].servable" and "@99" in error["message"]
    error = bad_publish(stack, ["not a reference"])
    assert error["field"] == "servable.steps[0].servable"


def test_missing_method_is_refused_naming_the_step(stack: StackInfo, steps: list[str]) -> None:
    error = bad_publish(stack, [steps[0], {"servable": steps[1], "method": "nope"}])
    assert error["field"] == "servable.steps[1].method" and "nope" in error["message"]


def test_step_count_limits(stack: StackInfo, steps: list[str]) -> None:
    error = bad_publish(stack, [steps[1]] * (MAX_PIPELINE_STEPS + 1))
    assert error["field"] == "servable.steps" and str(MAX_PIPELINE_STEPS) in error["message"]
    error = bad_publish(stack, [])
    assert error["field"] == "servable.steps"


def test_nested_pipelines_are_refused(stack: StackInfo, alice: DLHubClient, steps: list[str]) -> None:
    inner = publish_pipeline(alice, steps[:2])
    error = bad_publish(stack, [inner, steps[2]])
    assert error["field"] == "servable.steps[0].servable" and "nested" in error["message"]
    with pytest.raises(ValidationFailed) as excinfo:
        alice.run_pipeline([steps[0], inner], "1")  # nor do ad-hoc pipelines take one as a step
    assert excinfo.value.field == "steps[1].servable"


def test_pipeline_package_and_test_vectors_are_refused(stack: StackInfo, steps: list[str]) -> None:
    document = pipeline_document(name=unique("badpipe"), steps=steps, title="bad", authors=AUTHORS)
    document["dlhub"]["test_vectors"] = [{"inputs": "1", "expected": 2.0}]
    response = publish_status(stack, stack.tokens["alice"], document)
    assert response.status_code == 400 and response.json()["error"]["field"] == "dlhub.test_vectors"
    document["dlhub"].pop("test_vectors")
    files: dict[str, tuple[str | None, bytes | str, str]] = {
        "metadata": (None, json.dumps(document), "application/json"),
        "package": ("p.tar.gz", b"not a package", "application/gzip"),
    }
    response = httpx.post(
        f"{stack.api}/servables", files=files, headers={"Authorization": f"Bearer {stack.tokens['alice']}"}
    )
    assert response.status_code == 400 and response.json()["error"]["field"] == "package"


def test_private_steps_of_another_user_are_refused(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, steps_dir: Path, steps: list[str]
) -> None:
    private = publish_step(bob, steps_dir, "scale", visible_to=["user:bob"])
    error = bad_publish(stack, [steps[0], private, steps[2]])
    assert error["field"] == "servable.steps[1].servable"
    assert f"{private} not found" in error["message"]  # the same answer as for a servable that does not exist
    # Running checks the runner too: alice's pipeline over her own private step is not bob's to run.
    hidden = publish_step(alice, steps_dir, "total", visible_to=["user:alice"])
    pipe = publish_pipeline(alice, [steps[0], hidden])
    assert alice.run(pipe, "1,2") == 3.0
    with pytest.raises(NotFound) as excinfo:
        bob.run(pipe, "1,2")
    assert excinfo.value.field == "servable.steps[1].servable" and "step 1" in excinfo.value.message


# -- immutability, memoization, lifecycle -------------------------------------------------------------------


def scale_v2(alice: DLHubClient, steps_dir: Path, scale: str) -> None:
    """Publish version 2 of ``scale`` (x10 instead of x2)."""
    name = scale.split("/")[1]
    doc = function_doc(name, "pipefns_v2", "scale", input_type=NUMBERS, output_type=NUMBERS)
    doc["dlhub"]["files"] = {"other": ["pipefns_v2.py"]}
    assert alice.update(scale, doc, base_dir=steps_dir)["version"] == 2


def test_new_step_version_does_not_change_a_pinned_pipeline_and_memo_keys_follow(
    alice: DLHubClient, steps_dir: Path
) -> None:
    parse = publish_step(alice, steps_dir, "parse", input_type=TEXT, output_type=NUMBERS)
    scale = publish_step(alice, steps_dir, "scale", input_type=NUMBERS, output_type=NUMBERS)
    pipe_name = unique("pipe")
    pipe = publish_pipeline(alice, [parse, scale], name=pipe_name)  # unpinned: resolved to scale@1
    first = alice.run_detailed(pipe, "1,2")
    assert first["output"] == [2.0, 4.0] and first["cached"] is False
    again = alice.run_detailed(pipe, "1,2")
    assert again["output"] == [2.0, 4.0] and again["cached"] is True

    scale_v2(alice, steps_dir, scale)
    assert alice.run(scale, [1]) == [10]  # "latest" of the step moved on ...
    assert alice.run_detailed(pipe, "1,2")["output"] == [2.0, 4.0]  # ... the pinned pipeline did not
    fresh = alice.run_detailed(pipe, "3")
    assert fresh["output"] == [6.0] and fresh["cached"] is False

    # Republishing resolves the steps again: version 2 of the pipeline runs scale@2 under a new memo key.
    republished = alice.update(
        pipe, pipeline_document(name=pipe_name, steps=[parse, scale], title="t", authors=AUTHORS)
    )
    assert republished["version"] == 2
    assert [s["servable"] for s in alice.describe(pipe)["steps"]] == [f"{parse}@1", f"{scale}@2"]
    new = alice.run_detailed(pipe, "1,2")
    assert new["output"] == [10.0, 20.0] and new["cached"] is False and new["servable"] == f"{pipe}@2"
    assert alice.run_detailed(pipe, "1,2")["cached"] is True
    old = alice.run_detailed(f"{pipe}@1", "1,2")
    assert old["output"] == [2.0, 4.0] and old["cached"] is True


def test_deprecated_step_warns_and_deleted_step_is_gone(alice: DLHubClient, steps_dir: Path) -> None:
    parse = publish_step(alice, steps_dir, "parse", input_type=TEXT, output_type=NUMBERS)
    total = publish_step(alice, steps_dir, "total", input_type=NUMBERS, output_type=NUMBER)
    pipe = publish_pipeline(alice, [parse, total])
    alice.deprecate(f"{total}@1", "superseded")
    record = alice.run_detailed(pipe, "1,2")
    assert record["output"] == 3.0
    assert any(f"{total}@1 is deprecated" in w for w in record["warnings"])
    alice.delete(f"{total}@1")
    with pytest.raises(Gone) as excinfo:
        alice.run(pipe, "1,2")
    assert excinfo.value.field == "servable.steps[1].servable"
    assert f"step 1 ({total}@1)" in excinfo.value.message


def test_cli_publishes_and_runs_a_pipeline_document(
    stack: StackInfo, alice: DLHubClient, steps: list[str], tmp_path: Path
) -> None:
    name = unique("clipipe")
    document = pipeline_document(name=name, steps=steps, title="CLI pipeline", authors=AUTHORS)
    (tmp_path / "dlhub.json").write_text(json.dumps(document))
    assert f"alice/{name}@1" in dlhub(stack, tmp_path, "publish")
    assert json.loads(dlhub(stack, tmp_path, "run", f"alice/{name}", "--input", '"2,3"')) == 10.0
