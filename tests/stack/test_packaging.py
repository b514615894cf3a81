"""Packaging: every folder its own distribution with a namespaced import package; the SDK installs alone.

The wheels are built from this checkout by ``uv build``, as a release would be; the SDK-only environment is
a fresh venv holding nothing but ``dlhub-common`` and ``dlhub-client`` (and what they declare), which then
runs a servable on the real embedded stack from Python and from the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.stack import StackInfo, unique

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {
    "common": ROOT / "libs" / "common",
    "client": ROOT / "libs" / "client",
    "registry": ROOT / "services" / "registry",
    "broker": ROOT / "services" / "broker",
    "builder": ROOT / "services" / "builder",
    "search": ROOT / "services" / "search",
    "worker": ROOT / "services" / "worker",
}
# What only the server needs: none of it may reach an SDK-only environment.
SERVER_ONLY = {
    "aiohttp",
    "aiosqlite",
    "pymongo",
    "elasticsearch",
    "pyzmq",
    "uvloop",
    "scikit-learn",
    "jsonschema",
}
SDK_TIMEOUT_S = 300


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: the SDK-only venv must see only what it installed, not a checkout's sources.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=SDK_TIMEOUT_S, check=False, env=env, **kwargs
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from uv import find_uv_bin  # the uv the builder uses (dlhub-common's environments extra)

    out = tmp_path_factory.mktemp("wheels")
    for project in (*MEMBERS.values(), ROOT):
        command = [find_uv_bin(), "build", "--wheel", "--quiet", "--out-dir", str(out), str(project)]
        done = _run(command)
        assert done.returncode == 0, done.stderr
    built = {path.name.split("-")[0]: path for path in out.glob("*.whl")}
    assert set(built) == {"dlhub", *(f"dlhub_{name}" for name in MEMBERS)}, sorted(built)
    return built


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def test_each_member_installs_only_its_namespaced_package(wheels: dict[str, Path]) -> None:
    for name in MEMBERS:
        wheel = wheels[f"dlhub_{name}"]
        with zipfile.ZipFile(wheel) as archive:
            files = [n for n in archive.namelist() if ".dist-info/" not in n]
        assert files, f"{wheel.name} ships no code"
        # dlhub/ is a namespace package shared by the members: nobody ships dlhub/__init__.py.
        assert "dlhub/__init__.py" not in files
        outside = [n for n in files if not n.startswith(f"dlhub/{name}/")]
        assert not outside, f"{wheel.name} installs files outside dlhub/{name}/: {outside[:5]}"
    # The full server install is a meta distribution: its members carry the code.
    assert {t for t in _top_level(wheels["dlhub"]) if not t.endswith(".dist-info")} == set()


def test_no_generic_top_level_names_in_the_environment() -> None:
    from importlib import metadata

    for dist in metadata.distributions():
        if not dist.metadata["Name"].lower().startswith("dlhub"):
            continue
        for file in dist.files or ():
            top = file.parts[0]
            assert top not in {"libs", "services", "tests"}, f"{dist.metadata['Name']} installs {file}"


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Path:
    venv = tmp_path_factory.mktemp("sdk-only") / "venv"
    done = _run([sys.executable, "-m", "venv", str(venv)])
    assert done.returncode == 0, done.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = _run([*pip, str(wheels["dlhub_common"]), str(wheels["dlhub_client"])])
    assert done.returncode == 0, done.stderr
    return venv


def test_sdk_installs_without_the_server(sdk_venv: Path) -> None:
    listed = _run([str(sdk_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"])
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert {"dlhub-client", "dlhub-common", "httpx", "msgspec", "click", "rich"} <= installed
    assert not installed & SERVER_ONLY, sorted(installed & SERVER_ONLY)
    assert not {"dlhub-registry", "dlhub-worker", "numpy", "pydantic"} & installed


def test_sdk_only_install_runs_a_model_on_a_server(
    sdk_venv: Path, stack: StackInfo, alice: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("sdk_only")
    doc = python_function_document(
        name=name, module="e2efns", function="mean", files=["e2efns.py"], title="Mean", authors=["Doe, Jane"]
    )
    assert alice.publish(doc, base_dir=pkg_dir)["status"] == "ready"
    script = (
        "import sys\nfrom dlhub.client import DLHubClient\n"
        "client = DLHubClient(sys.argv[1], sys.argv[2])\n"
        "print(client.run(sys.argv[3], [1, 2, 3]))\n"
    )
    python = str(sdk_venv / "bin" / "python")
    done = _run([python, "-c", script, stack.url, stack.tokens["alice"], f"alice/{name}"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"
    cli = [str(sdk_venv / "bin" / "dlhub"), "--url", stack.url, "--token", stack.tokens["alice"]]
    done = _run([*cli, "run", f"alice/{name}", "--input", "[2, 4]"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3.0"


def test_server_commands_explain_the_missing_server(sdk_venv: Path, tmp_path: Path) -> None:
    dlhub = str(sdk_venv / "bin" / "dlhub")
    for command in (
        ["up", "--data-dir", str(tmp_path)],
        ["token", "create", "bob", "--data-dir", str(tmp_path)],
        ["keys", "create", "--dir", str(tmp_path / "keys")],
    ):
        done = _run([dlhub, *command])
        assert done.returncode != 0
        assert "server_not_installed" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_sdk_only_toolbox_describes_locally_and_explains_the_missing_executor(
    sdk_venv: Path, tmp_path: Path
) -> None:
    """``dlhub init --function`` needs only the SDK; running locally needs the worker's executor."""
    (tmp_path / "hinted.py").write_text(
        "def add(pair: tuple[int, int]) -> int:\n    return pair[0] + pair[1]\n"
    )
    dlhub = str(sdk_venv / "bin" / "dlhub")
    done = _run([dlhub, "init", "--name", "add", "--function", "hinted:add"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    method = json.loads((tmp_path / "dlhub.json").read_text())["servable"]["methods"]["run"]
    assert method["input"]["element_types"] == [{"type": "integer"}, {"type": "integer"}]
    for command in (["run", "--local", "--input", "[1, 2]"], ["test"]):
        done = _run([dlhub, *command], cwd=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        message = " ".join(done.stderr.split())
        assert "server_not_installed" in message and "pip install dlhub-worker" in message, message
        assert "Traceback" not in message
    script = (
        "from dlhub.client import DLHubClient\nfrom dlhub.common.errors import DLHubError\n"
        "try:\n    DLHubClient('http://127.0.0.1:9').run_local('dlhub.json', [1, 2])\n"
        "except DLHubError as exc:\n    print(exc.code)\n"
    )
    done = _run([str(sdk_venv / "bin" / "python"), "-c", script], cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "server_not_installed", done.stdout + done.stderr
