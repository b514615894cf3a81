"""Screenshots of the web catalog's main pages for docs/ and the README.

``python -m scripts.screenshots [--out docs/images]`` (from the repository root, so that ``tests`` imports;
chromium and chromium-driver installed: scripts/test-servers start --only browser)

Starts a throwaway embedded stack, publishes a few realistic servables and a dataset through the SDK, and
saves 1280x800 PNGs of the catalog, a model card, "try it" with a result, a task page, a dataset page and the
publish page with a finished build log, using the same headless chromium set-up as the browser tests
(tests/support/browser.py).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.browser import chromium, shown, text_of, wait, wait_ready
from tests.support.stack import start_stack, stop_stack

MAX_BYTES = 200_000
SOURCE = """
def band_gap(features):
    return round(0.8 * sum(features) / len(features) + 0.35, 3)


def formation_energy(composition):
    return round(-0.12 * composition["Fe"] - 0.31 * composition["O"], 4)


def iris(measurements):
    return "setosa" if measurements[2] < 2.5 else "versicolor"


def solubility(smiles):
    return round(-0.05 * len(smiles) + 0.4, 3)
"""
ORCID = "0000-0002-1825-0097"
SERVABLES: list[dict[str, Any]] = [
    dict(
        name="band_gap_mlp", function="band_gap", title="Band gap of inorganic crystals from composition",
        authors=["Okafor, Femi", "Wang, Chen"], domains=["materials science"],
        description="A multilayer perceptron trained on 50,000 DFT band gaps (PBE) from composition "
        "features; mean absolute error 0.38 eV on a held-out set.",
        input_type={"type": "list", "item_type": {"type": "number"}, "description": "composition features"},
        output_type={"type": "number", "description": "band gap (eV)"},
        vectors=[{"inputs": [1.0, 2.0, 3.5], "expected": 2.083}], deps={"numpy": "2.1.3"},
    ),
    dict(
        name="formation_energy_gbr", function="formation_energy", title="Formation energy of iron oxides",
        authors=["Silva, Ana"], domains=["materials science", "chemistry"],
        description="Gradient-boosted regression of the formation energy per atom from the Fe and O "
        "fractions.",
        input_type={"type": "dict", "properties": {"Fe": {"type": "number"}, "O": {"type": "number"}}},
        output_type={"type": "number"}, vectors=[{"inputs": {"Fe": 0.4, "O": 0.6}, "expected": -0.234}],
    ),
    dict(
        name="iris_rf", function="iris", title="Iris species from flower measurements",
        authors=["Kim, Jun"], domains=["biology"],
        description="The classic: a random forest on Fisher's iris data.",
        input_type={"type": "list", "item_type": {"type": "number"}}, output_type={"type": "string"},
    ),
    dict(
        name="solubility_gcn", function="solubility", title="Aqueous solubility of small molecules",
        authors=["Novak, Lena", "Ito, Hana"], domains=["chemistry"],
        description="A graph convolutional network predicting log S from a SMILES string.",
        input_type={"type": "string", "description": "SMILES"}, output_type={"type": "number"},
    ),
]  # fmt: skip


def publish_dataset(client: DLHubClient, pkg: Path) -> None:
    """The band gap model's training data: a CSV (previewed on its page) and a README."""
    folder = pkg / "data"
    folder.mkdir()
    rng = random.Random(7)
    rows = ["formula,n_atoms,volume_A3,band_gap_eV"] + [
        f"{f},{rng.randint(2, 40)},{rng.uniform(20, 900):.1f},{rng.uniform(0, 6):.3f}"
        for f in ["GaAs", "Si", "ZnO", "TiO2", "GaN", "CdTe", "SiC", "MgO", "Cu2O", "InP"] * 20
    ]
    (folder / "band_gaps.csv").write_text("\n".join(rows) + "\n")
    (folder / "README.txt").write_text("PBE band gaps of 200 inorganic crystals, one row per structure.\n")
    reply = client.publish_dataset(
        "band_gaps_pbe", ["band_gaps.csv", "README.txt"], base_dir=folder,
        title="Band gaps of inorganic crystals (DFT, PBE)", authors=["Okafor, Femi", "Wang, Chen"],
        description="Composition, cell volume and the PBE band gap of 200 inorganic crystals.",
        domains=["materials science"],
    )  # fmt: skip
    assert reply["status"] == "ready", reply


def publish_all(url: str, token: str, pkg: Path) -> None:
    (pkg / "models.py").write_text(SOURCE)
    client = DLHubClient(url, token)
    publish_dataset(client, pkg)
    for spec in SERVABLES:
        doc = python_function_document(
            name=spec["name"], module="models", function=spec["function"], files=["models.py"],
            title=spec["title"], authors=spec["authors"], description=spec["description"],
            domains=spec["domains"], input_type=spec["input_type"], output_type=spec["output_type"],
            dependencies=spec.get("deps"),
            training_data=["alice/band_gaps_pbe"] if spec["name"] == "band_gap_mlp" else (),
        )  # fmt: skip
        doc["datacite"]["creators"][0]["nameIdentifiers"] = [
            {"nameIdentifier": f"https://orcid.org/{ORCID}", "nameIdentifierScheme": "ORCID"}
        ]
        doc["datacite"]["relatedIdentifiers"] = [
            {"relatedIdentifier": "10.1038/s41524-019-0221-0", "relatedIdentifierType": "DOI",
             "relationType": "IsDescribedBy"}
        ]  # fmt: skip
        doc["servable"]["model_type"] = "MLP" if "mlp" in spec["name"] else "RandomForest"
        if spec.get("vectors"):
            doc["dlhub"]["test_vectors"] = spec["vectors"]
        assert client.publish(doc, base_dir=pkg)["status"] == "ready", spec["name"]


def save(driver: WebDriver, out: Path, name: str) -> Path:
    path = out / f"web-{name}.png"
    driver.save_screenshot(str(path))
    size = path.stat().st_size
    print(f"{path} ({size // 1000} KB)")
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over the {MAX_BYTES} budget")
    return path


def scroll_to(driver: WebDriver, selector: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", selector)


def shoot(url: str, token: str, pkg: Path, out: Path) -> None:
    with chromium(1280, 800) as driver:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(url + "/")
        driver.execute_script("sessionStorage.setItem('dlhub.token', arguments[0])", token)
        driver.get(url + "/?q=&sort=name")
        wait_ready(driver)
        wait(driver).until(lambda d: text_of(d, "#result-count") == "5 results")
        save(driver, out, "catalog")

        driver.get(url + "/m/alice/band_gap_mlp")
        wait_ready(driver)
        save(driver, out, "model")

        field = shown(driver, "#try-it textarea")
        field.clear()
        field.send_keys("[1.2, 2.5, 3.1, 0.7]")
        driver.find_element(By.ID, "run-button").click()
        wait(driver).until(
            lambda d: d.find_element(By.ID, "run-state").get_attribute("data-state") == "completed"
        )
        scroll_to(driver, "#try-it-slot")
        save(driver, out, "try-it")

        field.clear()
        field.send_keys("[0.4, 1.9, 2.2]")  # not the memoized inputs: a real asynchronous run
        driver.find_element(By.ID, "run-async").click()
        driver.find_element(By.ID, "run-button").click()
        wait(driver).until(lambda d: "/tasks/" in d.current_url)
        wait(driver).until(
            lambda d: d.find_element(By.ID, "task-state").get_attribute("data-state") == "completed"
        )
        save(driver, out, "task")

        driver.get(url + "/m/alice/band_gaps_pbe")
        wait_ready(driver)
        save(driver, out, "dataset")

        publish_page(driver, url, pkg)
        save(driver, out, "publish")


def publish_page(driver: WebDriver, url: str, pkg: Path) -> None:
    doc = python_function_document(
        name="solubility_gcn", module="models", function="solubility", files=["models.py"],
        title="Aqueous solubility of small molecules", authors=["Novak, Lena"],
        input_type={"type": "string"}, output_type={"type": "number"},
    )  # fmt: skip
    doc["dlhub"]["test_vectors"] = [{"inputs": "CCO", "expected": 0.25}]
    (pkg / "dlhub.json").write_text(json.dumps(doc))
    driver.get(url + "/publish")
    wait_ready(driver)
    shown(driver, "#pub-metadata").send_keys(str(pkg / "dlhub.json"))
    wait(driver).until(lambda d: "models.py" in text_of(d, "#pub-summary"))
    driver.find_element(By.ID, "pub-files").send_keys(str(pkg / "models.py"))
    driver.find_element(By.ID, "pub-submit").click()
    wait(driver, 120).until(
        lambda d: d.find_element(By.ID, "build-state").get_attribute("data-state") == "ready"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlhub-shots-") as tmp:
        base = Path(tmp)
        process, info = start_stack(base, workers=1)
        try:
            pkg = base / "pkg"
            pkg.mkdir()
            publish_all(info["url"], info["alice"], pkg)
            indexed = httpx.get(f"{info['url']}/api/v1/search", timeout=10).json()["total"]
            print(f"{indexed} servables indexed")
            shoot(info["url"], info["alice"], pkg, args.out)
        finally:
            stop_stack(process)


if __name__ == "__main__":
    main()
