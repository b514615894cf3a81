"""Schemathesis over the registry's own OpenAPI document, every check, with a token: no server error, and
every answer (status, content type, headers, body) is one the document states.

Runs the schemathesis CLI against a stack of the test's own (a fuzzer deletes and deprecates what it finds):
every phase (examples, coverage, fuzzing, stateful) and every operation, a bounded number of cases each and a
fixed seed, so a failure reproduces with the command in the failure message. Path parameters point at a
servable published here, so the run and describe operations reach the servable itself instead of 404.

Nothing is excluded: every operation runs, under every check (the JUnit report is checked for each). The
deletes (``deleteServable``, ``deleteVersion``) get a servable of their own, so they cannot remove the one the
other operations use. ``GET /blobs/{blob_id}/content`` answers only 403 here: it needs a signature the
registry itself issues (a file input's URL), which a schema-driven fuzzer cannot forge, as intended.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dlhub.client import DLHubClient
from tests.stack.test_e2e import publish_function
from tests.support.stack import StackInfo, running_stack

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
MAX_EXAMPLES = 100
SEED = 20261206
TIME_BUDGET_S = 360


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(tmp_path_factory.mktemp("fuzz"), users=("alice", "bob"), check_exit=False) as info:
        yield info


# positive_data_acceptance: a request the schema allows must not be refused. Two kinds of refusal are the
# resource's state, not the request's shape, and are not failures here:
# - 410 everywhere: the version was deleted (a tombstone), like the 404 and 409 schemathesis already allows.
# - 400 on the operations below, each for a rule the OpenAPI document cannot state because it depends on the
#   stored servable: the method must be one the servable declares and the inputs must match its declared
#   argument types (runs, pipelines); format=image needs a version built with a docker environment (export);
#   a publication document is checked against the full publication schema, its argument types, DOIs and
#   test vectors (publish, update); a dataset job needs the path to name a dataset, the servable to declare
#   the method, the file to hold the columns (apply). Every other check, and every other status, still
#   applies to them.
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "410", "429"]
STATEFUL_400 = [
    "runServable",
    "runServableVersion",
    "runPipeline",
    "exportVersion",
    "publish",
    "updateServable",
    "applyToDataset",
    "applyToDatasetVersion",
]


# 416 on the downloads: a Range the schema allows starts past the end of this particular file.
DOWNLOADS = ["downloadFileLatest", "downloadFileVersion", "downloadPackageLatest", "downloadPackageVersion"]


def fuzz_config(path: Path, *, owner: str, name: str, victim: str, task_id: str) -> Path:
    expected = json.dumps(POSITIVE_STATUSES)
    with_400 = json.dumps([*POSITIVE_STATUSES, "400"])
    path.write_text(
        f"""
[checks.positive_data_acceptance]
expected-statuses = {expected}

[parameters]
"path.owner" = "{owner}"
"path.name" = "{name}"
"path.version" = 1
"path.task_id" = "{task_id}"

[[operations]]
include-operation-id = ["deleteServable", "deleteVersion"]
parameters = {{ "path.name" = "{victim}" }}

[[operations]]
include-operation-id = {json.dumps(STATEFUL_400)}
checks.positive_data_acceptance.expected-statuses = {with_400}

[[operations]]
include-operation-id = {json.dumps(DOWNLOADS)}
checks.positive_data_acceptance.expected-statuses = {json.dumps([*POSITIVE_STATUSES, "416"])}
"""
    )
    return path


@pytest.mark.timeout(TIME_BUDGET_S + 120)
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    fuzz_stack: StackInfo, pkg_dir: Path, tmp_path: Path
) -> None:
    with DLHubClient(fuzz_stack.url, fuzz_stack.tokens["alice"]) as alice:
        target = publish_function(alice, pkg_dir, "noop").split("/")[1]
        victim = publish_function(alice, pkg_dir, "square").split("/")[1]
        task_id = alice.run_async(f"alice/{target}", None).task_id
    config = fuzz_config(tmp_path / "schemathesis.toml", owner="alice", name=target, victim=victim,
                         task_id=task_id)  # fmt: skip
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [
        st, "--config-file", str(config), "run", fuzz_stack.api + "/openapi.json",
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        # One worker: with two, hypothesis parses source in threads and CPython 3.11.7's AST constructor
        # then fails with "recursion depth mismatch" (a CPython bug); one is as fast on two cores.
        "--workers", "1", "--request-timeout", "30",
        "-H", f"Authorization: Bearer {fuzz_stack.tokens['alice']}",
        "--report", "junit", "--report-dir", str(tmp_path / "report"), "--no-color",
    ]  # fmt: skip
    # In tmp_path: schemathesis keeps its crash cache (.schemathesis/) in the working directory.
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIME_BUDGET_S + 90, cwd=tmp_path)
    output = done.stdout + done.stderr
    # every operation was tested, but the one that serves the document itself (schemathesis reads it to
    # start; test_openapi_contract.py checks that document)
    paths = httpx.get(fuzz_stack.api + "/openapi.json").json()["paths"]
    documented = {f"{m.upper()} {p}" for p, item in paths.items() for m in item if m in HTTP_METHODS}
    junit = next((tmp_path / "report").glob("junit-*.xml")).read_text()
    tested = set(re.findall(r'testcase name="([A-Z]+ /[^"]*)"', junit))
    assert tested == documented - {"GET /openapi.json"}, (documented ^ tested, output[-5000:])
    assert done.returncode == 0, output[-12000:]
