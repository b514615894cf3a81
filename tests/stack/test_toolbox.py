"""The toolbox locally: ``dlhub init --function`` types from hints, ``dlhub run --local`` /
``DLHubClient.run_local`` with the worker's executor, and ``dlhub test``, each compared with the same servable
published on the session's embedded stack (issue 15, item 7)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import sklearn_document
from dlhub.common.errors import ValidationFailed
from tests.support.stack import StackInfo, unique

TOOLFNS = """
from typing import Any

import numpy as np


def scale(x: list[float], factor: float = 2.0) -> dict[str, Any]:
    print("scale: a print goes to stderr, never into the output")
    return {"scaled": [v * factor for v in x], "total": sum(x) * factor}


def norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a))


def shout(text: str) -> str:
    return text.upper()


def keys(record: dict) -> list:
    return sorted(record)


def halve(x: float) -> float:
    return 1.0 / (x - x) if x == 13.0 else x / 2
"""
CLI_TIMEOUT_S = 120


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    done.stderr = " ".join(done.stderr.split())  # rich wraps messages at the terminal width
    return done


def _init(folder: Path, function: str, *extra: str) -> dict[str, Any]:
    """``dlhub init --function toolfns:FUNCTION`` in ``folder``; returns the document it wrote."""
    output = f"{function}.json"
    name = unique(function)
    done = _cli(
        "init", "--name", name, "--function", f"toolfns:{function}", "--output", output, *extra, cwd=folder
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document: dict[str, Any] = json.loads((folder / output).read_text())
    return document


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toolbox")
    (path / "toolfns.py").write_text(TOOLFNS)
    return path


@pytest.fixture(scope="module")
def published(alice: DLHubClient, folder: Path) -> dict[str, str]:
    """Each function of toolfns.py described by ``dlhub init`` and published: function -> owner/name."""
    servables = {}
    for function in ("scale", "norm", "shout", "keys", "halve"):
        document = _init(folder, function)
        reply = alice.publish(document, base_dir=folder, wait=True)
        assert reply["status"] == "ready", reply
        servables[function] = f"alice/{document['dlhub']['name']}"
    return servables


def test_init_function_writes_the_types_of_the_hints(folder: Path) -> None:
    def run_method(function: str, *extra: str) -> dict[str, Any]:
        method: dict[str, Any] = _init(folder, function, *extra)["servable"]["methods"]["run"]
        return method

    scale = run_method("scale")
    assert scale["input"] == {"type": "list", "item_type": {"type": "float"}, "description": "x"}
    assert scale["output"] == {"type": "dict", "description": "Output of scale"}
    assert scale["parameters"] == {"factor": 2.0}
    assert scale["method_details"] == {
        "module": "toolfns",
        "method_name": "scale",
        "autobatch": False,
        "unpack": False,
    }
    assert run_method("norm")["input"] == {"type": "ndarray", "description": "a"}
    assert run_method("norm")["output"] == {"type": "float", "description": "Output of norm"}
    assert run_method("shout")["input"] == {"type": "string", "description": "text"}
    assert run_method("keys")["input"] == {"type": "dict", "description": "record"}
    assert run_method("keys")["output"] == {"type": "list", "description": "Output of keys"}
    batched = run_method("shout", "--autobatch")
    assert batched["input"]["type"] == "list" and batched["input"]["item_type"]["type"] == "string"
    assert batched["output"]["item_type"]["type"] == "string"


def test_init_function_that_cannot_be_imported_warns_and_writes_python_object(folder: Path) -> None:
    (folder / "broken.py").write_text(
        "import no_such_module_for_dlhub_tests\n\ndef f(x: int) -> int:\n    return x\n"
    )
    done = _cli("init", "--name", "broken", "--function", "broken:f", "--output", "broken.json", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "cannot import broken" in done.stderr and "python object" in done.stderr
    method = json.loads((folder / "broken.json").read_text())["servable"]["methods"]["run"]
    assert method["input"]["type"] == "python object"
    done = _cli("init", "--name", "typo", "--function", "toolfns:no_such_function", cwd=folder)
    assert done.returncode != 0 and "no attribute" in done.stderr


@pytest.mark.parametrize(
    ("function", "inputs", "parameters"),
    [
        ("scale", [1, 2.5, -3], {}),
        ("scale", [0.1, 0.2], {"factor": 3}),
        ("shout", "local equals served", {}),
        ("keys", {"b": 1, "a": [1, 2]}, {}),
        ("norm", [[3.0, 4.0], [0.0, 0.0]], {}),
    ],
)
def test_a_local_run_equals_the_served_run(
    alice: DLHubClient,
    folder: Path,
    published: dict[str, str],
    function: str,
    inputs: Any,
    parameters: dict[str, Any],
) -> None:
    served = alice.run(published[function], inputs, parameters=parameters)
    document = folder / f"{function}.json"
    assert alice.run_local(document, inputs, parameters=parameters) == served
    params = [f"--param={key}={json.dumps(value)}" for key, value in parameters.items()]
    done = _cli("run", "--local", document.name, "--input", json.dumps(inputs), *params, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == served
    if function == "scale":  # the model's print reached stderr, not the output
        assert "a print goes to stderr" in done.stderr


def test_a_local_run_of_numpy_inputs_equals_the_served_run(
    alice: DLHubClient, folder: Path, published: dict[str, str]
) -> None:
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    served = alice.run(published["norm"], array)  # msgpack with the array as a raw buffer
    assert alice.run_local(folder / "norm.json", array) == served == pytest.approx(np.linalg.norm(array))


def test_a_scikit_learn_model_runs_locally_as_served(alice: DLHubClient, tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [4.0, 1.0]])
    model = LinearRegression().fit(features, features @ np.array([2.0, -1.0]) + 0.5)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    document = sklearn_document(
        name=unique("toolbox_lr"),
        model_path="model.pkl",
        n_input_columns=2,
        title="LR",
        authors=["Doe, Jane"],
    )
    (tmp_path / "dlhub.json").write_text(json.dumps(document))
    assert alice.publish(document, base_dir=tmp_path, wait=True)["status"] == "ready"
    rows = [[1.0, 2.0], [3.5, -1.0]]
    served = alice.run(f"alice/{document['dlhub']['name']}", rows)
    local = alice.run_local(tmp_path / "dlhub.json", rows)
    assert local == served and local == pytest.approx([0.5, 8.5])
    done = _cli("run", "--local", "--input", json.dumps(rows), cwd=tmp_path)  # default: ./dlhub.json
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == served


def test_a_wrong_input_fails_validation_locally_as_served(
    alice: DLHubClient, folder: Path, published: dict[str, str]
) -> None:
    for function, wrong in (("scale", [1.0, "two"]), ("shout", 42), ("keys", [1, 2])):
        with pytest.raises(ValidationFailed) as served:
            alice.run(published[function], wrong)
        with pytest.raises(ValidationFailed) as local:
            alice.run_local(folder / f"{function}.json", wrong)
        assert (local.value.message, local.value.field) == (served.value.message, served.value.field)
        done = _cli("run", "--local", f"{function}.json", "--input", json.dumps(wrong), cwd=folder)
        assert done.returncode == 1
        assert "validation_error" in done.stderr and "Traceback" not in done.stderr
    assert served.value.field == "inputs"  # the last: a list for a dict


def test_a_failing_model_fails_locally_as_served(
    alice: DLHubClient, folder: Path, published: dict[str, str]
) -> None:
    assert alice.run_local(folder / "halve.json", 3) == alice.run(published["halve"], 3) == 1.5
    with pytest.raises(TaskFailed) as served:
        alice.run(published["halve"], 13.0)
    with pytest.raises(TaskFailed) as local:
        alice.run_local(folder / "halve.json", 13.0)
    for failure in (served.value, local.value):
        assert (failure.error_type, failure.exception_type) == ("servable_error", "ZeroDivisionError")
        assert "toolfns.py" in failure.traceback and "dlhub/worker" not in failure.traceback
    done = _cli("run", "--local", "halve.json", "--input", "13", cwd=folder)
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr


def _with_vectors(folder: Path, name: str, vectors: list[dict[str, Any]] | None) -> Path:
    document = json.loads((folder / "scale.json").read_text())
    document["dlhub"]["name"] = unique(name)
    if vectors is not None:
        document["dlhub"]["test_vectors"] = vectors
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def test_dlhub_test_passes_and_fails_as_the_registry_judges(
    alice: DLHubClient, folder: Path, published: dict[str, str]
) -> None:
    good = [
        {"inputs": [1, 2], "expected": {"scaled": [2, 4], "total": 6}},
        {
            "inputs": [0.1],
            "parameters": {"factor": 3},
            "expected": {"scaled": [0.3], "total": 0.3},
            "tolerance": {"rel": 1e-9},
        },
    ]
    path = _with_vectors(folder, "vectors_good", good)
    done = _cli("test", path.name, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 2 test vector(s) passed" in done.stdout

    bad = [*good, {"inputs": [1, 2, 3], "expected": {"scaled": [2, 4, 7], "total": 12}}]
    path = _with_vectors(folder, "vectors_bad", bad)
    done = _cli("test", path.name, "--json", cwd=folder)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is False and [v["passed"] for v in report["vectors"]] == [True, True, False]
    local_message = report["vectors"][2]["message"]
    assert local_message.startswith('output["scaled"][2]: expected 7, got 6.0')
    # The registry fails the same document's publication with the same message.
    document = json.loads(path.read_text())
    with pytest.raises(TaskFailed):
        alice.publish(document, base_dir=folder, wait=True)
    reason = alice.describe(f"alice/{document['dlhub']['name']}")["status_reason"]
    assert reason.startswith(f"test vector 2 failed: {local_message}"), reason
    assert alice.verify_local(path)["vectors"][2]["message"] == local_message

    invalid = _with_vectors(folder, "vectors_invalid", [{"inputs": ["x"], "expected": {}}])
    report = alice.verify_local(invalid)
    assert report["passed"] is False
    assert report["vectors"][0]["message"] == "invalid inputs: inputs[0]: expected float, got string"

    none = _with_vectors(folder, "vectors_none", None)
    done = _cli("test", none.name, cwd=folder)
    assert done.returncode == 0 and "no test vectors" in done.stdout, done.stdout + done.stderr


def test_local_run_refusals(folder: Path, published: dict[str, str]) -> None:
    done = _cli("run", "--local", "scale.json", "--input", "[1]", "--async", cwd=folder)
    assert done.returncode == 2 and "--async needs a server" in done.stderr
    done = _cli("run", "--local", "scale.json", "--file", "toolfns.py", cwd=folder)
    assert done.returncode == 2 and "http(s) URLs" in done.stderr
    missing = json.loads((folder / "scale.json").read_text())
    missing["dlhub"]["files"] = {"other": ["toolfns.py", "weights.bin"]}
    (folder / "missing.json").write_text(json.dumps(missing))
    done = _cli("run", "--local", "missing.json", "--input", "[1]", cwd=folder)
    assert done.returncode == 1 and "weights.bin" in done.stderr and "validation_error" in done.stderr
    done = _cli("run", "--input", "[1]", cwd=folder)
    assert done.returncode == 2 and "--local" in done.stderr


def test_cli_local_needs_no_server(stack: StackInfo, folder: Path, published: dict[str, str]) -> None:
    env = {k: v for k, v in stack.env.items() if not k.startswith("DLHUB_URL")}
    env.update(DLHUB_URL="http://127.0.0.1:9", DLHUB_HOME=str(folder / "home"))  # nothing listens on port 9
    done = _cli("run", "--local", "shout.json", "--input", '"offline"', cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "OFFLINE"
