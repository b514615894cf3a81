"""One PNG per figure (matplotlib, Agg backend), drawn from the medians in ``paper.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, no GUI toolkit
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

DPI = 120


def _bars(ax: Axes, labels: list[str], series: dict[str, list[float]], *, log: bool = True) -> None:
    """Grouped bars; a zero (e.g. a memoized invocation) is written as "0" instead of an invisible bar."""
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = x + (i - (len(series) - 1) / 2) * width
        heights = [v if v > 0 else np.nan for v in values]
        ax.bar(positions, heights, width, label=name)
        for pos, value in zip(positions, values, strict=True):
            if value <= 0:
                ax.annotate("0", (pos, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                            xycoords=("data", "axes fraction"), fontsize=8)  # fmt: skip
    ax.set_xticks(x, labels, rotation=20, ha="right")
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def servable_performance(results: dict[str, Any], out: Path) -> Path:
    perf = results["servable_performance"]
    labels = list(perf)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = {
        name: [perf[s][f"{name}_p50_ms"] for s in labels] for name in ("inference", "invocation", "request")
    }
    _bars(ax, labels, series)
    ax.set_ylabel("p50 time (ms, log)")
    ax.set_title("Servable performance: inference < invocation < request (memo off)")
    return _save(fig, out / "servable_performance.png")


def memoization(results: dict[str, Any], out: Path) -> Path:
    memo = results["memoization"]
    labels = list(memo)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, metric in zip(axes, ("request", "invocation"), strict=True):
        series = {
            f"memo {state}": [memo[s][f"memo_{state}"][f"{metric}_p50_ms"] for s in labels]
            for state in ("off", "on")
        }
        _bars(ax, labels, series)
        ax.set_ylabel(f"{metric} time p50 (ms, log)")
        ax.set_title(f"Memoization: {metric} time")
    return _save(fig, out / "memoization.png")


def batching(results: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, data) in enumerate(results["batching"].items()):
        sizes = sorted(int(n) for n in data["sizes"])
        color = f"C{i}"
        for kind, style in (("unbatched", "--"), ("batched", "-")):
            measured = [n for n in sizes if kind in data["sizes"][str(n)]]
            makespans = [data["sizes"][str(n)][kind]["makespan_ms"] for n in measured]
            ax.plot(measured, makespans, style, marker="o", color=color, label=f"{label} {kind}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of requests (inputs)")
    ax.set_ylabel("makespan (ms)")
    ax.set_title("Batching: N requests one by one (dashed) vs one request of N inputs (solid)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out / "batching.png")


def scaling(results: dict[str, Any], out: Path) -> Path:
    runs = results["scaling"]["replicas"]
    replicas = sorted(int(r) for r in runs)
    rps = [runs[str(r)]["requests_per_s"] for r in replicas]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(replicas, rps, marker="o", label="measured")
    ax.plot(replicas, [rps[0] * r / replicas[0] for r in replicas], ":", color="gray", label="linear")
    ax.set_xticks(replicas)
    ax.set_xlabel("worker replicas")
    ax.set_ylabel("requests/s")
    ax.set_title(f"Scaling: {results['scaling']['servable']}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out / "scaling.png")


def comparison(results: dict[str, Any], out: Path) -> Path:
    comp = results["comparison"]
    labels = ["noop", "sklearn"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    latency = {
        system: [comp[system][f"{k}_round_trip"]["p50_ms"] for k in labels] for system in ("dlhub", "floor")
    }
    _bars(axes[0], labels, latency)
    axes[0].set_ylabel("sequential round trip p50 (ms, log)")
    axes[0].set_title("Latency: DLHub vs bare aiohttp (floor)")
    throughput = {
        system: [comp[system][f"{k}_throughput"]["requests_per_s"] for k in labels]
        for system in ("dlhub", "floor")
    }
    _bars(axes[1], labels, throughput, log=False)
    axes[1].set_ylabel("requests/s, 32 clients")
    axes[1].set_title("Throughput: DLHub vs floor")
    return _save(fig, out / "comparison.png")


FIGURES = (servable_performance, memoization, batching, scaling, comparison)


def draw_all(results: dict[str, Any], out: Path) -> list[Path]:
    return [figure(results, out) for figure in FIGURES]
