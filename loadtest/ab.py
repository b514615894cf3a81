"""Before/after in the same run: one benchmark alternately in a baseline checkout and in this one.

    python -m loadtest.ab --baseline OLD_CHECKOUT [--rounds 3] [--bench noop_rest|cpu_per_request|batching]

This machine's speed drifts by up to ~1.7x within minutes, so figures from different runs cannot be
compared. Here each round runs the benchmark once in each tree (the order alternates between rounds, so a
slow phase hits both), every tree with its own ``.venv`` and its own code, and the result is the median
over rounds of each figure and of the per-round ratio current / baseline. The baseline checkout needs its
``.venv`` installed (``./scripts/up`` once there, or its bootstrap); a tree without one (a worktree, or a
``git archive`` of the baseline, beside a shared venv with editable installs) runs with this interpreter and
the tree's ``src`` folders first on ``PYTHONPATH``. Results: ``loadtest/results/ab.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
# The figures worth comparing per benchmark: (label, path in its results JSON, higher is better).
FIGURES: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "noop_rest": [
        ("round trip p50 ms", ("median", "round_trip_p50_ms"), False),
        ("round trip p99 ms", ("median", "round_trip_p99_ms"), False),
        ("request p50 ms", ("median", "request_p50_ms"), False),
    ],
    "cpu_per_request": [
        ("memo off req/s", ("memo_off", "requests_per_s"), True),
        ("memo on req/s", ("memo_on", "requests_per_s"), True),
        ("memo off CPU us/request", ("memo_off", "total_us"), False),
    ],
    "batching": [
        ("batched single-row req/s", ("median_requests_per_s", "on"), True),
        ("10k-row batch / in-process", ("client_batch_ratio",), False),
        (
            "10k-row batch overhead p50 ms",
            ("client_batch", "msgpack", "overhead_round_trip_minus_inference", "p50_ms"),
            False,
        ),
        (
            "10k-row in-process predict p50 ms",
            ("client_batch", "msgpack", "in_process_predict", "p50_ms"),
            False,
        ),
    ],
}
ARGS = {
    "noop_rest": ["--requests", "2000", "--repeats", "1"],
    "cpu_per_request": ["--repeats", "1"],
    "batching": ["--repeats", "1", "--duration-s", "6", "--batch-repeats", "10"],
}
TIMEOUT_S = 1800


def interpreter(tree: Path) -> tuple[str, dict[str, str]]:
    """The tree's own ``.venv`` interpreter, else this one with the tree's code first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DLHUB_URL", "DLHUB_TOKEN")}
    python = tree / ".venv" / "bin" / "python"
    if python.exists():
        return str(python), env
    sources = sorted(tree.glob("libs/*/src")) + sorted(tree.glob("services/*/src"))
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*sources, tree])
    return sys.executable, env


def run_once(tree: Path, bench: str) -> dict[str, Any]:
    """Run ``python -m loadtest.<bench>`` in ``tree`` with its own code and return its results."""
    python, env = interpreter(tree)
    done = subprocess.run(
        [python, "-m", f"loadtest.{bench}", *ARGS[bench]],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{bench} failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    results: dict[str, Any] = json.loads((tree / "loadtest" / "results" / f"{bench}.json").read_text())
    return results


def figure(results: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = results
    for key in path:
        value = value[key]
    return float(value)


def commit_of(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def compare(baseline: Path, bench: str, rounds: int) -> dict[str, Any]:
    trees = {"baseline": baseline, "current": HERE}
    per_round: list[dict[str, dict[str, float]]] = []
    for n in range(rounds):
        order = ["baseline", "current"] if n % 2 == 0 else ["current", "baseline"]
        measured: dict[str, dict[str, float]] = {}
        for name in order:
            results = run_once(trees[name], bench)
            measured[name] = {label: figure(results, path) for label, path, _ in FIGURES[bench]}
            print(f"round {n + 1} {name}: {measured[name]}", flush=True)
        per_round.append(measured)
    summary: dict[str, Any] = {}
    for label, _, higher_is_better in FIGURES[bench]:
        base = [r["baseline"][label] for r in per_round]
        current = [r["current"][label] for r in per_round]
        ratios = [c / b for b, c in zip(base, current, strict=True) if b]
        summary[label] = {
            "baseline_median": round(statistics.median(base), 4),
            "current_median": round(statistics.median(current), 4),
            "ratio_median": round(statistics.median(ratios), 4),
            "higher_is_better": higher_is_better,
        }
    return {"rounds": per_round, "median": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline commit")
    parser.add_argument("--bench", choices=sorted(FIGURES), action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="ab", help="results file name in loadtest/results (without .json)")
    args = parser.parse_args()
    baseline = args.baseline.resolve()
    if not (baseline / ".venv" / "bin" / "python").exists() and not (baseline / "libs").is_dir():
        sys.exit(f"{baseline} is not a DLHub checkout")
    started = time.time()
    out: dict[str, Any] = {
        "baseline_commit": commit_of(baseline),
        "current_commit": commit_of(HERE),
        "load_average_at_start": os.getloadavg(),
        "benchmarks": {},
    }
    for bench in args.bench or ["noop_rest"]:
        out["benchmarks"][bench] = compare(baseline, bench, args.rounds)
    out["load_average_at_end"] = os.getloadavg()
    out["elapsed_s"] = round(time.time() - started, 1)
    path = HERE / "loadtest" / "results" / f"{args.out}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for bench, result in out["benchmarks"].items():
        for label, row in result["median"].items():
            print(
                f"{bench:16} {label:26} {row['baseline_median']:>10} -> {row['current_median']:>10}"
                f"  x{row['ratio_median']}"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
