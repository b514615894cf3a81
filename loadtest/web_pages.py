"""Render time of the web catalog's pages in headless chromium, on the embedded stack with 10,000 servables.

``python -m loadtest.web_pages [--servables 10000] [--repeats 15]``

Starts ``dlhub up`` (one worker), publishes one real servable through the SDK (the model page, try it and
the task page use it) and runs it asynchronously once (the task page's task), then fills the registry's
metadata store directly with ``--servables`` ready versions from the deterministic corpus of
loadtest.search_latency (titles, abstracts, authors, domains, model and servable types, 200 owners), and
rebuilds the search index from the store (``POST /search/reindex``, as an administrator). Writing the store
directly is what makes seeding take seconds rather than the ~80 s of 10,000 REST publishes; every page then
reads them through ``/api/v1`` like any client.

Each page is loaded ``--repeats`` times (after two warm-up loads) in a fresh navigation; its render time is
navigation start to the app's ``dlhub-ready`` performance mark (set when the view has rendered its data,
``body[data-ready]``). Two cache states: ``repeat`` (the browser revalidates the static files by ETag and
gets 304s, what a returning visitor sees) and ``first`` (the browser cache disabled through the DevTools
protocol: every file is fetched). Reported: the median and the maximum in ms. Target: median < 300 ms.
Results go to loadtest/results/web_pages.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

import httpx

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from dlhub.registry.store.sqlite import SQLiteMetadataStore
from loadtest.common import embedded_stack, write_results
from loadtest.search_latency import corpus

TARGET_MS: Final = 300.0
OWNER: Final = "bench"
MODULE_SOURCE: Final = "def band_gap(features):\n    return round(sum(features) / len(features), 3)\n"


def publish_dataset(client: DLHubClient, base: Path) -> str:
    """The model's training data (the dataset page's subject): a 200-row CSV, previewed, and a README."""
    folder = base / "dataset"
    folder.mkdir()
    rows = ["formula,n_atoms,band_gap_eV"] + [
        f"X{i}O{i % 7 + 1},{i % 40 + 2},{i % 60 / 10}" for i in range(200)
    ]
    (folder / "gaps.csv").write_text("\n".join(rows) + "\n")
    (folder / "README.txt").write_text("Band gaps, one row per structure.\n")
    reply = client.publish_dataset(
        "band_gaps_pbe", ["gaps.csv", "README.txt"], base_dir=folder, title="Band gaps (PBE)",
        authors=["Okafor, Femi"], description="PBE band gaps of 200 crystals.",
    )  # fmt: skip
    assert reply["status"] == "ready"
    return f"{OWNER}/band_gaps_pbe"


def publish_real(url: str, token: str, base: Path) -> tuple[str, str, str]:
    """One runnable servable (the model page's subject), a completed async task of it, and its training
    dataset."""
    client = DLHubClient(url, token)
    dataset = publish_dataset(client, base)
    pkg = base / "real"
    pkg.mkdir()
    (pkg / "gaps.py").write_text(MODULE_SOURCE)
    doc = python_function_document(
        name="band_gap_mlp", module="gaps", function="band_gap", files=["gaps.py"],
        title="Band gap regression from composition features", authors=["Okafor, Femi", "Wang, Chen"],
        description="Estimates the band gap (eV) of an inorganic crystal from a composition feature vector.",
        domains=["materials science"], input_type={"type": "list", "item_type": {"type": "number"}},
        output_type={"type": "number"}, training_data=[dataset],
    )  # fmt: skip
    doc["dlhub"]["test_vectors"] = [{"inputs": [1.0, 2.0, 3.5], "expected": 2.167}]
    assert client.publish(doc, base_dir=pkg)["status"] == "ready"
    ref = f"{OWNER}/band_gap_mlp"
    answer = httpx.post(
        f"{url}/api/v1/servables/{ref}/run",
        json={"inputs": [1.0, 2.0], "asynchronous": True},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    return ref, str(answer["task_id"]), dataset


def seeded_metadata(template: dict[str, Any], doc: Any) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(json.dumps(template))
    meta["datacite"]["titles"] = [{"title": doc.title}]
    meta["datacite"]["descriptions"] = [{"description": doc.description, "descriptionType": "Abstract"}]
    meta["datacite"]["creators"] = [{"creatorName": a, "name": a} for a in doc.authors]
    meta["dlhub"].update(
        name=doc.name, owner=doc.owner, domains=doc.domains, visible_to=doc.visible_to,
        shorthand_name=f"{doc.owner}/{doc.name}", id=f"{doc.owner}/{doc.name}",
    )  # fmt: skip
    meta["servable"]["model_type"] = doc.model_type
    meta["servable"]["type"] = doc.servable_type
    return meta


async def seed_store(store_path: Path, template: dict[str, Any], count: int) -> None:
    store = SQLiteMetadataStore(store_path)
    await store.open()
    try:
        for doc in corpus(count):
            await store.create_version(
                owner=doc.owner, name=doc.name, metadata=seeded_metadata(template, doc),
                published_at_ms=int(doc.publication_date_s * 1000), status="ready",
            )  # fmt: skip
    finally:
        await store.close()


def measure(driver: Any, url: str, repeats: int) -> list[float]:
    from tests.support.browser import wait_ready

    times = []
    for index in range(repeats + 2):
        driver.get("about:blank")
        driver.get(url)
        wait_ready(driver)
        ready = driver.execute_script(
            "const m = performance.getEntriesByName('dlhub-ready'); return m.length ? m[0].startTime : null;"
        )
        if index >= 2:  # two warm-up loads
            times.append(float(ready))
    return times


def pages(url: str, real: str, task_id: str, dataset: str) -> dict[str, str]:
    seeded = next(doc for doc in corpus(50) if doc.visible_to == ["public"])
    return {
        "catalog": f"{url}/",
        "catalog_search": f"{url}/?q=perovskite",
        "catalog_facets_page3": f"{url}/?domain=chemistry&model_type=CNN&sort=name&page=3",
        "model_real": f"{url}/m/{real}",
        "model_seeded": f"{url}/m/{seeded.owner}/{seeded.name}",
        "dataset": f"{url}/m/{dataset}",
        "task": f"{url}/tasks/{task_id}",
        "publish": f"{url}/publish",
    }


def run(count: int, repeats: int) -> dict[str, Any]:
    from tests.support.browser import chromium

    env = {"DLHUB_REGISTRY__ADMIN_USERS": json.dumps([OWNER])}
    with embedded_stack(workers=1, extra_env=env) as stack:
        real, task_id, dataset = publish_real(stack.url, stack.token, stack.data_dir.parent)
        headers = {"Authorization": f"Bearer {stack.token}"}
        template = httpx.get(f"{stack.url}/api/v1/servables/{real}", headers=headers, timeout=10).json()[
            "metadata"
        ]
        started = time.perf_counter()
        asyncio.run(seed_store(stack.data_dir / "registry.sqlite3", template, count))
        seeded_s = time.perf_counter() - started
        reindexed = httpx.post(f"{stack.url}/api/v1/search/reindex", headers=headers, timeout=600).json()
        total = httpx.get(f"{stack.url}/api/v1/servables?limit=1", headers=headers, timeout=30).json()[
            "total"
        ]
        results: dict[str, Any] = {
            "servables_stored": count + 1, "servables_visible": total, "indexed": reindexed["documents"],
            "seed_s": round(seeded_s, 1),
            "repeats": repeats, "target_median_ms": TARGET_MS, "pages": {},
        }  # fmt: skip
        with chromium(1280, 800) as driver:
            driver.get(stack.url + "/")
            # Signed in (the publish page needs it; the others then include the caller's private models).
            driver.execute_script("sessionStorage.setItem('dlhub.token', arguments[0])", stack.token)
            for cache in ("repeat", "first"):
                driver.execute_cdp_cmd("Network.enable", {})
                driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": cache == "first"})
                for page, address in pages(stack.url, real, task_id, dataset).items():
                    times = measure(driver, address, repeats)
                    results["pages"].setdefault(page, {"url": address.removeprefix(stack.url)})[cache] = {
                        "median_ms": round(statistics.median(times), 1),
                        "max_ms": round(max(times), 1),
                    }
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servables", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    results = run(args.servables, args.repeats)
    results["command"] = "python -m loadtest.web_pages " + " ".join(sys.argv[1:])
    path = write_results("web_pages", results)
    print(
        f"{results['servables_stored']} servables ({results['servables_visible']} visible to the caller, "
        f"{results['indexed']} indexed), seeded in {results['seed_s']} s"
    )
    print(f"{'page':24} {'repeat p50':>11} {'max':>8} {'first p50':>10} {'max':>8}")
    worst = 0.0
    for page, figures in results["pages"].items():
        repeat, first = figures["repeat"], figures["first"]
        worst = max(worst, repeat["median_ms"], first["median_ms"])
        row = f"{repeat['median_ms']:>11} {repeat['max_ms']:>8} {first['median_ms']:>10} {first['max_ms']:>8}"
        print(f"{page:24} {row}")
    print(f"worst median {worst} ms (target < {TARGET_MS} ms); written to {path}")


if __name__ == "__main__":
    main()
