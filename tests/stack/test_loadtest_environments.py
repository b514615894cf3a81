"""``python -m loadtest.environments`` with tiny settings: one repeat, half-second loads, the uv cache and
images kept (``--no-cold``). The docker backend runs when ``DLHUB_TEST_DOCKER_URL`` is set; otherwise the
benchmark must say "skipped: no engine" for it and still write every other figure.

What is checked is the structure of ``environments.json`` and the figure, and that every measured number is
positive; the numbers themselves are whatever this (shared, noisy) machine gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.environments import docker_settings

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT_S = 240
DOCKER_VARIABLES = ("DLHUB_ENVIRONMENTS__DOCKER_URL", "DLHUB_TEST_DOCKER_URL", "DOCKER_HOST")
Run = tuple[Path, dict[str, Any], str]
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("environments")
    env = dict(os.environ)
    if not env.get("DLHUB_TEST_DOCKER_URL", "").strip():
        for name in DOCKER_VARIABLES:  # no engine: the docker rows must be skipped, not crash
            env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable, "-m", "loadtest.environments", "--repeats", "1", "--duration", "0.5",
            "--rounds", "1", "--clients", "2", "--no-cold", "--backends", "venv,docker", "--out", str(out),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"loadtest.environments failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return out, json.loads((out / "environments.json").read_text()), done.stdout


def docker_ran(results: dict[str, Any]) -> bool:
    return "docker" not in results["skipped"]


def test_metadata_config_and_figure(quick_run: Run) -> None:
    out, results, stdout = quick_run
    assert len(results["git_commit"]) == 40
    assert len(results["load_average_at_start"]) == 3 and len(results["load_average_at_end"]) == 3
    config = results["config"]
    assert config["repeats"] == 1 and config["cold"] is False and config["backends"] == ["venv", "docker"]
    assert set(config["pins"]) == {"scikit-learn", "numpy", "joblib"}
    assert len(results["repeats"]) == 1 and "median" in results["notes"].lower()
    data = (out / "environments.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert "cached publish-to-ready" in stdout and "environments.json" in stdout
    if not docker_ran(results):
        assert results["skipped"]["docker"].startswith("skipped: no engine")


def test_publish_and_first_request_figures(quick_run: Run) -> None:
    _, results, _ = quick_run
    medians = results["median"]
    backends = ["venv", "docker"] if docker_ran(results) else ["venv"]
    assert medians["publish"]["shared_s"] > 0 and medians["first_request"]["shared"] > 0
    for backend in backends:
        publish = medians["publish"][backend]
        assert publish["first_build_s"] > 0 and publish["cached_s"] > 0
        assert publish["cached_resolve_s"] is not None and publish["cached_install_s"] is not None
        assert medians["first_request"][backend] > 0
        assert medians["first_request"][f"{backend}_pool_running"] > 0
    if not docker_ran(results):
        assert (
            medians["publish"]["docker"] == medians["first_request"]["docker"] == results["skipped"]["docker"]
        )


def test_warm_rows_and_ratios(quick_run: Run) -> None:
    _, results, _ = quick_run
    repeat = results["repeats"][0]
    configs = ["shared", "venv", "docker"] if docker_ran(results) else ["shared", "venv"]
    assert sorted(repeat["warm_order"]) == sorted(configs)
    for workload in ("noop", "sklearn"):
        rows = results["median"]["warm"][workload]
        for config in configs:
            row = rows[config]
            assert 0 < row["p50_ms"] <= row["p99_ms"] and row["throughput_rps"] > 0, (workload, config)
            assert repeat["warm"][workload][config]["requests"] > 0
            if config != "shared":
                assert row["p50_over_shared"] > 0 and row["throughput_over_shared"] > 0
        if not docker_ran(results):
            assert rows["docker"] == results["skipped"]["docker"]


def test_targets_are_judged(quick_run: Run) -> None:
    _, results, _ = quick_run
    by_name = {row["what"]: row for row in results["targets"]}
    assert by_name["venv: cached publish-to-ready s"]["target"] == 5.0
    assert by_name["venv: first request after ready s"]["target"] == 3.0
    assert by_name["venv: cold publish-to-ready s"]["result"] == "not measured (--no-cold)"
    for row in results["targets"]:
        assert row["result"] in ("pass", "FAIL") or row["result"].startswith(("skipped", "not measured")), row
    assert (by_name["docker: cached publish-to-ready s"]["result"] in ("pass", "FAIL")) == docker_ran(results)


def test_no_engine_is_a_skip_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DOCKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert docker_settings()[0] is None and docker_settings()[2].startswith("skipped: no engine")
    monkeypatch.setenv("DLHUB_TEST_DOCKER_URL", f"unix://{tmp_path}/none.sock")
    url, _, reason = docker_settings()
    assert url is None and reason.startswith("skipped: no engine")
