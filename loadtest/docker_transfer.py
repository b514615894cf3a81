"""What the docker backend's ``copy`` transfer costs against ``mount`` (docs/environments.md), same run.

    python -m loadtest.docker_transfer [--repeats 3] [--requests 300] [--payload-mb 20]

``mount``: executor containers bind-mount the runtime and the version directory and connect to the worker's
unix socket (workers on the engine's host). ``copy``: the engine is reached over ``tcp://`` with mutual TLS
(``DLHUB_TEST_DOCKER_TLS_URL``/``DLHUB_TEST_DOCKER_TLS_CERT_DIR`` of ``scripts/test-servers``), the files are
copied in through the engine API and the protocol runs over the attach stream through
``dlhub.worker.docker_relay`` (workers in containers, as ``compose/docker-environments.yml`` runs them).

Each repeat starts one stack per transfer (order alternating), publishes a noop servable in a docker
environment (six pinned, the base image of the test engine) with a ``--payload-mb`` file in its package, and
measures the first request (the executor container's start, the copy included) and the p50 of
``--requests`` sequential warm requests. Medians over repeats and the copy/mount ratios go to
``loadtest/results/docker_transfer.json``. The machine's speed drifts: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import embedded_stack, summary_ms, write_results

FUNCTION = "def noop(x):\n    return x\n"


def environment(transfer: str) -> dict[str, str]:
    base_image = os.environ.get("DLHUB_TEST_DOCKER_BASE_IMAGE", "dlhub-base:bookworm")
    env = {"DLHUB_ENVIRONMENTS__DOCKER_BASE_IMAGE": base_image}
    if transfer == "mount":
        return env | {"DLHUB_ENVIRONMENTS__DOCKER_URL": os.environ["DLHUB_TEST_DOCKER_URL"]}
    return env | {
        "DLHUB_ENVIRONMENTS__DOCKER_URL": os.environ["DLHUB_TEST_DOCKER_TLS_URL"],
        "DLHUB_ENVIRONMENTS__DOCKER_TLS_CERT_DIR": os.environ["DLHUB_TEST_DOCKER_TLS_CERT_DIR"],
        "DLHUB_ENVIRONMENTS__DOCKER_TRANSFER": "copy",
    }


def measure(transfer: str, requests: int, payload_mb: int) -> dict[str, Any]:
    with embedded_stack(extra_env=environment(transfer)) as stack, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "noopfn.py").write_text(FUNCTION)
        (folder / "weights.bin").write_bytes(os.urandom(payload_mb * 2**20))
        doc = python_function_document(
            name=f"noop_{transfer}",
            module="noopfn",
            function="noop",
            files=["noopfn.py", "weights.bin"],
            title="noop in a container",
            authors=["Bench, Mark"],
            dependencies={"six": "1.16.0"},
        )
        doc["dlhub"]["environment"] = {"backend": "docker"}
        client = DLHubClient(stack.url, stack.token, timeout_s=600)
        ref = client.publish(doc, base_dir=folder)["shorthand_name"]
        started = time.perf_counter()
        client.run(ref, 0)
        first_ms = (time.perf_counter() - started) * 1000
        warm = []
        for i in range(requests):
            started = time.perf_counter()
            client.run(ref, i + 1)  # inputs never repeat: no memoized answer
            warm.append((time.perf_counter() - started) * 1000)
        client.close()
    return {"transfer": transfer, "first_request_ms": round(first_ms, 1), "warm": summary_ms(warm)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--payload-mb", type=int, default=20)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"mount": [], "copy": []}
    for repeat in range(args.repeats):
        for transfer in ("mount", "copy") if repeat % 2 == 0 else ("copy", "mount"):
            run = measure(transfer, args.requests, args.payload_mb)
            print(json.dumps(run), flush=True)
            runs[transfer].append(run)
    medians = {
        transfer: {
            "first_request_ms": statistics.median(r["first_request_ms"] for r in rs),
            "warm_p50_ms": statistics.median(r["warm"]["p50_ms"] for r in rs),
        }
        for transfer, rs in runs.items()
    }
    results = {
        "benchmark": "docker backend: copy (TLS engine, attach relay) vs mount (socket, bind mounts)",
        "payload_mb": args.payload_mb,
        "load_average": os.getloadavg(),
        "runs": runs,
        "medians": medians,
        "warm_p50_extra_ms": round(medians["copy"]["warm_p50_ms"] - medians["mount"]["warm_p50_ms"], 3),
        "first_request_extra_ms": round(
            medians["copy"]["first_request_ms"] - medians["mount"]["first_request_ms"], 1
        ),
    }
    path = write_results("docker_transfer", results)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
