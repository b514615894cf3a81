"""Search latency at 10,000 servables, measured at the ``SearchEngine`` interface of each backend.

``python -m loadtest.search_latency [--docs 10000] [--queries 500] [--runs 3] [--es-url URL]``

Indexes a deterministic synthetic corpus (seeded titles, descriptions, authors, domains, dates) into the
embedded SQLite engine and, when ``--es-url`` or ``DLHUB_TEST_ELASTICSEARCH_URL`` is given, into
Elasticsearch; then, after a warm-up, times ``--queries`` free-text, facet, date-range and argument-type
(``input_shape``, optionally with free text and an item type) queries per run.
Each figure is the median over ``--runs`` runs of the per-run p50/p99. Results go to
loadtest/results/search_latency.json and a table is printed. Targets: embedded p50 <= 5 ms, ES p50 <= 15 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from dlhub.common.config import SearchConfig
from dlhub.common.payloads import MethodTypes, SearchDocument, SearchQuery, TypeSummary
from dlhub.search.engine import SearchEngine
from dlhub.search.es_engine import ElasticsearchSearchEngine
from dlhub.search.sqlite_engine import SqliteSearchEngine
from loadtest.common import summary_ms, write_results

SEED: Final = 20240531
TARGET_P50_MS: Final = {"sqlite": 5.0, "elasticsearch": 15.0}
WARMUP: Final = 50

SUBJECTS = (
    "iris", "perovskite", "protein", "galaxy", "catalyst", "polymer", "battery", "genome", "cell", "climate",
    "turbulence", "alloy", "zeolite", "neuron", "enzyme", "semiconductor", "exoplanet", "aerosol", "crystal",
    "molecule", "tumor", "seismic", "ocean", "plasma", "graphene",
)  # fmt: skip
TASKS = (
    "classification", "regression", "segmentation", "property prediction", "band gap estimation",
    "structure prediction", "anomaly detection", "image denoising", "yield forecasting", "phase mapping",
)  # fmt: skip
METHODS = (
    "random forest", "graph neural network", "convolutional network", "transformer", "gradient boosting",
    "support vector machine", "gaussian process", "autoencoder", "kernel ridge regression", "MLP",
)  # fmt: skip
DOMAINS = (
    "materials science", "biology", "chemistry", "physics", "astronomy", "climate", "medicine", "geoscience",
)  # fmt: skip
MODEL_TYPES = (
    "RandomForestClassifier", "GCN", "CNN", "Transformer", "XGBoost", "SVC", "GaussianProcess", "MLP",
)  # fmt: skip
SERVABLE_TYPES = ("Scikit-learn estimator", "Keras Model", "PyTorch Model", "Python static method")
GIVEN = ("Ana", "Ben", "Chen", "Dara", "Elif", "Femi", "Guo", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mira")
FAMILY = ("Müller", "Smith", "Wang", "Garcia", "Kumar", "Ito", "Okafor", "Novak", "Silva", "Kim", "Rossi")
OWNERS = tuple(f"user{i:03d}" for i in range(200))
ITEM_TYPES: Final = ("float", "float", "integer", "number", "string")
FEATURES: Final = (2, 3, 4, 4, 8, 16, 64, 224)


def method_types(rng: random.Random) -> list[MethodTypes]:
    """A declared input and output: mostly ndarrays of rows (some fixed-size), else lists or "any"."""
    kind = rng.random()
    if kind < 0.6:
        rows = None if rng.random() < 0.8 else rng.choice((1, 10, 32))
        dims: list[int | None] = [rows, *rng.sample(FEATURES, rng.choice((1, 1, 2, 3)))]
        accepts = TypeSummary(type="ndarray", item_types=[rng.choice(ITEM_TYPES)], shape=dims)
    elif kind < 0.8:
        accepts = TypeSummary(type="list", item_types=[rng.choice(ITEM_TYPES)])
    else:
        accepts = TypeSummary(type="python object")
    returns = TypeSummary(type="ndarray", item_types=["float"], shape=[None, rng.choice(FEATURES)])
    return [MethodTypes(method="run", input=accepts, output=returns)]


START_S: Final = 1_500_000_000.0
SPAN_S: Final = 250_000_000.0


def corpus(n: int, seed: int = SEED) -> list[SearchDocument]:
    """``n`` realistic-looking servables; the same ``seed`` always gives the same documents."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        subject, task, method = rng.choice(SUBJECTS), rng.choice(TASKS), rng.choice(METHODS)
        owner = rng.choice(OWNERS)
        domains = rng.sample(DOMAINS, rng.choice((1, 1, 2, 3)))
        authors = [f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}" for _ in range(rng.randint(1, 4))]
        docs.append(
            SearchDocument(
                id=f"{owner}/{subject}_{task.replace(' ', '_')}_{i}",
                owner=owner,
                name=f"{subject}_{task.replace(' ', '_')}_{i}",
                version=rng.randint(1, 5),
                title=f"{method.capitalize()} for {subject} {task}",
                description=(
                    f"A {method} trained on {rng.randint(100, 90000)} {subject} samples for {task}. "
                    f"Reported accuracy {rng.uniform(0.6, 0.99):.2f}; see the {rng.choice(DOMAINS)} paper."
                ),
                authors=authors,
                domains=domains,
                keywords=[*rng.sample(SUBJECTS, 2), task],
                model_type=rng.choice(MODEL_TYPES),
                servable_type=rng.choice(SERVABLE_TYPES),
                visible_to=["public"] if rng.random() < 0.9 else [f"user:{rng.choice(OWNERS)}"],
                publication_date_s=round(START_S + rng.random() * SPAN_S, 3),
                methods=method_types(random.Random(seed * 31 + i)),  # own stream: other fields unchanged
            )
        )
    return docs


def query_mix(rng: random.Random) -> dict[str, Callable[[], SearchQuery]]:
    """The three measured query kinds, each drawing fresh random parameters per call."""

    def identities() -> list[str]:
        return ["public", f"user:{rng.choice(OWNERS)}"]

    def free_text() -> SearchQuery:
        words = [rng.choice(SUBJECTS), rng.choice(TASKS).split()[0]]
        q = " ".join(words[: rng.randint(1, 2)])
        if rng.random() < 0.3:
            q = q[: max(3, len(q) // 2)]  # a prefix, as typed
        return SearchQuery(q=q, identities=identities())

    def facets() -> SearchQuery:
        return SearchQuery(
            q=rng.choice(("", "", rng.choice(SUBJECTS))),
            facets=["domain", "model_type", "servable_type", "owner"],
            identities=identities(),
        )

    def date_range() -> SearchQuery:
        start = START_S + rng.random() * SPAN_S * 0.8
        return SearchQuery(
            published_from_s=start,
            published_to_s=start + SPAN_S * rng.uniform(0.05, 0.2),
            domain=rng.choice((None, rng.choice(DOMAINS))),
            sort="publication_date",
            identities=identities(),
        )

    def types() -> SearchQuery:
        rows = rng.choice((None, rng.randint(1, 64)))
        shape: list[int | None] = [rows, *rng.sample(FEATURES, rng.choice((1, 1, 2)))]
        return SearchQuery(
            q=rng.choice(("", "", rng.choice(SUBJECTS))),
            input_type="ndarray",
            input_item_type=rng.choice((None, rng.choice(ITEM_TYPES))),
            input_shape=shape,
            identities=identities(),
        )

    return {"free_text": free_text, "facets": facets, "range": date_range, "types": types}


async def measure(engine: SearchEngine, queries: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    mix = query_mix(rng)
    for make in mix.values():
        for _ in range(WARMUP):
            await engine.query(make())
    out: dict[str, list[float]] = {}
    for kind, make in mix.items():
        samples = []
        for _ in range(queries):
            query = make()
            started = time.perf_counter()
            await engine.query(query)
            samples.append((time.perf_counter() - started) * 1000)
        out[kind] = samples
    return out


async def bench_backend(
    backend: str, engine: SearchEngine, docs: list[SearchDocument], queries: int, runs: int
) -> dict[str, Any]:
    async with engine:
        started = time.perf_counter()
        await engine.reindex(docs)
        index_s = time.perf_counter() - started
        assert await engine.count() == len(docs)
        per_run: list[dict[str, dict[str, float]]] = []
        for run in range(runs):
            samples = await measure(engine, queries, SEED + run)
            per_run.append({kind: summary_ms(values) for kind, values in samples.items()})
        if isinstance(engine, ElasticsearchSearchEngine):
            indices = await engine._alias_indices()
            await engine.es.indices.delete(index=",".join(indices))
    kinds = per_run[0].keys()
    medians = {
        kind: {
            "p50_ms": round(statistics.median(r[kind]["p50_ms"] for r in per_run), 3),
            "p99_ms": round(statistics.median(r[kind]["p99_ms"] for r in per_run), 3),
        }
        for kind in kinds
    }
    return {
        "backend": backend,
        "documents": len(docs),
        "bulk_index_s": round(index_s, 2),
        "queries_per_kind_per_run": queries,
        "runs": runs,
        "median": medians,
        "per_run": per_run,
        "target_p50_ms": TARGET_P50_MS[backend],
        "meets_target": all(m["p50_ms"] <= TARGET_P50_MS[backend] for m in medians.values()),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'backend':<14}{'query':<11}{'p50 ms':>9}{'p99 ms':>9}{'target p50':>12}")
    for result in results:
        for kind, figures in result["median"].items():
            print(
                f"{result['backend']:<14}{kind:<11}{figures['p50_ms']:>9.2f}{figures['p99_ms']:>9.2f}"
                f"{result['target_p50_ms']:>12.1f}"
            )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    docs = corpus(args.docs)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteSearchEngine(Path(tmp) / "search.sqlite3")
        results.append(await bench_backend("sqlite", sqlite, docs, args.queries, args.runs))
    if args.es_url:
        config = SearchConfig(
            elasticsearch_url=args.es_url, elasticsearch_index_alias=f"dlhub-bench-{uuid.uuid4().hex[:8]}"
        )
        es = ElasticsearchSearchEngine(config)
        results.append(await bench_backend("elasticsearch", es, docs, args.queries, args.runs))
    print_table(results)
    return {
        "what": "SearchEngine.query latency after warm-up; medians over runs of per-run p50/p99",
        "machine_cpus": os.cpu_count(),
        "seed": SEED,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--es-url", default=os.environ.get("DLHUB_TEST_ELASTICSEARCH_URL"))
    args = parser.parse_args()
    summary = asyncio.run(main_async(args))
    print(f"wrote {write_results('search_latency', summary)}")


if __name__ == "__main__":
    main()
