"""The soak's report (JSON), its pass/fail checks, and its plot of RSS per service over time (SVG)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.soak_load import TERMINAL, ErrorEvent, Recorder
from loadtest.soak_stack import Fault

RSS_GROWTH_LIMIT_PCT = 10.0
# an incarnation's RSS baseline: its first sample this long after the later of the warm-up's end and its start
RSS_SETTLE_S = 30.0
RSS_MIN_SPAN_S = 60.0  # shorter incarnations (a service restarted near the end) get no growth figure
RSS_MEDIAN_OF = 3  # baseline and end are medians of this many samples: one sample is noisy


def in_fault_window(event: ErrorEvent, faults: list[Fault]) -> bool:
    return any(event.start_s <= f.window_end_s and event.end_s >= f.at_s for f in faults)


def is_server_error(event: ErrorEvent) -> bool:
    """A 5xx, or no answer at all (connection refused or reset, timeout)."""
    return event.status is None or event.status >= 500


def error_counts(errors: list[ErrorEvent], faults: list[Fault]) -> dict[str, Any]:
    inside, outside = Counter[str](), Counter[str]()
    for event in errors:
        (inside if in_fault_window(event, faults) else outside)[f"{event.kind}: {event.error}"] += 1
    server_outside = [e for e in errors if is_server_error(e) and not in_fault_window(e, faults)]
    return {
        "in_fault_windows": dict(inside.most_common()),
        "outside_fault_windows": dict(outside.most_common()),
        "server_errors_outside_fault_windows": len(server_outside),
        "first_server_errors_outside": [
            {"kind": e.kind, "error": e.error, "start_s": round(e.start_s, 2)} for e in server_outside[:20]
        ],
    }


def task_counts(recorder: Recorder) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = {}
    lost: list[dict[str, Any]] = []
    for task_id, task in recorder.tasks.items():
        counts = by_kind.setdefault(task.kind, Counter())
        counts["submitted"] += 1
        if task.state in TERMINAL:
            counts["terminal"] += 1
            counts[f"{task.state} {task.error_type}" if task.error_type else task.state] += 1
        else:
            counts["lost"] += 1
            lost.append({"task_id": task_id, "kind": task.kind, "state": task.state,
                         "submitted_s": round(task.submitted_s, 2)})  # fmt: skip
    submitted = sum(c["submitted"] for c in by_kind.values())
    terminal = sum(c["terminal"] for c in by_kind.values())
    return {
        "submitted": submitted,
        "terminal": terminal,
        "lost": submitted - terminal,
        "by_kind": {kind: dict(c) for kind, c in by_kind.items()},
        "lost_tasks": lost[:50],
        "sync_runs": dict(recorder.sync_outcomes),
    }


def rss_growth(series: list[list[float]], warmup_s: float) -> dict[str, Any]:
    """Growth of the last incarnation (pid) of a service, from its settled baseline to the end, in %."""
    last_pid = series[-1][1]
    incarnation = [s for s in series if s[1] == last_pid]
    settled_from = max(warmup_s, incarnation[0][0]) + RSS_SETTLE_S
    steady = [s for s in incarnation if s[0] >= settled_from]
    result: dict[str, Any] = {"pid": int(last_pid), "incarnation_from_s": incarnation[0][0]}
    if len(steady) < 2 * RSS_MEDIAN_OF or steady[-1][0] - steady[0][0] < RSS_MIN_SPAN_S:
        return result | {"growth_pct": None, "note": "too short after warm-up or restart to judge"}
    base = statistics.median(s[3] for s in steady[:RSS_MEDIAN_OF])
    end = statistics.median(s[3] for s in steady[-RSS_MEDIAN_OF:])
    return result | {
        "baseline_s": steady[0][0],
        "end_s": steady[-1][0],
        "baseline_mb": base,
        "end_mb": end,
        "growth_pct": round((end - base) / base * 100, 2),
        "mb_per_hour": round((end - base) / (steady[-1][0] - steady[0][0]) * 3600, 2),
    }


def per_version(growth: dict[str, Any], recorder: Recorder) -> dict[str, Any]:
    """The registry's growth per version published in its judged span: it caches every version's metadata
    document (store/cache.py, about 10 KB each), so part of its growth is the data, by design."""
    if growth.get("growth_pct") is None:
        return growth
    published = sum(
        1
        for task in recorder.tasks.values()
        if task.kind == "publish"
        and task.state == "completed"
        and task.terminal_s is not None
        and growth["baseline_s"] <= task.terminal_s <= growth["end_s"]
    )
    grown_kb = (growth["end_mb"] - growth["baseline_mb"]) * 1024
    return growth | {
        "versions_published": published,
        "kb_per_version_published": round(grown_kb / published, 1) if published else None,
    }


def build_report(
    *,
    args: dict[str, Any],
    recorder: Recorder,
    faults: list[Fault],
    rss: dict[str, list[list[float]]],
    duration_s: float,
    final_health: bool,
    latency: Callable[[list[float]], dict[str, float]],
) -> dict[str, Any]:
    errors = error_counts(recorder.errors, faults)
    tasks = task_counts(recorder)
    growth = {label: rss_growth(series, args["warmup_s"]) for label, series in sorted(rss.items())}
    if "registry" in growth:
        growth["registry"] = per_version(growth["registry"], recorder)
    summary = {
        "duration_s": round(duration_s, 1),
        "requests": sum(recorder.requests.values()),
        "errors": len(recorder.errors),
        "server_errors_outside_fault_windows": errors["server_errors_outside_fault_windows"],
        "tasks_submitted": tasks["submitted"],
        "tasks_terminal": tasks["terminal"],
        "tasks_lost": tasks["lost"],
        "faults": len(faults),
        "faults_unrecovered": sum(1 for f in faults if f.recovered_s is None),
        "rss_growth_pct": {label: g["growth_pct"] for label, g in growth.items()},
        "healthy_at_end": final_health,
    }
    return {
        "summary": summary,
        "config": args,
        "requests_by_kind": dict(recorder.requests),
        "latency_ms_by_kind": {k: latency(v) for k, v in sorted(recorder.latencies_ms.items()) if v},
        "errors": errors,
        "tasks": tasks,
        "faults": [f.as_dict() for f in faults],
        "rss_growth": growth,
        "rss_series": {"columns": ["t_s", "pid", "rss_mb", "tree_rss_mb"], **rss},
    }


def checks(report: dict[str, Any], *, rss_checked: bool) -> list[str]:
    """What fails the soak: lost tasks, server errors outside faults, unrecovered faults, RSS growth."""
    summary = report["summary"]
    failures = []
    if summary["tasks_lost"]:
        failures.append(f"{summary['tasks_lost']} tasks accepted but never terminal")
    if summary["server_errors_outside_fault_windows"]:
        failures.append(
            f"{summary['server_errors_outside_fault_windows']} 5xx/transport errors outside faults"
        )
    if summary["faults_unrecovered"]:
        failures.append(f"{summary['faults_unrecovered']} faults the stack did not recover from")
    if not summary["healthy_at_end"]:
        failures.append("the stack was not healthy at the end")
    if rss_checked:
        for label, growth in summary["rss_growth_pct"].items():
            if growth is not None and growth > RSS_GROWTH_LIMIT_PCT:
                failures.append(f"RSS of {label} grew {growth}% (limit {RSS_GROWTH_LIMIT_PCT}%)")
    return failures


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """RSS (service and descendants) per service over time, one line each; faults as dashed verticals."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for label, series in report["rss_series"].items():
        if label == "columns":
            continue
        ax.plot([s[0] / 60 for s in series], [s[3] for s in series], label=label, linewidth=1.2)
    for fault in report["faults"]:
        ax.axvline(fault["at_s"] / 60, color="red", linestyle="--", linewidth=0.8, alpha=0.7)
        ax.axvspan(fault["at_s"] / 60, fault["window_end_s"] / 60, color="red", alpha=0.08)
        ax.text(fault["at_s"] / 60, ax.get_ylim()[1], f" {fault['name']}", rotation=90, va="top", fontsize=7)
    summary = report["summary"]
    ax.set_title(
        f"Soak: RSS per service ({summary['requests']} requests, {summary['tasks_submitted']} tasks, "
        f"{summary['tasks_lost']} lost, {summary['faults']} faults)"
    )
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS of the service and its children (MiB)")
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path
