"""``python -m loadtest.paper --quick`` end to end: real stacks, real load, every section and figure written.

The numbers are whatever this (shared, noisy) machine gives; what is checked is that every experiment ran
and measured something that obeys the definitions (inference <= invocation <= request <= round trip for the
same requests, memoized answers never invoke, no failed requests under load), and that nothing was left out
without a stated reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("servable_performance", "memoization", "batching", "scaling", "comparison")
SERVABLES = ("noop", "cifar10", "matminer_util", "matminer_featurize", "matminer_model")
RUN_TIMEOUT_S = 280
Run = tuple[Path, dict[str, Any], str]
# the module fixture runs the whole benchmark inside whichever test comes first
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("paper")
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.paper", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, f"loadtest.paper failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out, json.loads((out / "paper.json").read_text()), done.stdout


def test_every_figure_is_a_png(quick_run: Run) -> None:
    out, _, _ = quick_run
    for name in FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 10_000, f"{name}.png is suspiciously small ({len(data)} bytes)"


def test_metadata_and_skips_are_stated(quick_run: Run) -> None:
    _, results, stdout = quick_run
    machine = results["machine"]
    assert len(machine["git_commit"]) == 40 and machine["date"] and machine["cpu_count"] >= 1
    assert results["config"]["quick"] is True and results["model_parameters"]["cifar10.keras"] > 100_000
    assert "random" in results["notes"]["models"]
    skipped = {entry["what"]: entry["reason"] for entry in results["skipped"]}
    assert set(skipped) == {"inception"} and "--quick" in skipped["inception"]
    assert "SKIPPED inception" in stdout


def test_servable_performance_obeys_the_timing_definitions(
    quick_run: Run,
) -> None:
    _, results, _ = quick_run
    perf = results["servable_performance"]
    assert tuple(perf) == SERVABLES
    for name, row in perf.items():
        chain = [row[f"{m}_p50_ms"] for m in ("inference", "invocation", "request", "round_trip")]
        assert 0 < chain[0] <= chain[1] <= chain[2] <= chain[3], (name, chain)
        assert row["requests"] == results["config"]["sequential_requests"]


def test_memoized_answers_never_invoke(quick_run: Run) -> None:
    _, results, _ = quick_run
    for name, row in results["memoization"].items():
        assert row["memo_on"]["invocation_p50_ms"] == 0 and row["memo_on"]["inference_p99_ms"] == 0, name
        assert row["memo_off"]["invocation_p50_ms"] > 0 and row["memo_on"]["request_p50_ms"] > 0, name


def test_batching_makespans(quick_run: Run) -> None:
    _, results, _ = quick_run
    assert set(results["batching"]) == {"noop", "sklearn_forest", "cifar10"}
    for name, data in results["batching"].items():
        expected = [1, 10] if name == "cifar10" else [1, 10, 100]  # the CNN stops at cifar_max_batch
        assert sorted(int(n) for n in data["sizes"]) == expected, name
        for n, pair in data["sizes"].items():
            for kind in ("unbatched", "batched"):
                assert pair[kind]["makespan_ms"] > 0 and pair[kind]["invocation_ms"] > 0, (name, n, kind)


def test_load_experiments_complete_without_errors(quick_run: Run) -> None:
    _, results, _ = quick_run
    loads = [
        *(results["throughput"][k] for k in ("noop_32_clients", "forest_32_clients_batching_on",
                                             "forest_32_clients_batching_off")),
        *(results["comparison"]["floor"][k] for k in ("noop_throughput", "sklearn_throughput")),
        *results["scaling"]["replicas"].values(),
    ]  # fmt: skip
    assert sorted(results["scaling"]["replicas"]) == ["1", "2"]
    for load in loads:
        assert load["requests_per_s"] > 0 and load["errors"] == 0, load
        assert 0 < load["client_cpu_share"] < 1, load
    for key, value in results["comparison"]["dlhub_over_floor"].items():
        assert value > 0, key
    assert results["pipeline"]["server_side"]["p50_ms"] > 0 and results["pipeline"]["speedup_p50"] > 0
    assert set(results["client_batch"]) == {"msgpack", "json", "path_overhead"}
    for wire in ("msgpack", "json"):
        client_batch = results["client_batch"][wire]
        assert client_batch["wire"] == wire and client_batch["rows"] == 10_000, wire
        assert client_batch["ratio_round_trip_to_in_process"] > 0, wire
        assert client_batch["overhead_round_trip_minus_inference"]["p50_ms"] > 0, wire
    # The reference request is calibrated to last about as long as the batch's model call.
    reference = results["client_batch"]["path_overhead"]
    target_ms = results["client_batch"]["msgpack"]["inference_time"]["p50_ms"]
    assert reference["target_inference_ms"] == round(target_ms, 3)
    assert 0.3 * target_ms < reference["inference_time"]["p50_ms"] < 3 * target_ms, reference
    assert reference["overhead_round_trip_minus_inference"]["p50_ms"] > 0


def test_targets_table(quick_run: Run) -> None:
    out, results, stdout = quick_run
    rows = results["targets"]
    assert len(rows) == 6
    for row in rows:
        assert row["measured"] > 0 and isinstance(row["passed"], bool), row
    table = (out / "targets.md").read_text()
    assert table.count("\n") == 2 + len(rows) and table in stdout


WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8642/api/v1/servables/bench/noop/run
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.51ms    3.10ms  40.12ms   80.00%
    Req/Sec     2.56k   150.00     2.80k    70.00%
  Latency Distribution
     50%   11.80ms
     75%   13.20ms
     90%   15.00ms
     99%   25.00ms
  12790 requests in 5.00s, 4.99MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2557.12
Transfer/sec:      0.99MB
"""


def test_wrk_output_is_parsed_with_its_errors() -> None:
    from loadtest.paper import wrk

    assert wrk.parse(WRK_OUTPUT) == {
        "requests": 12790,
        "requests_per_s": 2557.1,
        "errors": 7,
        "latency_p50_ms": 11.8,
    }
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        wrk.parse("connection refused")


def test_idle_wake_measures_both_cadences() -> None:
    from loadtest.idle_wake import measure
    from loadtest.paper.floor import floor_server, wait_up

    with floor_server() as url:
        wait_up(url)
        run = measure(url, gap_ms=2.0, requests=5)
    for cadence in ("back_to_back", "with_gaps"):
        assert run[cadence]["n"] == 5 and run[cadence]["p50_ms"] > 0, run
    assert run["gap_ms"] == 2.0 and run["ratio_p50"] > 0
