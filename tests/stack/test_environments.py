"""Per-servable environments (issue 11): the plan rule, locks, venv builds, and servables pinning different
versions of one package running side by side in the real embedded stack (`dlhub up`).

Downloads are small pure-Python wheels from the configured index (iniconfig, six) plus msgspec (the runtime),
cached by uv after the first run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.client import DLHubClient, TaskFailed
from dlhub.client.metadata import python_function_document
from dlhub.common.config import EnvironmentsConfig
from dlhub.common.environments import (
    ENVIRONMENT_FILENAME,
    BuildLog,
    Deadline,
    EnvironmentRecord,
    VenvBackend,
    environment_id,
    lock,
    plan,
    read_environment,
)
from dlhub.common.errors import BuildFailed
from dlhub.common.servable_store import build_record_path, version_dir
from tests.support.polling import wait_until
from tests.support.sdk_documents import sdk_sklearn_document
from tests.support.stack import start_stack, stop_stack, unique

ENV_FUNCTIONS = """
import importlib.metadata
import sys


def package_version(name):
    return importlib.metadata.version(name)


def six_version(_):
    import six
    return six.__version__


def prefix(_):
    return sys.prefix
"""


def declared(pins: dict[str, str], **dlhub: Any) -> dict[str, Any]:
    return {"dlhub": {"dependencies": {"python": pins}, **dlhub}}


# -- the plan rule -----------------------------------------------------------------------------------------


def test_no_dependencies_run_in_the_shared_environment() -> None:
    config = EnvironmentsConfig()
    documents: list[dict[str, Any]] = [{}, {"dlhub": {}}, declared({})]
    for metadata in documents:
        decided = plan(metadata, None, config)
        assert decided.shared is not None and decided.shared.reason == "no dependencies declared"


def test_dependencies_installed_at_that_version_are_shared_and_others_are_not() -> None:
    import importlib.metadata

    installed = importlib.metadata.version("msgspec")
    config = EnvironmentsConfig()
    same = plan(declared({"msgspec": installed}), None, config)
    assert same.shared is not None and "installed at that version" in same.shared.reason
    other = plan(declared({"six": "1.16.0"}), None, config)
    assert other.shared is None and other.backend == "venv"
    # The runtime is added, unpinned beyond a floor, because the publisher did not name it.
    assert other.requirements == ["six==1.16.0", "msgspec>=0.18,<1"]
    # A publisher's msgspec pin wins: nothing is added next to it.
    assert plan(declared({"msgspec": "0.18.6"}), None, config).requirements == ["msgspec==0.18.6"]
    in_range = plan(declared({"msgspec": ">=0.18"}), None, config)
    assert in_range.shared is not None
    assert plan(declared({"msgspec": "<0.18"}), None, config).shared is None
    always = plan(declared({"msgspec": installed}), None, EnvironmentsConfig(mode="always"))
    assert always.shared is None
    shared = plan(declared({"six": "1.16.0"}), None, EnvironmentsConfig(mode="shared"))
    assert shared.shared is not None and shared.shared.requirements == ["six==1.16.0"]


def test_tensorflow_pins_are_met_by_the_cpu_build_of_the_same_version() -> None:
    import importlib.metadata

    try:
        cpu = importlib.metadata.version("tensorflow-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorflow-cpu is not installed (the test extra installs it on x86-64 Linux)")
    config = EnvironmentsConfig()
    same = plan(declared({"tensorflow": cpu}), None, config)
    assert same.shared is not None and "installed at that version" in same.shared.reason
    assert plan(declared({"tensorflow": "1.15.0"}), None, config).shared is None


def test_requirement_files_and_their_limits(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# pinned\niniconfig==2.0.0  # note\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["six>=1.16"]\n')
    decided = plan({}, tmp_path, EnvironmentsConfig())
    assert decided.requirements == ["iniconfig==2.0.0", "six>=1.16", "msgspec>=0.18,<1"]
    for line in ("-e .", "--index-url http://evil/", "pkg @ https://x/y.whl", "./local"):
        (tmp_path / "requirements.txt").write_text(line + "\n")
        with pytest.raises(BuildFailed, match="not supported"):
            plan({}, tmp_path, EnvironmentsConfig())


def test_unavailable_python_version_fails_with_that_message(tmp_path: Path) -> None:
    config = EnvironmentsConfig(interpreters={"3.11": sys.executable})
    decided = plan(
        declared({"six": "1.16.0"}, dependencies={"python": {}, "python_version": "3.9"}), None, config
    )
    record = EnvironmentRecord(
        kind="isolated", backend="venv", id="x", python=decided.python, lock="six==1.16.0"
    )
    with pytest.raises(
        BuildFailed, match=r"Python 3\.9 is not available in this deployment \(available: 3\.11\)"
    ):
        VenvBackend(config, tmp_path).ensure(record, BuildLog("t"), Deadline(60))


def test_lock_is_exact_hashed_deterministic_and_content_addressed(tmp_path: Path) -> None:
    config = EnvironmentsConfig()
    first = lock(["iniconfig==2.0.0"], "3.11", config, BuildLog("t"), Deadline(120))
    again = lock(["iniconfig==2.0.0"], "3.11", config, BuildLog("t"), Deadline(120))
    assert first == again
    assert "iniconfig==2.0.0" in first and "--hash=sha256:" in first
    assert environment_id("venv", "3.11", first) == environment_id("venv", "3.11", again)
    assert environment_id("venv", "3.11", first) != environment_id("docker", "3.11", first)


def test_venv_builds_once_and_concurrent_builds_coalesce(tmp_path: Path) -> None:
    import concurrent.futures

    config = EnvironmentsConfig()
    text = lock(["iniconfig==1.1.1"], "3.11", config, BuildLog("t"), Deadline(120))
    record = EnvironmentRecord(
        kind="isolated", backend="venv", id=environment_id("venv", "3.11", text), python="3.11", lock=text
    )
    backend = VenvBackend(config, tmp_path)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: backend.ensure(record, BuildLog("t"), Deadline(300)), range(3)))
    assert len(set(paths)) == 1 and paths[0].exists()
    assert [p.name for p in (tmp_path / "venv").iterdir()] == [record.id]
    assert not list((tmp_path / ".tmp").iterdir())
    quota = EnvironmentsConfig(max_env_bytes=1000)
    other = EnvironmentRecord(kind="isolated", backend="venv", id="quota", python="3.11", lock=text)
    with pytest.raises(BuildFailed, match="exceeds the quota of 1000 bytes"):
        VenvBackend(quota, tmp_path).ensure(other, BuildLog("t"), Deadline(300))


def test_pip_installs_the_same_lock_when_uv_is_not_the_installer(tmp_path: Path) -> None:
    """``installer = "pip"``: the fallback installs the lock uv made, hash-checked, into a stdlib venv."""
    config = EnvironmentsConfig(installer="pip")
    text = lock(["iniconfig==1.1.1"], "3.11", config, BuildLog("t"), Deadline(120))
    record = EnvironmentRecord(
        kind="isolated", backend="venv", id=environment_id("venv", "3.11", text), python="3.11", lock=text
    )
    build_log = BuildLog("t")
    python = VenvBackend(config, tmp_path).ensure(record, build_log, Deadline(300))
    assert any("-m pip install" in line and "--require-hashes" in line for line in build_log.record.log)
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('iniconfig'))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "1.1.1"


# -- the embedded stack ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DLHubClient, Path]]:
    base = tmp_path_factory.mktemp("envstack")
    process, info = start_stack(base, workers=1, extra_env={"DLHUB_ENVIRONMENTS__MODE": "auto"})
    try:
        yield DLHubClient(info["url"], info["alice"]), info["data_dir"]
    finally:
        code = stop_stack(process)
        assert code == 0, (base / "up.log").read_text()[-4000:]


@pytest.fixture(scope="module")
def env_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("envpkg")
    (path / "envfns.py").write_text(ENV_FUNCTIONS)
    return path


def function_doc(function: str, pins: dict[str, str], name: str | None = None) -> dict[str, Any]:
    return python_function_document(
        name=name or unique(function),
        module="envfns",
        function=function,
        files=["envfns.py"],
        title=f"{function} in its own environment",
        authors=["Doe, Jane"],
        dependencies=pins,
    )


def test_two_versions_of_one_package_run_side_by_side(
    env_stack: tuple[DLHubClient, Path], env_pkg: Path
) -> None:
    client, data_dir = env_stack
    started = time.monotonic()
    old = client.publish(function_doc("package_version", {"iniconfig": "1.1.1"}), base_dir=env_pkg)
    new = client.publish(function_doc("package_version", {"iniconfig": "2.0.0"}), base_dir=env_pkg)
    print(f"two environments built in {time.monotonic() - started:.1f} s")
    assert old["status"] == new["status"] == "ready"
    for _ in range(3):  # interleaved: both pools stay warm
        assert client.run(old["shorthand_name"], "iniconfig") == "1.1.1"
        assert client.run(new["shorthand_name"], "iniconfig") == "2.0.0"
    # The worker's own environment has yet another version.
    import importlib.metadata

    assert importlib.metadata.version("iniconfig") not in ("1.1.1", "2.0.0")
    owner, name = old["shorthand_name"].split("/")
    record = read_environment(version_dir(data_dir / "servables", owner, name, 1))
    assert record is not None and record.kind == "isolated" and "iniconfig==1.1.1" in record.lock
    assert (data_dir / "envs" / "venv" / record.id / "bin" / "python").exists()
    build = json.loads(build_record_path(data_dir / "servables", owner, name, 1).read_text())
    assert [s["state"] for s in build["states"]] == ["queued", "resolving", "installing", "ready"]
    assert build["environment"] == record.id and build["log"]


def test_identical_locks_share_one_environment(env_stack: tuple[DLHubClient, Path], env_pkg: Path) -> None:
    client, data_dir = env_stack
    first = client.publish(function_doc("prefix", {"iniconfig": "1.1.1"}), base_dir=env_pkg)
    second = client.publish(function_doc("prefix", {"iniconfig": "1.1.1"}), base_dir=env_pkg)
    one, two = client.run(first["shorthand_name"], 0), client.run(second["shorthand_name"], 0)
    assert one == two and one.startswith(str(data_dir / "envs" / "venv"))
    assert one != sys.prefix


def test_sdk_document_with_another_version_runs_with_that_version(
    env_stack: tuple[DLHubClient, Path], env_pkg: Path
) -> None:
    """The DLHub SDK 2.1.0 layout (``dlhub.dependencies.python``: name -> version) of a python static
    method pinning six 1.16.0, while the worker has another six."""
    import importlib.metadata

    assert importlib.metadata.version("six") != "1.16.0"
    client, _ = env_stack
    document = sdk_sklearn_document(unique("sdk_six"))
    document["dlhub"]["files"] = {"other": ["envfns.py"]}
    document["dlhub"]["dependencies"] = {"python": {"six": "1.16.0"}}
    document["servable"] = function_doc("six_version", {})["servable"]
    reply = client.publish(document, base_dir=env_pkg)
    assert reply["status"] == "ready"
    assert client.run(reply["shorthand_name"], None) == "1.16.0"


def test_unsatisfiable_dependency_fails_the_build_with_the_resolvers_message(
    env_stack: tuple[DLHubClient, Path], env_pkg: Path
) -> None:
    client, data_dir = env_stack
    name = unique("unsat")
    with pytest.raises(TaskFailed) as failure:
        client.publish(function_doc("package_version", {"six": "999.0.0"}, name=name), base_dir=env_pkg)
    assert "no version of six==999.0.0" in str(failure.value)
    versions = client.versions(f"alice/{name}")
    assert versions[0]["status"] == "failed"
    assert "no version of six==999.0.0" in versions[0]["status_reason"]
    record = json.loads(build_record_path(data_dir / "servables", "alice", name, 1).read_text())
    assert [s["state"] for s in record["states"]] == ["queued", "resolving", "failed"]
    assert "no version of six==999.0.0" in record["error"]
    assert not version_dir(data_dir / "servables", "alice", name, 1).exists()


def test_a_missing_environment_is_rebuilt_from_its_lock(tmp_path: Path, env_pkg: Path) -> None:
    """A worker that lacks a version's environment (another machine built it) rebuilds it from the lock."""
    base = tmp_path / "stack"
    base.mkdir()
    process, info = start_stack(base, workers=1, extra_env={"DLHUB_ENVIRONMENTS__MODE": "auto"})
    try:
        client = DLHubClient(info["url"], info["alice"])
        reply = client.publish(function_doc("six_version", {"six": "1.16.0"}), base_dir=env_pkg)
        owner, name = reply["shorthand_name"].split("/")
        directory = version_dir(info["data_dir"] / "servables", owner, name, 1)
        record = read_environment(directory)
        assert record is not None
        env = info["data_dir"] / "envs" / "venv" / record.id
        import shutil

        shutil.rmtree(env)
        assert client.run(reply["shorthand_name"], None) == "1.16.0"
        wait_until(lambda: (env / "bin" / "python").exists(), timeout_s=10, message="the rebuilt environment")
        assert (directory / ENVIRONMENT_FILENAME).is_file()
    finally:
        assert stop_stack(process) == 0
