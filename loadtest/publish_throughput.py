"""Publish throughput of the registry's metadata stores: SQLite (embedded) vs. MongoDB.

    python -m loadtest.publish_throughput [--publishes 1000] [--contended-publishes 200] [--concurrency 16]
        [--repeats 5] [--mongodb-url URL] [--rest] [--rest-publishes 200]

Store level: ``--concurrency`` coroutines share one open store and together perform ``--publishes``
publishes; one publish is ``create_version`` followed by ``set_version_status(ready)``, what a publish plus
its build costs the store. Two shapes: ``distinct`` (every publish is a new servable) and ``one_servable``
(``--contended-publishes`` new versions of the same servable, so all publishers contend for one version
counter). Every repeat starts from an empty store (a fresh SQLite file; a fresh MongoDB database, dropped
afterwards).

REST (``--rest``): the full embedded stack (``dlhub up``, one worker) with each store backend;
``--concurrency`` HTTP clients POST metadata-only publishes to ``/api/v1/servables`` and the rate counts
accepted (202) publishes. Builds continue in the background and are not waited for.

Reported per repeat and as the median over repeats, in publishes per second. The MongoDB URL comes from
``--mongodb-url`` or ``DLHUB_TEST_MONGODB_URL``; without one the MongoDB rows are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from dlhub.client.metadata import python_function_document
from dlhub.common.config import LoggingConfig, StoreConfig
from dlhub.common.logging import configure_logging
from dlhub.registry.store import MetadataStore
from dlhub.registry.store.mongo import MongoMetadataStore, redact_url
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from loadtest.common import embedded_stack, write_results

META: dict[str, Any] = {"dlhub": {"name": "bench", "visible_to": ["public"]}, "datacite": {"titles": []}}
SHAPES = ("distinct", "one_servable")


async def run_concurrently(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> float:
    """Run ``job(0..count-1)`` on ``concurrency`` coroutines; return the elapsed seconds."""
    next_index = 0

    async def publisher() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await job(index)

    started = time.perf_counter()
    await asyncio.gather(*[publisher() for _ in range(concurrency)])
    return time.perf_counter() - started


async def measure_store(store: MetadataStore, shape: str, publishes: int, concurrency: int) -> float:
    async def publish(index: int) -> None:
        name = f"s{index}" if shape == "distinct" else "bench"
        record = await store.create_version(owner="bench", name=name, metadata=META, published_at_ms=index)
        await store.set_version_status(
            "bench", name, record.version, status="ready", digest="sha256:x", files=("m.py",)
        )

    elapsed = await run_concurrently(publishes, concurrency, publish)
    if shape == "distinct":
        stored = len(await store.list_servables("bench"))
    else:
        stored = len(await store.list_versions("bench", "bench"))
    if stored != publishes:
        raise RuntimeError(f"expected {publishes} publishes in the store, found {stored}")
    return publishes / elapsed


async def store_run(
    backend: str, mongodb_url: str | None, shape: str, publishes: int, concurrency: int
) -> float:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="dlhub-bench-") as tmp:
            store: MetadataStore = SQLiteMetadataStore(Path(tmp) / "registry.sqlite3")
            await store.open()
            try:
                return await measure_store(store, shape, publishes, concurrency)
            finally:
                await store.close()
    assert mongodb_url is not None
    database = "dlhub_bench_" + uuid.uuid4().hex[:12]
    store = MongoMetadataStore(
        StoreConfig(backend="mongodb", mongodb_url=mongodb_url, mongodb_database=database)
    )
    await store.open()
    try:
        return await measure_store(store, shape, publishes, concurrency)
    finally:
        await store.close()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        await client.drop_database(database)
        await client.close()


def bench_document(index: int) -> dict[str, Any]:
    return python_function_document(
        name=f"bench{index}",
        module="bench_noop",
        function="noop",
        title=f"bench {index}",
        authors=["Bench, Mark"],
    )


async def rest_rate(url: str, token: str, publishes: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def publish(index: int) -> None:
            form = aiohttp.FormData()
            form.add_field("metadata", json.dumps(bench_document(index)), content_type="application/json")
            async with session.post(f"{url}/api/v1/servables", data=form) as response:
                if response.status != 202:
                    raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:300]}")
                await response.read()

        await run_concurrently(min(20, publishes), concurrency, lambda i: publish(publishes + i))  # warm-up
        elapsed = await run_concurrently(publishes, concurrency, publish)
    return publishes / elapsed


def rest_run(backend: str, mongodb_url: str | None, publishes: int, concurrency: int) -> float:
    env: dict[str, str] = {"DLHUB_STORE__BACKEND": backend}
    database = ""
    if backend == "mongodb":
        assert mongodb_url is not None
        database = "dlhub_bench_" + uuid.uuid4().hex[:12]
        env.update({"DLHUB_STORE__MONGODB_URL": mongodb_url, "DLHUB_STORE__MONGODB_DATABASE": database})
    try:
        with embedded_stack(workers=1, extra_env=env) as stack:
            return asyncio.run(rest_rate(stack.url, stack.token, publishes, concurrency))
    finally:
        if database:

            async def drop() -> None:
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
                await client.drop_database(database)
                await client.close()

            asyncio.run(drop())


def summarise(runs: list[float]) -> dict[str, Any]:
    return {
        "publishes_per_s_median": round(statistics.median(runs), 1),
        "publishes_per_s_min": round(min(runs), 1),
        "publishes_per_s_max": round(max(runs), 1),
        "runs": [round(r, 1) for r in runs],
    }


async def server_description(url: str) -> str:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        info = await client.admin.command("buildInfo")
    finally:
        await client.close()
    if "ferretdbVersion" in info:
        return f"FerretDB {info['ferretdbVersion']} (MongoDB wire version {info.get('version')})"
    return f"MongoDB {info.get('version')}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishes", type=int, default=1000, help="publishes per store-level run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent publishers")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mongodb-url", default=os.environ.get("DLHUB_TEST_MONGODB_URL"))
    parser.add_argument("--rest", action="store_true", help="also measure through the REST API of dlhub up")
    parser.add_argument("--contended-publishes", type=int, default=200, help="publishes per one_servable run")
    parser.add_argument("--rest-publishes", type=int, default=200, help="publishes per REST run")
    args = parser.parse_args()
    configure_logging(LoggingConfig(level="warning"), service="loadtest")

    backends = ["sqlite"] + (["mongodb"] if args.mongodb_url else [])
    results: dict[str, Any] = {
        "publishes": args.publishes,
        "contended_publishes": args.contended_publishes,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "mongodb_url": redact_url(args.mongodb_url) if args.mongodb_url else None,
        "mongodb_server": asyncio.run(server_description(args.mongodb_url)) if args.mongodb_url else None,
        "store": {},
        "rest": {},
    }
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    for backend in backends:
        for shape in SHAPES:
            count = args.publishes if shape == "distinct" else args.contended_publishes
            runs = [
                asyncio.run(store_run(backend, args.mongodb_url, shape, count, args.concurrency))
                for _ in range(args.repeats)
            ]
            results["store"].setdefault(backend, {})[shape] = summarise(runs)
            rows.append(("store", backend, shape, results["store"][backend][shape]))
    if args.rest:
        results["rest_publishes"] = args.rest_publishes
        for backend in backends:
            runs = [
                rest_run(backend, args.mongodb_url, args.rest_publishes, args.concurrency)
                for _ in range(args.repeats)
            ]
            results["rest"][backend] = summarise(runs)
            rows.append(("rest", backend, "distinct", results["rest"][backend]))
    path = write_results("publish_throughput", results)

    print(f"publish throughput, {args.concurrency} concurrent publishers, median of {args.repeats} runs")
    if results["mongodb_server"]:
        print(f"mongodb: {results['mongodb_server']} at {results['mongodb_url']}")
    print(f"{'level':<6} {'backend':<8} {'shape':<13} {'median/s':>9} {'min/s':>8} {'max/s':>8}")
    for level, backend, shape, summary in rows:
        print(
            f"{level:<6} {backend:<8} {shape:<13} {summary['publishes_per_s_median']:>9} "
            f"{summary['publishes_per_s_min']:>8} {summary['publishes_per_s_max']:>8}"
        )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
