"""A dataset job over 10,000 rows vs. the same rows sent as one batch through ``/run`` (issue 15, item 5).

    python -m loadtest.dataset_job [--rows 10000] [--batch-rows 500] [--repeats 3]

Each repeat starts a fresh stack (`dlhub up`, one worker), publishes a CSV dataset of ``--rows`` rows (id, x)
and a python-function servable taking a list of rows and returning one float per row (no sleep: the
registry, broker and worker overheads are what is measured), then times:
- the job: ``POST .../apply`` until the task is ``completed`` (reading the rows from the stored package,
  batches of ``--batch-rows`` through the broker, the results file, publishing and building the output
  dataset), polled every 20 ms; also the time until every row was done (``progress.done == total``);
- one client batch: the same rows (parsed by the client) as one synchronous ``POST .../run``.
Rows per second are reported per repeat and as medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from loadtest.common import embedded_stack, write_results

FUNCTIONS = """
def score(rows):
    return [2 * x + 1 for _, x in rows]
"""
ROWS_OF_FLOATS = {"type": "list", "item_type": {"type": "list", "item_type": {"type": "float"}}}


def _publish(client: DLHubClient, folder: Path, rows: int) -> tuple[str, str, list[list[float]]]:
    data = [[i, i * 0.5] for i in range(rows)]
    (folder / "rows.csv").write_text("id,x\n" + "".join(f"{i},{x}\n" for i, x in data))
    (folder / "benchfns.py").write_text(FUNCTIONS)
    authors = ["Bench, A"]
    dataset = client.publish_dataset("rows", ["rows.csv"], title="Rows", authors=authors, base_dir=folder)
    document = python_function_document(
        name="score", module="benchfns", function="score", files=["benchfns.py"], title="Score",
        authors=["Bench, A"], input_type=ROWS_OF_FLOATS,
        output_type={"type": "list", "item_type": {"type": "float"}},
    )  # fmt: skip
    servable = client.publish(document, base_dir=folder)
    return f"bench/{dataset['name']}", f"bench/{servable['name']}@{servable['version']}", data


def timed_job(
    url: str, headers: dict[str, str], dataset: str, body: dict[str, Any]
) -> tuple[dict[str, Any], float, float]:
    """Apply ``body`` to ``dataset`` and poll the task to its end: (the task, seconds until every item was
    done, seconds until it completed with its output dataset). Also used by ``loadtest.dataset_job_files``."""
    body = {**body, "output_name": f"out{time.monotonic_ns()}"}
    started = time.perf_counter()
    reply = httpx.post(f"{url}/api/v1/servables/{dataset}/apply", json=body, headers=headers, timeout=60)
    reply.raise_for_status()
    task_id = reply.json()["task_id"]
    done_s = 0.0
    while True:
        task: dict[str, Any] = httpx.get(f"{url}/api/v1/tasks/{task_id}", headers=headers, timeout=60).json()
        progress = task["progress"]
        if not done_s and progress["total"] and progress["done"] == progress["total"]:
            done_s = time.perf_counter() - started
        if task["state"] in ("completed", "failed"):
            break
        time.sleep(0.02)
    total_s = time.perf_counter() - started
    return task, round(done_s or total_s, 3), round(total_s, 3)


def _job(url: str, headers: dict[str, str], dataset: str, servable: str, batch_rows: int) -> dict[str, float]:
    body = {"servable": servable, "batch_rows": batch_rows}
    task, rows_done_s, completed_s = timed_job(url, headers, dataset, body)
    if task["state"] != "completed":
        raise RuntimeError(f"job failed: {task.get('error')}")
    return {"rows_done_s": rows_done_s, "completed_s": completed_s}


def _one_batch(url: str, headers: dict[str, str], servable: str, data: list[list[float]]) -> float:
    owner_name, _, version = servable.partition("@")
    path = f"{url}/api/v1/servables/{owner_name}/versions/{version}/run"
    body = {"inputs": data, "memoize": False}
    started = time.perf_counter()
    reply = httpx.post(path, json=body, headers=headers, timeout=300)
    elapsed = time.perf_counter() - started
    if reply.status_code != 200 or reply.json()["state"] != "completed":
        raise RuntimeError(f"run failed: {reply.text[:300]}")
    return round(elapsed, 3)


def measure(rows: int, batch_rows: int) -> dict[str, Any]:
    with embedded_stack(workers=1) as stack, tempfile.TemporaryDirectory() as tmp:
        client = DLHubClient(stack.url, stack.token)
        dataset, servable, data = _publish(client, Path(tmp), rows)
        headers = {"Authorization": f"Bearer {stack.token}"}
        _one_batch(stack.url, headers, servable, data[:100])  # warm the servable's lane
        job = _job(stack.url, headers, dataset, servable, batch_rows)
        batch_s = _one_batch(stack.url, headers, servable, data)
    return {
        **job,
        "job_rows_per_s": round(rows / job["rows_done_s"]),
        "job_rows_per_s_incl_output_dataset": round(rows / job["completed_s"]),
        "one_run_batch_s": batch_s,
        "one_run_batch_rows_per_s": round(rows / batch_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = [measure(args.rows, args.batch_rows) for _ in range(args.repeats)]
    median = {key: statistics.median(r[key] for r in repeats) for key in repeats[0]}
    result = {
        "benchmark": "dataset job vs one /run batch",
        "rows": args.rows,
        "batch_rows": args.batch_rows,
        "repeats": repeats,
        "median": median,
    }
    path = write_results("dataset_job", result)
    print(json.dumps(median, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
