"""A dataset job over files vs. the same files passed as blob inputs of one ``/run`` (issue 15, item 5).

    python -m loadtest.dataset_job_files [--files 200] [--batch-files 16] [--repeats 3]

Each repeat starts a fresh stack (`dlhub up`, one worker), publishes a dataset of ``--files`` small text
files (a number each) and two python-function servables reading them (no sleep: the registry, broker, worker
and file-fetch overheads are what is measured): ``one`` takes a ``file``, ``many`` a ``list`` of ``file``.
It then times, polling every 20 ms:
- the job over files in batches (``many``, ``--batch-files`` per call), until every file was done and until
  the task completed (the output dataset published and built);
- the job one file per call (``one``), the same two times;
- the baseline, measured in the same run: the same files uploaded beforehand as blobs (not timed) and sent
  as one synchronous ``POST .../run`` of ``many`` (the worker fetches each through a signed blob URL).
Files per second are reported per repeat and as medians.
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
from loadtest.dataset_job import timed_job

FUNCTIONS = """
def one(path):
    with open(path) as fh:
        return 2 * int(fh.read())


def many(paths):
    return [one(p) for p in paths]
"""
FILE = {"type": "file"}


def _publish(client: DLHubClient, folder: Path, files: int) -> tuple[str, dict[str, str], list[Path]]:
    (folder / "items").mkdir()
    paths = []
    for i in range(files):
        path = folder / "items" / f"f{i:04d}.txt"
        path.write_text(f"{i}\n")
        paths.append(path)
    (folder / "benchfns.py").write_text(FUNCTIONS)
    names = [str(p.relative_to(folder)) for p in paths]
    dataset = client.publish_dataset("files", names, title="Files", authors=["Bench, A"], base_dir=folder)
    refs = {}
    for function, input_type in (("one", FILE), ("many", {"type": "list", "item_type": FILE})):
        document = python_function_document(
            name=function, module="benchfns", function=function, files=["benchfns.py"], title=function,
            authors=["Bench, A"], input_type=input_type,
        )  # fmt: skip
        reply = client.publish(document, base_dir=folder)
        refs[function] = f"bench/{reply['name']}@{reply['version']}"
    return f"bench/{dataset['name']}", refs, paths


def _job(url: str, headers: dict[str, str], dataset: str, body: dict[str, Any]) -> tuple[float, float]:
    task, done_s, total_s = timed_job(url, headers, dataset, {**body, "over": "files"})
    if task["state"] != "completed" or task["output"]["failed"]:
        raise RuntimeError(f"job failed: {task.get('error') or task['output']['failures'][:3]}")
    return done_s, total_s


def _blob_run(url: str, headers: dict[str, str], servable: str, blobs: list[str]) -> float:
    owner_name, _, version = servable.partition("@")
    body = {"inputs": [{"blob": b} for b in blobs], "memoize": False, "timeout_s": 300}
    started = time.perf_counter()
    reply = httpx.post(
        f"{url}/api/v1/servables/{owner_name}/versions/{version}/run", json=body, headers=headers, timeout=300
    )
    elapsed = time.perf_counter() - started
    if reply.status_code != 200 or reply.json()["state"] != "completed":
        raise RuntimeError(f"run failed: {reply.text[:300]}")
    return round(elapsed, 3)


def measure(files: int, batch_files: int) -> dict[str, Any]:
    with embedded_stack(workers=1) as stack, tempfile.TemporaryDirectory() as tmp:
        client = DLHubClient(stack.url, stack.token)
        dataset, refs, paths = _publish(client, Path(tmp), files)
        headers = {"Authorization": f"Bearer {stack.token}"}
        blobs = [client.upload_blob(p) for p in paths]
        _blob_run(stack.url, headers, refs["many"], blobs[:4])  # warm the lane (``one`` warms in its job)
        batch = _job(stack.url, headers, dataset, {"servable": refs["many"], "batch_files": batch_files})
        single = _job(stack.url, headers, dataset, {"servable": refs["one"]})
        baseline_s = _blob_run(stack.url, headers, refs["many"], blobs)
    return {
        "batch_job_done_s": batch[0],
        "batch_job_completed_s": batch[1],
        "batch_job_files_per_s": round(files / batch[0]),
        "single_job_done_s": single[0],
        "single_job_completed_s": single[1],
        "single_job_files_per_s": round(files / single[0]),
        "blob_run_s": baseline_s,
        "blob_run_files_per_s": round(files / baseline_s),
        "batch_job_vs_blob_run": round(batch[0] / baseline_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--batch-files", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = [measure(args.files, args.batch_files) for _ in range(args.repeats)]
    median = {key: statistics.median(r[key] for r in repeats) for key in repeats[0]}
    result = {
        "benchmark": "dataset job over files vs one /run of blob inputs",
        "machine": "2 cores shared with other test runs; its speed drifts",
        "files": args.files,
        "batch_files": args.batch_files,
        "repeats": repeats,
        "median": median,
    }
    path = write_results("dataset_job_files", result)
    print(json.dumps(median, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
