"""The first call of a servable on a Task Manager that has never seen it (issue 16): the extra latency of the
bundle fetch over HTTP, its check and unpacking, on top of what every first call pays (executor start, load).

    python -m loadtest.task_manager_first_call [--repeats 5] [--warm 20] [--size-mib 0,10]

One ``dlhub up`` (a worker sharing the builder's disk, serving ``shared/*``) plus one ``dlhub worker`` in a
data directory of its own (serving ``remote/*``, fetching bundles from the registry). For each size and
repeat, the same function servable (with a data file of that many MiB of random bytes, which compresses not
at all) is published once under each owner; then its first call and ``--warm`` more are timed on each
worker. The difference of the first calls is the price of running anywhere; the Task Manager's log gives the
fetch and unpack times alone. Results: ``loadtest/results/task_manager_first_call.json``; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import embedded_stack, summary_ms, write_results

SOURCE = "def echo(x):\n    return x\n"


def token_for(data_dir: Path, user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dlhub.client.cli", "token", "create", user, "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def start_task_manager(
    url: str,
    broker_url: str,
    stack_dir: Path,
    base: Path,
    *,
    label: str = "tm",
    key_name: str = "worker",
    serves: str = "remote/*",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``dlhub worker`` with its own data directory ``<base>/<label>-data`` (created if missing, kept if not:
    a restart serves from its bundle cache) holding a copy of the stack's key pair ``key_name``; its JSON log
    is appended to ``<base>/<label>.log``."""
    data_dir = base / f"{label}-data"
    keys = data_dir / "keys"
    keys.mkdir(parents=True, mode=0o700, exist_ok=True)
    for name in ("broker.key", f"{key_name}.key_secret"):
        shutil.copy(stack_dir / "keys" / name, keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")}
    env |= {"DLHUB_HOME": str(base / f"{label}-home"), "DLHUB_LOGGING__FORMAT": "json", **(extra_env or {})}
    cmd = [
        sys.executable, "-m", "dlhub.client.cli", "worker", "--broker", broker_url,
        "--data-dir", str(data_dir), "--registry-url", url, "--key-name", key_name,
        "--serves", serves, "--instance-id", f"bench-{label}",
    ]  # fmt: skip
    with (base / f"{label}.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_workers(url: str, token: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = httpx.get(url + "/api/v1/health", headers={"Authorization": f"Bearer {token}"}).json()
        if health["broker"]["handler_counts"].get("worker", 0) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError("workers did not register")


def publish(client: DLHubClient, base: Path, name: str, size_mib: int) -> str:
    pkg = base / "pkg" / name
    pkg.mkdir(parents=True)
    (pkg / "echofns.py").write_text(SOURCE)
    files = ["echofns.py"]
    if size_mib:
        (pkg / "weights.bin").write_bytes(os.urandom(size_mib * 1024 * 1024))
        files.append("weights.bin")
    doc = python_function_document(
        name=name, module="echofns", function="echo", files=files, title="Echo", authors=["Bench, Mark"]
    )
    doc["dlhub"]["deterministic"] = False
    record = client.publish(doc, base_dir=pkg)
    assert record["status"] == "ready", record
    return f"{record['owner']}/{name}"


def timed_calls(client: DLHubClient, servable: str, warm: int) -> tuple[float, list[float]]:
    def one(i: int) -> float:
        started = time.perf_counter()
        assert client.run(servable, i, timeout_s=120) == i
        return (time.perf_counter() - started) * 1000.0

    first = one(0)
    return first, [one(i) for i in range(1, warm + 1)]


def bundle_logs(log: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "bundle installed"]


def measure(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"repeats": args.repeats, "warm_calls": args.warm, "sizes": {}}
    with embedded_stack(workers=1, extra_env={"DLHUB_WORKER__SERVES": '["shared/*"]'}) as stack:
        broker_url = f"tcp://127.0.0.1:{stack_broker_port(stack.pid)}"
        tm = start_task_manager(stack.url, broker_url, stack.data_dir, base)
        try:
            shared = DLHubClient(stack.url, token_for(stack.data_dir, "shared"))
            remote = DLHubClient(stack.url, token_for(stack.data_dir, "remote"))
            wait_workers(stack.url, stack.token, 2)
            for size in args.size_mib:
                rows: dict[str, list[float]] = {"first_shared": [], "first_remote": [], "warm": []}
                for repeat in range(args.repeats):
                    name = f"echo_{size}_{repeat}"
                    pair = (
                        publish(shared, base, name + "_s", size),
                        publish(remote, base, name + "_r", size),
                    )
                    for client, servable, key in (
                        (shared, pair[0], "first_shared"),
                        (remote, pair[1], "first_remote"),
                    ):
                        first, warm = timed_calls(client, servable, args.warm)
                        rows[key].append(first)
                        rows["warm"].extend(warm)
                installs = [
                    line for line in bundle_logs(base / "tm.log") if f"echo_{size}_" in line["servable"]
                ]
                extra = [r - s for r, s in zip(rows["first_remote"], rows["first_shared"], strict=True)]
                results["sizes"][f"{size}MiB"] = {
                    "first_call_shared_disk_ms": summary_ms(rows["first_shared"]),
                    "first_call_task_manager_ms": summary_ms(rows["first_remote"]),
                    "extra_first_call_ms": summary_ms(extra),
                    "warm_call_ms": summary_ms(rows["warm"]),
                    "bundle_bytes": statistics.median(line["size_bytes"] for line in installs),
                    "fetch_ms": summary_ms([line["fetch_ms"] for line in installs]),
                    "unpack_ms": summary_ms([line["unpack_ms"] for line in installs]),
                }
        finally:
            tm.send_signal(signal.SIGTERM)
            tm.wait(timeout=30)
    return results


def stack_broker_port(up_pid: int) -> int:
    """The broker port of the `dlhub up` process (its command line names it)."""
    argv = Path(f"/proc/{up_pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--broker-port") + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--size-mib", type=lambda s: [int(v) for v in s.split(",")], default=[0, 10])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlhub-tm-bench-") as tmp:
        results = measure(args, Path(tmp))
    path = write_results("task_manager_first_call", results)
    columns = (
        ("first_call_shared_disk_ms", "first shared"),
        ("first_call_task_manager_ms", "first TM"),
        ("extra_first_call_ms", "extra"),
        ("fetch_ms", "fetch"),
        ("unpack_ms", "unpack"),
        ("warm_call_ms", "warm"),
    )
    print(f"{'size':>6} " + " ".join(f"{title:>13}" for _, title in columns))
    for size, row in results["sizes"].items():
        print(f"{size:>6} " + " ".join(f"{row[key]['p50_ms']:>13.1f}" for key, _ in columns))
    print(f"(ms, medians; results in {path})")


if __name__ == "__main__":
    main()
