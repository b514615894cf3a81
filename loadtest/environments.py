"""Per-servable environments (issue 11): what an own environment costs, on the real embedded stack.

    python -m loadtest.environments [--repeats 3] [--duration 10] [--rounds 4] [--clients 4]
                                    [--backends venv,docker] [--no-cold] [--out loadtest/results]

Every repeat starts a fresh ``dlhub up`` (separate processes, empty data directory and environment store) and
measures, for the venv backend and the docker backend (``DLHUB_ENVIRONMENTS__DOCKER_URL``/``DOCKER_HOST``
or ``DLHUB_TEST_DOCKER_URL``; no engine: the docker rows say "skipped: no engine"):

1. publish-to-ready of a scikit-learn servable (a small forest trained here, pinned to the installed
   scikit-learn, numpy and joblib, put into its own environment with ``dlhub.environment.backend``):
   cold (empty environment store; a fresh uv cache for venv through ``XDG_CACHE_HOME``; the docker image of
   that lock removed first, so pip downloads everything again; PyPI speed varies) and cached (a second
   servable with the same lock: the environment is shared, only the lock is resolved again);
2. the first request once the cold version is ready (the environment's executor process starts, inside the
   venv or as ``docker run``, then the model loads), and the first request of the cached version (its
   environment's executor is already running: model load only); the shared-environment servable's first
   request is the baseline;
3. warm p50 latency and throughput of a noop and a single-row scikit-learn prediction, ``--clients``
   keep-alive clients for ``--duration`` seconds each (in ``--rounds`` interleaved slices), with the servable
   in the shared worker environment, in its own venv and in a container, all in the same stack (the order
   rotates between repeats); ratios to shared are taken within each repeat, then the median over repeats.

Results: ``<out>/environments.json`` (commit, load average, per-repeat values, medians, targets with
pass/fail) and ``<out>/environments.png``; a short table is printed. The machine's speed drifts (2 cores
shared with other jobs): compare the ratios, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document, sklearn_document
from dlhub.common.environments import dir_size
from loadtest.common import KeepAliveClient, free_port, percentile, wait_healthy
from loadtest.paper.machine import describe_machine

AUTHORS = ["Bench, Mark"]
PINNED = ("scikit-learn", "numpy", "joblib")
N_FEATURES = 4
ROW = [[5.1, 3.5, 1.4, 0.2]]
NOOP_MODULE = "env_bench"
NOOP_SOURCE = 'def noop(x):\n    return "hello world"\n'
CONFIGS = ("shared", "venv", "docker")
WORKLOADS = ("noop", "sklearn")
TARGETS = {
    "cached_publish_s": 5.0,
    "cold_venv_publish_s": 60.0,
    "first_request_s": 3.0,
    "warm_ratio": 1.10,
}
RESULTS_DIR = Path(__file__).parent / "results"


# -- the stack ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    token: str
    base: Path
    data_dir: Path
    startup_s: float


def docker_settings() -> tuple[str | None, str, str]:
    """(engine URL or None, base image, why not) from the deployment's or the test tooling's variables."""
    url = (
        os.environ.get("DLHUB_ENVIRONMENTS__DOCKER_URL")
        or os.environ.get("DLHUB_TEST_DOCKER_URL")
        or os.environ.get("DOCKER_HOST")
        or ""
    ).strip()
    image = (
        os.environ.get("DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE")
        or os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE")
        or "dlhub-base:bookworm"
    )
    if not url:
        return None, image, "skipped: no engine (no DLHUB_TEST_DOCKER_URL or DOCKER_HOST)"
    if shutil.which("docker") is None:
        return None, image, "skipped: no engine (the docker CLI is not installed)"
    try:
        import docker

        client = docker.DockerClient(base_url=url, timeout=10)
        client.ping()
        client.images.get(image)
    except Exception as exc:
        return None, image, f"skipped: no engine ({type(exc).__name__}: {str(exc)[:200]})"
    return url, image, ""


@contextmanager
def stack(fresh_uv_cache: bool, docker_url: str | None, base_image: str) -> Iterator[Stack]:
    """``dlhub up`` in a fresh world-readable temp dir (containers' unprivileged user reads the store)."""
    base = Path(tempfile.mkdtemp(prefix="dlhub-bench-env-"))
    base.chmod(0o755)
    env = dict(os.environ, DLHUB_HOME=str(base / "home"), DLHUB_ENVIRONMENTS__MODE="auto")
    if fresh_uv_cache:  # the builder drops UV_* variables; uv's cache follows XDG_CACHE_HOME
        env["XDG_CACHE_HOME"] = str(base / "cache")
    if docker_url:
        env["DLHUB_ENVIRONMENTS__DOCKER_URL"] = docker_url
        env["DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE"] = base_image
    port, broker_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "dlhub.client.cli", "up", "--data-dir", str(base / "data"),
        "--port", str(port), "--broker-port", str(broker_port), "--workers", "1", "--user", "bench",
    ]  # fmt: skip
    started = time.perf_counter()
    log_path = base / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client_json = base / "data" / "client.json"
        deadline = time.monotonic() + 90
        while not client_json.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dlhub up failed: " + log_path.read_text()[-3000:])
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        token = json.loads(client_json.read_text())["token"]
        yield Stack(url, token, base, base / "data", time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


# -- servables ---------------------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    return {name: metadata.version(name) for name in PINNED}


def make_package(folder: Path) -> None:
    """A small random forest on iris-shaped synthetic data (pickled) and the noop module."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, N_FEATURES))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    (folder / "model.pkl").write_bytes(pickle.dumps(model))
    (folder / f"{NOOP_MODULE}.py").write_text(NOOP_SOURCE)


def sklearn_doc(name: str, backend: str) -> dict[str, Any]:
    doc = sklearn_document(
        name=name, model_path="model.pkl", title=f"Forest ({backend})", authors=AUTHORS,
        n_input_columns=N_FEATURES, model_type="RandomForestClassifier", dependencies=pins(),
    )  # fmt: skip
    if backend != "shared":
        doc["dlhub"]["environment"] = {"backend": backend}
    return doc


def noop_doc(name: str, backend: str) -> dict[str, Any]:
    # In its own environment the noop pins what the forest pins: same lock, so it shares that environment
    # (and its executor process) with the forest; shared: no dependencies at all.
    doc = python_function_document(
        name=name, module=NOOP_MODULE, function="noop", files=[f"{NOOP_MODULE}.py"],
        title=f"noop ({backend})", authors=AUTHORS, dependencies=pins() if backend != "shared" else None,
    )  # fmt: skip
    if backend != "shared":
        doc["dlhub"]["environment"] = {"backend": backend}
    return doc


def publish(stack: Stack, doc: dict[str, Any], package: Path) -> tuple[str, float, dict[str, float]]:
    """Publish and wait for ready: (shorthand name, seconds, build phases from ``build.json``)."""
    with DLHubClient(stack.url, stack.token, timeout_s=1200) as client:
        started = time.perf_counter()
        reply = client.publish(doc, base_dir=package, timeout_s=1200)
        elapsed = time.perf_counter() - started
    if reply.get("status") != "ready":
        raise RuntimeError(f"publish of {doc['dlhub']['name']} ended {reply.get('status')!r}: {reply}")
    name = str(reply["shorthand_name"])
    return name, elapsed, build_phases(stack, name)


def build_phases(stack: Stack, servable: str) -> dict[str, float]:
    """Seconds spent resolving (lock) and installing, from the version's ``build.json`` (if any)."""
    owner, name = servable.split("/")
    path = stack.data_dir / "servables" / owner / name / "1" / "build.json"
    try:
        states = {s["state"]: s["at_unix_s"] for s in json.loads(path.read_text())["states"]}
    except (OSError, ValueError, KeyError):
        return {}
    phases: dict[str, float] = {}
    if "resolving" in states and "installing" in states:
        phases["resolve_s"] = round(states["installing"] - states["resolving"], 3)
    if "installing" in states and "ready" in states:
        phases["install_s"] = round(states["ready"] - states["installing"], 3)
    return phases


def body(workload: str) -> bytes:
    # Bypass the result cache: the serving path itself is measured.
    return json.dumps({"inputs": ROW if workload == "sklearn" else None, "memoize": False}).encode()


def check(workload: str, status: int, payload: bytes) -> dict[str, Any]:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")
    record: dict[str, Any] = json.loads(payload)
    if record.get("state") == "failed" or "output" not in record:
        raise RuntimeError(f"task failed: {str(record)[:500]}")
    if workload == "noop" and record["output"] != "hello world":
        raise RuntimeError(f"unexpected output {record['output']!r}")
    return record


def first_request(stack: Stack, servable: str, workload: str) -> dict[str, float]:
    client = KeepAliveClient(stack.url, stack.token)
    try:
        started = time.perf_counter()
        status, payload = client.post(f"/api/v1/servables/{servable}/run", body(workload))
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    timings = check(workload, status, payload).get("timings") or {}
    return {
        "round_trip_s": round(elapsed, 4),
        "invocation_s": round(float(timings.get("invocation_ms", 0)) / 1000, 4),
    }


def load(stack: Stack, servable: str, workload: str, clients: int, duration_s: float) -> Samples:
    """``clients`` keep-alive clients in a closed loop for ``duration_s`` (after a short warm-up)."""
    path, payload_body = f"/api/v1/servables/{servable}/run", body(workload)
    warmup = KeepAliveClient(stack.url, stack.token)
    try:
        for _ in range(20):
            check(workload, *warmup.post(path, payload_body))
    finally:
        warmup.close()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    invocations: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client_loop(i: int) -> None:
        conn = KeepAliveClient(stack.url, stack.token)
        try:
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                started = time.perf_counter()
                status, payload = conn.post(path, payload_body)
                latencies[i].append((time.perf_counter() - started) * 1000)
                record = check(workload, status, payload)
                invocations[i].append(float(record.get("timings", {}).get("invocation_ms", 0)))
        except BaseException as exc:  # reported after the threads joined
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + duration_s
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"load on {servable} failed: {errors[0]!r}")
    return Samples(
        [v for values in latencies for v in values], [v for values in invocations for v in values], elapsed
    )


@dataclass
class Samples:
    latency_ms: list[float]
    invocation_ms: list[float]
    elapsed_s: float

    def add(self, other: Samples) -> None:
        self.latency_ms += other.latency_ms
        self.invocation_ms += other.invocation_ms
        self.elapsed_s += other.elapsed_s

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(self.latency_ms, 50), 3),
            "p99_ms": round(percentile(self.latency_ms, 99), 3),
            "invocation_p50_ms": round(percentile(self.invocation_ms, 50), 3),
            "throughput_rps": round(len(self.latency_ms) / self.elapsed_s, 1),
            "requests": len(self.latency_ms),
        }


def warm(
    stack: Stack, servables: dict[str, str], workload: str, order: list[str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """``args.rounds`` rounds of ``duration / rounds`` seconds per configuration, interleaved (drift hits all
    configurations alike), pooled per configuration."""
    pooled: dict[str, Samples] = {config: Samples([], [], 0.0) for config in order}
    plumbing: dict[str, float] = dict.fromkeys(order, 0.0)
    for _ in range(args.rounds):
        for config in order:
            before = docker_plumbing_cpu_s()
            pooled[config].add(
                load(stack, servables[config], workload, args.clients, args.duration / args.rounds)
            )
            plumbing[config] += docker_plumbing_cpu_s() - before
    rows = {config: pooled[config].summary() for config in order}
    for config, row in rows.items():
        # What the docker CLI, dockerd and containerd(-shim) burn per request (machine-wide: other jobs'
        # containers count too; ~0 when they are idle). They relayed `docker run -i`'s stdin/stdout when that
        # was the protocol; with the executor's unix socket they should stay out of the request path.
        row["docker_plumbing_cpu_ms_per_request"] = round(
            plumbing[config] * 1000 / max(1, row["requests"]), 4
        )
    return rows


DOCKER_PLUMBING = frozenset(
    {"docker", "dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-init"}
)


def docker_plumbing_cpu_s() -> float:
    """User + system CPU seconds of the docker CLI, engine and shims (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if comm in DOCKER_PLUMBING:
            total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    return total / ticks


# -- docker image housekeeping -----------------------------------------------------------------------------


def expected_docker_tag(base_image: str) -> str | None:
    """The image tag the builder will give the forest's docker environment (to remove it for a cold run)."""
    from dlhub.common.config import EnvironmentsConfig
    from dlhub.common.docker_environments import image_tag
    from dlhub.common.environments import BuildLog, Deadline, EnvironmentRecord, environment_id, lock, plan

    config = EnvironmentsConfig(docker_base_image=base_image)
    decided = plan(sklearn_doc("probe", "docker"), None, config)
    text = lock(decided.requirements, decided.python, config, BuildLog("probe"), Deadline(300))
    env_id = environment_id("docker", decided.python, text, base_image)
    return image_tag(EnvironmentRecord(kind="isolated", id=env_id), config)


def remove_image(docker_url: str, tag: str) -> bool:
    import docker
    import docker.errors

    client = docker.DockerClient(base_url=docker_url, timeout=120)
    for attempt in range(10):
        try:
            client.images.remove(tag, force=attempt >= 5)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError:  # a container of the last stack is still going away
            time.sleep(1)
    return False


# -- one repeat --------------------------------------------------------------------------------------------


def run_repeat(
    index: int, args: argparse.Namespace, package: Path, docker: tuple[str | None, str, str]
) -> Any:
    docker_url, base_image, _ = docker
    backends = [b for b in args.backends if b == "venv" or docker_url]
    repeat: dict[str, Any] = {"publish": {}, "first_request": {}, "warm": {}}
    if args.cold and "docker" in backends and docker_url:
        tag = expected_docker_tag(base_image)
        repeat["docker_image_removed"] = bool(tag and remove_image(docker_url, tag))
    with stack(args.cold, docker_url if "docker" in backends else None, base_image) as running:
        repeat["startup_s"] = round(running.startup_s, 3)
        servables: dict[str, dict[str, str]] = {w: {} for w in WORKLOADS}
        name, seconds, _ = publish(running, sklearn_doc("forest_shared", "shared"), package)
        servables["sklearn"]["shared"] = name
        repeat["publish"]["shared"] = {"publish_s": round(seconds, 3)}
        repeat["first_request"]["shared"] = first_request(running, name, "sklearn")
        servables["noop"]["shared"] = publish(running, noop_doc("noop_shared", "shared"), package)[0]
        for backend in backends:
            cold_name, cold_s, cold_phases = publish(
                running, sklearn_doc(f"forest_{backend}_1", backend), package
            )
            if backend == "venv" and args.cold:  # evidence that the cold build downloaded everything
                repeat["fresh_uv_cache_bytes_after_cold_build"] = dir_size(running.base / "cache" / "uv")
            first = first_request(running, cold_name, "sklearn")
            cached_name, cached_s, cached_phases = publish(
                running, sklearn_doc(f"forest_{backend}_2", backend), package
            )
            first_cached = first_request(running, cached_name, "sklearn")
            noop_name, noop_s, _ = publish(running, noop_doc(f"noop_{backend}", backend), package)
            repeat["publish"][backend] = {
                "cold_s" if args.cold else "first_build_s": round(cold_s, 3),
                "cold_phases": cold_phases,
                "cached_s": round(cached_s, 3),
                "cached_phases": cached_phases,
                "cached_noop_s": round(noop_s, 3),
            }
            repeat["first_request"][backend] = first
            repeat["first_request"][f"{backend}_pool_running"] = first_cached
            servables["sklearn"][backend] = cached_name
            servables["noop"][backend] = noop_name
        configs = ["shared", *backends]
        shift = index % len(configs)
        order = configs[shift:] + configs[:shift]  # rotate: no configuration always goes first
        repeat["warm_order"] = order
        for workload in WORKLOADS:
            repeat["warm"][workload] = warm(running, servables[workload], workload, order, args)
        for workload in WORKLOADS:
            shared = repeat["warm"][workload]["shared"]
            for config in backends:
                row = repeat["warm"][workload][config]
                row["p50_over_shared"] = round(row["p50_ms"] / shared["p50_ms"], 3)
                row["throughput_over_shared"] = round(row["throughput_rps"] / shared["throughput_rps"], 3)
    repeat["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return repeat


# -- summary -----------------------------------------------------------------------------------------------


def median_of(repeats: list[dict[str, Any]], *path: str) -> float | None:
    values: list[float] = []
    for repeat in repeats:
        node: Any = repeat
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int | float):
            values.append(float(node))
    return round(statistics.median(values), 4) if values else None


def summarize(repeats: list[dict[str, Any]], args: argparse.Namespace, skipped: dict[str, str]) -> Any:
    medians: dict[str, Any] = {"publish": {}, "first_request": {}, "warm": {}}
    medians["publish"]["shared_s"] = median_of(repeats, "publish", "shared", "publish_s")
    first_key = "cold_s" if args.cold else "first_build_s"
    for backend in args.backends:
        if backend in skipped:
            medians["publish"][backend] = skipped[backend]
            medians["first_request"][backend] = skipped[backend]
            continue
        medians["publish"][backend] = {
            first_key: median_of(repeats, "publish", backend, first_key),
            "cold_resolve_s": median_of(repeats, "publish", backend, "cold_phases", "resolve_s"),
            "cold_install_s": median_of(repeats, "publish", backend, "cold_phases", "install_s"),
            "cached_s": median_of(repeats, "publish", backend, "cached_s"),
            "cached_resolve_s": median_of(repeats, "publish", backend, "cached_phases", "resolve_s"),
            "cached_install_s": median_of(repeats, "publish", backend, "cached_phases", "install_s"),
        }
        medians["first_request"][backend] = median_of(repeats, "first_request", backend, "round_trip_s")
        medians["first_request"][f"{backend}_pool_running"] = median_of(
            repeats, "first_request", f"{backend}_pool_running", "round_trip_s"
        )
    medians["first_request"]["shared"] = median_of(repeats, "first_request", "shared", "round_trip_s")
    for workload in WORKLOADS:
        rows: dict[str, Any] = {}
        for config in ("shared", *args.backends):
            if config in skipped:
                rows[config] = skipped[config]
                continue
            rows[config] = {
                key: median_of(repeats, "warm", workload, config, key)
                for key in (
                    "p50_ms",
                    "p99_ms",
                    "invocation_p50_ms",
                    "throughput_rps",
                    "docker_plumbing_cpu_ms_per_request",
                )
            }
            if config != "shared":
                for key in ("p50_over_shared", "throughput_over_shared"):
                    rows[config][key] = median_of(repeats, "warm", workload, config, key)
        medians["warm"][workload] = rows
    return medians


def targets(
    medians: dict[str, Any], args: argparse.Namespace, skipped: dict[str, str]
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float, below: bool = True, note: str = "") -> None:
        if value is None:
            found.append({"what": what, "target": limit, "value": None, "result": note or "not measured"})
            return
        ok = value <= limit if below else value >= limit
        found.append({"what": what, "target": limit, "value": value, "result": "pass" if ok else "FAIL"})

    for backend in args.backends:
        if backend in skipped:
            for what in ("cached publish-to-ready s", "first request after ready s"):
                found.append({"what": f"{backend}: {what}", "value": None, "result": skipped[backend]})
            continue
        pub = medians["publish"][backend]
        add(f"{backend}: cached publish-to-ready s", pub["cached_s"], TARGETS["cached_publish_s"])
        if backend == "venv":
            add(
                "venv: cold publish-to-ready s", pub.get("cold_s"), TARGETS["cold_venv_publish_s"],
                note="not measured (--no-cold)",
            )  # fmt: skip
        add(
            f"{backend}: first request after ready s",
            medians["first_request"][backend],
            TARGETS["first_request_s"],
        )
        for workload in WORKLOADS:
            row = medians["warm"][workload][backend]
            add(f"{backend}: warm {workload} p50 / shared", row["p50_over_shared"], TARGETS["warm_ratio"])
            add(
                f"{backend}: warm {workload} throughput / shared", row["throughput_over_shared"],
                round(1 / TARGETS["warm_ratio"], 3), below=False,
            )  # fmt: skip
    return found


# -- figure and table --------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians, backends = (
        result["median"],
        [b for b in result["config"]["backends"] if b not in result["skipped"]],
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    first_key = "cold_s" if result["config"]["cold"] else "first_build_s"
    labels = [f"{b}\n{first_key[:-2].replace('_', ' ')}" for b in backends] + [
        f"{b}\ncached" for b in backends
    ]
    values = [medians["publish"][b][first_key] or 0 for b in backends] + [
        medians["publish"][b]["cached_s"] or 0 for b in backends
    ]
    ax.bar(labels, values, color=["tab:red"] * len(backends) + ["tab:green"] * len(backends))
    ax.axhline(TARGETS["cached_publish_s"], color="tab:green", ls="--", lw=1, label="cached target 5 s")
    ax.axhline(TARGETS["cold_venv_publish_s"], color="tab:red", ls="--", lw=1, label="cold venv target 60 s")
    ax.set_yscale("log")
    ax.set_ylabel("publish to ready (s, median)")
    ax.set_title("Publish a scikit-learn servable")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = ["shared", *backends, *[f"{b}_pool_running" for b in backends]]
    ax.bar(
        [n.replace("_pool_running", "\n(pool up)") for n in names],
        [medians["first_request"][n] or 0 for n in names],
    )
    ax.axhline(TARGETS["first_request_s"], color="k", ls="--", lw=1, label="target 3 s")
    ax.set_ylabel("first request after ready (s, median)")
    ax.set_title("First request (executor start + model load)")
    ax.legend(fontsize=8)
    ax = axes[2]
    width = 0.8 / max(1, 2 * len(backends))
    for i, (backend, key) in enumerate(
        (b, k) for b in backends for k in ("p50_over_shared", "throughput_over_shared")
    ):
        xs = [j + (i - (2 * len(backends) - 1) / 2) * width for j in range(len(WORKLOADS))]
        ys = [medians["warm"][w][backend][key] or 0 for w in WORKLOADS]
        ax.bar(xs, ys, width, label=f"{backend} {key.replace('_over_shared', '')}")
    ax.axhline(1.0, color="k", lw=1)
    ax.set_ylim(0.5, 1.6)
    ax.axhspan(
        1 / TARGETS["warm_ratio"], TARGETS["warm_ratio"], color="tab:green", alpha=0.12, label="±10% target"
    )
    ax.set_xticks(range(len(WORKLOADS)), list(WORKLOADS))
    ax.set_ylabel("ratio to shared environment (median)")
    ax.set_title(f"Warm serving, {result['config']['clients']} clients")
    ax.legend(fontsize=8)
    fig.suptitle(f"Per-servable environments, {result['config']['repeats']} repeats, medians")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    lines = [f"{'measure':<48} {'median':>10} {'target':>8}  result"]
    for row in result["targets"]:
        value = "-" if row["value"] is None else f"{row['value']:.3f}"
        target = f"{row['target']:g}" if "target" in row else "-"
        lines.append(f"{row['what']:<48} {value:>10} {target:>8}  {row['result']}")
    medians = result["median"]
    lines.append("")
    lines.append(
        f"{'warm (median)':<22} {'p50 ms':>9} {'p99 ms':>9} {'inv p50':>9} {'req/s':>8}"
        f" {'docker CPU ms/req':>18}"
    )
    for workload in WORKLOADS:
        for config, row in medians["warm"][workload].items():
            if isinstance(row, str):
                lines.append(f"{workload + ' ' + config:<22} {row}")
                continue
            lines.append(
                f"{workload + ' ' + config:<22} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} "
                f"{row['invocation_p50_ms']:>9.2f} {row['throughput_rps']:>8.1f} "
                f"{row['docker_plumbing_cpu_ms_per_request']:>19.3f}"
            )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per configuration")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per configuration")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--backends", default="venv,docker", help="comma-separated: venv, docker")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="keep the uv cache and images")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"venv", "docker"}
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")

    machine = describe_machine()
    docker = docker_settings() if "docker" in args.backends else (None, "", "")
    skipped = {"docker": docker[2]} if "docker" in args.backends and docker[0] is None else {}
    if skipped:
        print(f"docker: {skipped['docker']}")
    repeats: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dlhub-bench-pkg-") as tmp:
        package = Path(tmp)
        package.chmod(0o755)
        make_package(package)
        for index in range(args.repeats):
            started = time.perf_counter()
            repeats.append(run_repeat(index, args, package, docker))
            print(f"repeat {index + 1}/{args.repeats}: {time.perf_counter() - started:.0f} s", flush=True)
    result: dict[str, Any] = {
        "benchmark": "per-servable environments: publish-to-ready, first request, warm serving",
        "machine": machine,
        "git_commit": machine["git_commit"],
        "load_average_at_start": machine["load_average_at_start"],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "config": {
            "repeats": args.repeats,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "clients": args.clients,
            "backends": args.backends,
            "cold": args.cold,
            "pins": pins(),
            "docker_base_image": docker[1] if docker[0] else None,
        },
        "notes": (
            "Medians over repeats; each repeat is a fresh `dlhub up` (separate processes). Cold: empty "
            "environment store, fresh uv cache (XDG_CACHE_HOME) for venv, the lock's image removed for "
            "docker; PyPI download speed varies. Cached: a second servable with the same lock. "
            "First request: the first run once the version is ready (executor start in the environment + "
            "model load); "
            "'_pool_running': the environment's executor was already started. Warm ratios are taken against "
            "the shared environment within the same repeat (machine speed drifts), then the median."
        ),
        "skipped": skipped,
        "repeats": repeats,
    }
    result["median"] = summarize(repeats, args, skipped)
    result["targets"] = targets(result["median"], args, skipped)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "environments.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "environments.png")
    print(table(result))
    print(f"wrote {path} and {args.out / 'environments.png'}")


if __name__ == "__main__":
    main()
