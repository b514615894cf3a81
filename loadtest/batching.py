"""Batching through REST (issue 5, item 2): client batches and adaptive server-side batching.

    python -m loadtest.batching [--rows 10000] [--batch-repeats 20] [--clients 32] [--duration-s 10]

One scikit-learn servable: a RandomForestClassifier (50 trees) trained on iris, input ndarray ``[null, 4]``
(so the worker batches it by default). Every run body has ``"memoize": false`` so the result cache never
answers.

1. Client batch: one request with ``--rows`` iris rows (jittered) -> one ``predict`` call at the executor.
   Client round trip (prebuilt body, keep-alive) vs ``predict`` called in-process on the same rows (as an
   ndarray, and from the same nested lists), with the body as msgpack (the array as a raw buffer: what
   ``DLHubClient.run`` sends for NumPy inputs; the target applies to it) and as JSON nested lists.
   Target: REST / in-process <= 1.3.
2. Adaptive batching: ``--clients`` concurrent clients (asyncio + aiohttp, one keep-alive connection each)
   each sending single-row requests for ``--duration-s`` seconds, on a stack with batching on (the default)
   and on one started with ``DLHUB_WORKER__BATCH_ENABLED=false``. Requests/s, latency, and the worker's
   inference / queue timings. Target: >= 1,000 requests/s with batching on.

Results go to ``loadtest/results/batching.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from dlhub.client import DLHubClient
from dlhub.client.metadata import sklearn_document
from dlhub.common.codec import decode_body, encode_body
from loadtest.common import KeepAliveClient, embedded_stack, summary_ms, write_results

MSGPACK = "application/msgpack"

TREES = 50
TARGET_RATIO = 1.3
TARGET_RPS = 1000.0


def train() -> Any:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    iris = load_iris()
    return RandomForestClassifier(n_estimators=TREES, random_state=0).fit(iris.data, iris.target)


def rows_for(n: int) -> np.ndarray:
    from sklearn.datasets import load_iris

    data = load_iris().data
    reps = -(-n // len(data))
    return np.tile(data, (reps, 1))[:n] + np.random.default_rng(0).normal(0, 0.05, (n, 4))


def publish_forest(url: str, token: str, model: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "model.pkl").write_bytes(pickle.dumps(model))
        doc = sklearn_document(
            name="iris_forest", model_path="model.pkl", title="Iris random forest", authors=["Bench, Mark"],
            n_input_columns=4, method="predict", model_type="RandomForestClassifier",
        )  # fmt: skip
        with DLHubClient(url, token) as client:
            reply = client.publish(doc, base_dir=tmp)
    return str(reply["shorthand_name"])


def _batch_body(rows: np.ndarray, wire: str) -> tuple[bytes, dict[str, str]]:
    if wire == "msgpack":  # what DLHubClient.run sends for NumPy inputs
        body = encode_body({"inputs": rows, "memoize": False})
        return body, {"Content-Type": MSGPACK, "Accept": MSGPACK}
    return json.dumps({"inputs": rows.tolist(), "memoize": False}).encode(), {}


def _decode_record(payload: bytes, wire: str) -> dict[str, Any]:
    if wire == "msgpack":
        return decode_body(payload, dict[str, Any])
    record: dict[str, Any] = json.loads(payload)
    return record


def measure_client_batch(
    url: str, token: str, servable: str, model: Any, n: int, repeats: int, wire: str = "json"
) -> dict[str, Any]:
    rows = rows_for(n)
    as_lists = rows.tolist()
    expected = model.predict(rows)
    body, headers = _batch_body(rows, wire)
    client = KeepAliveClient(url, token, headers=headers)
    path = f"/api/v1/servables/{servable}/run"
    round_trip, request, inference, invocation = [], [], [], []
    try:
        for i in range(repeats + 2):
            started = time.perf_counter()
            status, payload = client.post(path, body)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
            record = _decode_record(payload, wire)
            if i < 2:  # warm-up: loads the model
                if not np.array_equal(np.asarray(record["output"]), expected):
                    raise RuntimeError("REST output differs from in-process predict")
                continue
            round_trip.append(elapsed_ms)
            request.append(record["timings"]["request_ms"])
            inference.append(record["timings"]["inference_ms"])
            invocation.append(record["timings"]["invocation_ms"])
    finally:
        client.close()
    in_process, from_lists = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(rows)
        in_process.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        model.predict(np.asarray(as_lists))
        from_lists.append((time.perf_counter() - started) * 1000)
    rest = statistics.median(round_trip)
    overhead = [trip - model_ms for trip, model_ms in zip(round_trip, inference, strict=True)]
    return {
        "rows": n,
        "wire": wire,
        "request_body_bytes": len(body),
        "client_round_trip": summary_ms(round_trip),
        "request_time": summary_ms(request),
        "invocation_time": summary_ms(invocation),
        "inference_time": summary_ms(inference),
        "overhead_round_trip_minus_inference": summary_ms(overhead),
        "in_process_predict": summary_ms(in_process),
        "in_process_predict_from_lists": summary_ms(from_lists),
        "ratio_round_trip_to_in_process": round(rest / statistics.median(in_process), 3),
        "ratio_round_trip_to_in_process_from_lists": round(rest / statistics.median(from_lists), 3),
        "ratio_request_time_to_in_process": round(
            statistics.median(request) / statistics.median(in_process), 3
        ),
    }


async def _concurrent(
    url: str,
    token: str,
    servable: str,
    expected: dict[int, int],
    rows: np.ndarray,
    clients: int,
    duration_s: float,
) -> dict[str, Any]:
    path = f"{url}/api/v1/servables/{servable}/run"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [json.dumps({"inputs": [row], "memoize": False}).encode() for row in rows.tolist()]
    latencies: list[float] = []
    inference: list[float] = []
    queue: list[float] = []
    errors = 0
    measuring = False
    stop = time.perf_counter() + duration_s + 2.0  # 2 s of warm-up first

    async def client_loop(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            index = i % len(bodies)
            i += clients
            started = time.perf_counter()
            async with session.post(path, data=bodies[index], headers=headers) as response:
                payload = await response.read()
            elapsed_ms = (time.perf_counter() - started) * 1000
            record = json.loads(payload)
            if response.status != 200 or record.get("output") != [expected[index]]:
                errors += 1
                continue
            if measuring:
                latencies.append(elapsed_ms)
                inference.append(record["timings"]["inference_ms"])
                queue.append(record["timings"]["queue_ms"])

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(client_loop(session, k)) for k in range(clients)]
        await asyncio.sleep(2.0)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "duration_s": round(elapsed, 3),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "client_round_trip": summary_ms(latencies),
        "inference_time": summary_ms(inference),
        "queue_time": summary_ms(queue),
    }


def measure_concurrent(model: Any, *, batching: bool, clients: int, duration_s: float) -> dict[str, Any]:
    env = {} if batching else {"DLHUB_WORKER__BATCH_ENABLED": "false"}
    rows = rows_for(500)
    expected = {i: int(v) for i, v in enumerate(model.predict(rows))}
    with embedded_stack(extra_env=env) as stack:
        servable = publish_forest(stack.url, stack.token, model)
        result = asyncio.run(
            _concurrent(stack.url, stack.token, servable, expected, rows, clients, duration_s)
        )
    result["batching"] = batching
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model = train()
    with embedded_stack() as stack:
        servable = publish_forest(stack.url, stack.token, model)
        client_batch = {
            wire: measure_client_batch(
                stack.url, stack.token, servable, model, args.rows, args.batch_repeats, wire
            )
            for wire in ("msgpack", "json")
        }
    print(json.dumps(client_batch, indent=2))
    batch_ratio = client_batch["msgpack"]["ratio_round_trip_to_in_process"]

    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for kind in ("on", "off"):
            run = measure_concurrent(
                model, batching=kind == "on", clients=args.clients, duration_s=args.duration_s
            )
            print(json.dumps(run))
            runs[kind].append(run)
    rps = {kind: statistics.median(r["requests_per_s"] for r in rs) for kind, rs in runs.items()}
    results = {
        "benchmark": "batching through REST (client batches; adaptive worker batching)",
        "model": f"RandomForestClassifier(n_estimators={TREES}) on iris, sklearn.ScikitLearnServable",
        "client_batch": client_batch,
        "client_batch_target_ratio": TARGET_RATIO,
        "client_batch_ratio": batch_ratio,
        "client_batch_meets_target": batch_ratio <= TARGET_RATIO,
        "concurrent_single_row": runs,
        "median_requests_per_s": rps,
        "speedup_batching_on_vs_off": round(rps["on"] / rps["off"], 2),
        "target_requests_per_s": TARGET_RPS,
        "meets_target": rps["on"] >= TARGET_RPS,
    }
    path = write_results("batching", results)
    print(
        json.dumps({k: v for k, v in results.items() if k not in {"client_batch", "concurrent_single_row"}})
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
