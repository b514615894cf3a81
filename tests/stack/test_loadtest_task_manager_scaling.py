"""``python -m loadtest.task_manager_scaling`` with tiny settings: one repeat, 1 and 2 Task Managers, one
half-second slice each. What is checked is the structure of ``task_manager_scaling.json`` and the figure,
that every Task Manager fetched the bundle once into its own data directory, and that every measured number
is positive; the numbers themselves are whatever this (shared, noisy) machine gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.task_manager_scaling import parse_args

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT_S = 240
Run = tuple[Path, dict[str, Any], str]
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("task_manager_scaling")
    done = subprocess.run(
        [
            sys.executable, "-m", "loadtest.task_manager_scaling", "--repeats", "1", "--managers", "2,1",
            "--clients", "4", "--warmup-s", "0.3", "--duration-s", "0.5", "--rounds", "1",
            "--iterations", "50000", "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"loadtest.task_manager_scaling failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return out, json.loads((out / "task_manager_scaling.json").read_text()), done.stdout


def test_arguments_are_parsed_sorted_and_must_include_one() -> None:
    args = parse_args(["--managers", "4,1,2,2", "--rounds", "3"])
    assert args.managers == [1, 2, 4] and args.rounds == 3 and args.repeats == 3 and args.clients == 8
    with pytest.raises(SystemExit):
        parse_args(["--managers", "2,4"])


def test_metadata_rows_and_figure(quick_run: Run) -> None:
    out, results, stdout = quick_run
    machine = results["machine"]
    assert len(machine["git_commit"]) == 40 and machine["usable_cpus"] >= 1
    assert len(machine["load_average_at_start"]) == 3 and len(results["load_average_at_end"]) == 3
    assert results["config"]["managers"] == [1, 2]
    assert results["config"]["task_manager_env"]["DLHUB_WORKER__BATCH_CAPACITY"] == "0"
    [repeat] = results["repeats"]
    assert repeat["order"] == [1, 2]
    for n in ("1", "2"):
        row = repeat["rows"][n]
        assert row["managers"] == int(n) and row["errors"] == 0
        assert row["requests_per_s"] > 0 and 0 < row["round_trip_p50_ms"] <= row["round_trip_p99_ms"]
        assert row["ideal"]["processes"] == int(n) and row["ideal"]["requests_per_s"] > 0
        assert row["over_ideal"] > 0 and row["first_call_fresh_ms"] > 0
        # every Task Manager started with an empty data directory: at most one fetch each, at least one
        assert 1 <= len(row["bundle_fetch_ms"]) <= int(n) and row["bundle_bytes"] > 0
    one = results["median"]["1"]
    assert one["first_call_cached_ms"] > 0 and one["bundle_fetch_ms"] > 0 and one["bundle_unpack_ms"] > 0
    assert "first_call_cached_ms" not in repeat["rows"]["2"]
    assert results["median"]["1"]["speedup"] == 1.0
    client = results["median_http_client"]
    assert client["new_client_ms"] > 0 and client["first_get_ms"] > 0 and client["warm_get_ms"] > 0
    data = (out / "task_manager_scaling.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert "task_manager_scaling.json" in stdout and "first call N=1" in stdout
