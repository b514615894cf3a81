"""Datasets and test-vector verifications in the web catalog, in headless chromium (tests/support/browser.py).

One stack and one browser for the module: a public dataset (a CSV whose header and cells carry markup, a
binary file), a private one, a servable trained on the public dataset with test vectors. The browser lists
the files and previews, downloads a file (chromium's download directory, the bytes compared), keeps the
private dataset hidden when signed out, narrows the catalog by kind, and shows the latest verification.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.e2e_servables import FUNCTIONS
from tests.support.polling import wait_until
from tests.support.servers import missing_test_server
from tests.support.stack import start_stack, stop_stack

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import (
    BrowserUnavailable,
    chromium,
    hits,
    open_page,
    shown,
    sign_in,
    text_of,
    wait,
    wait_ready,
)

XSS_COLUMN = '<img src=x onerror="window.__xss = 1">species'
XSS_CELL = "<script>window.__xss = 2</script><b>bold?</b>"
BINARY = bytes(range(256)) * 40 + b"\x00end"
RECENT = r"(just now|\d+ min ago)"


@dataclass
class Site:
    url: str
    token: str
    tag: str
    dataset: str  # public: data/iris.csv (hostile header and cell), blobs/weights.bin, README.txt
    private: str  # visible to alice only
    model: str  # trained on the dataset, three test vectors
    folder: Path
    downloads: Path


def write_files(folder: Path) -> None:
    (folder / "data").mkdir(parents=True)
    quoted = XSS_COLUMN.replace('"', '""')
    rows = [f'id,length_cm,"{quoted}"']
    rows += [f'{i},{1.5 + i / 10},"{XSS_CELL if i == 1 else f"iris {i}"}"' for i in range(12)]
    (folder / "data" / "iris.csv").write_text("\n".join(rows) + "\n")
    (folder / "blobs").mkdir()
    (folder / "blobs" / "weights.bin").write_bytes(BINARY)
    (folder / "README.txt").write_text("Iris measurements.\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("webdata")
    process, info = start_stack(base, workers=1)
    try:
        folder = base / "dataset"
        write_files(folder)
        alice = DLHubClient(info["url"], info["alice"])
        tag = uuid.uuid4().hex[:8]
        files = ["data/iris.csv", "blobs/weights.bin", "README.txt"]
        name = f"iris_{tag}"
        common: dict[str, Any] = {
            "base_dir": folder,
            "authors": ["Doe, Jane"],
            "description": f"webdata{tag}",
        }
        assert alice.publish_dataset(name, files, title="Iris web data", **common)["status"] == "ready"
        private = f"secret_{tag}"
        reply = alice.publish_dataset(
            private, ["README.txt"], title="Private web data", visible_to=["user:alice"], **common
        )
        assert reply["status"] == "ready"
        pkg = base / "pkg"
        pkg.mkdir()
        (pkg / "e2efns.py").write_text(FUNCTIONS)
        model = f"double_{tag}"
        doc = python_function_document(
            name=model, module="e2efns", function="double", files=["e2efns.py"], title="Web double",
            authors=["Doe, Jane"], description=f"webdata{tag}", training_data=[f"alice/{name}"],
        )  # fmt: skip
        doc["dlhub"]["test_vectors"] = [
            {"inputs": [1], "expected": [2]},
            {"inputs": [2, 3], "expected": [4, 6]},
            {"inputs": [], "expected": []},
        ]
        assert alice.publish(doc, base_dir=pkg)["status"] == "ready"
        found = Site(
            url=info["url"], token=info["alice"], tag=tag, dataset=f"alice/{name}",
            private=f"alice/{private}", model=f"alice/{model}", folder=folder, downloads=base / "downloads",
        )  # fmt: skip
        found.downloads.mkdir()

        def indexed() -> bool:
            response = httpx.get(f"{found.url}/api/v1/search", params={"q": f"webdata{tag}"}, timeout=10)
            return bool(response.json()["total"] == 2)

        wait_until(indexed, timeout_s=30, message="the public dataset and model to be indexed")
        yield found
    finally:
        stop_stack(process)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[WebDriver]:
    try:
        with chromium(download_dir=site.downloads) as driver:
            yield driver
    except BrowserUnavailable as exc:
        missing_test_server(str(exc))


def file_rows(driver: WebDriver) -> dict[str, list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#files tbody tr")
    return {
        str(r.get_attribute("data-path")): [c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows
    }


def test_dataset_page_lists_files_previews_and_models(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/m/{site.dataset}")
    wait_ready(browser)
    rows = file_rows(browser)
    assert set(rows) == {"data/iris.csv", "blobs/weights.bin", "README.txt"}
    for path, row in rows.items():
        content = (site.folder / path).read_bytes()
        assert row[0] == path and row[2] == hashlib.sha256(content).hexdigest()
    assert rows["blobs/weights.bin"][1] == "10 KiB" and rows["README.txt"][1] == "19 B"
    table = browser.find_element(By.CSS_SELECTOR, '.preview[data-path="data/iris.csv"] table')
    headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers == ["id integer", "length_cm number", f"{XSS_COLUMN} string"]
    cells = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert len(cells) == 10 and cells[0] == ["0", "1.5", "iris 0"] and cells[1][2] == XSS_CELL
    users = browser.find_elements(By.CSS_SELECTOR, "#used-by li")
    assert [u.get_attribute("data-servable") for u in users] == [f"{site.model}@1"]
    assert "@dataset{" in text_of(browser, "#bibtex")
    assert browser.find_elements(By.CSS_SELECTOR, "#try-it, #usage-sdk") == []  # a dataset is never run
    # the hostile header and cell are text: nothing of them became an element or ran
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script, main b") == []
    assert browser.execute_script("return window.__xss === undefined") is True
    # from the models trained on it, to the model, whose page links back to its training data
    users[0].find_element(By.TAG_NAME, "a").click()
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Web double")
    link = shown(browser, f'#training-data li[data-dataset="{site.dataset}@1"] a')
    link.click()
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Iris web data")


def downloaded(site: Site, name: str) -> bytes | None:
    path = site.downloads / name
    partial = list(site.downloads.glob("*.crdownload"))
    return path.read_bytes() if path.is_file() and not partial else None


def test_file_downloads_with_the_right_bytes(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/m/{site.dataset}")
    shown(browser, 'a[aria-label="Download blobs/weights.bin"]').click()  # signed out: a plain link
    wait(browser).until(lambda _: downloaded(site, "weights.bin") == BINARY)
    # signed in, the page fetches with the bearer token and saves through a Blob URL
    sign_in(browser, site.token)
    shown(browser, 'a[aria-label="Download data/iris.csv"]').click()
    wait(browser).until(lambda d: "Downloaded iris.csv" in text_of(d, "#download-status"))
    wait(browser).until(
        lambda _: downloaded(site, "iris.csv") == (site.folder / "data/iris.csv").read_bytes()
    )


def test_private_dataset_download_needs_the_token(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/m/{site.private}")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "main .error"))
    assert "Private web data" not in browser.find_element(By.TAG_NAME, "main").text
    file_url = f"{site.url}/api/v1/servables/{site.private}/versions/1/files/README.txt"
    assert httpx.get(file_url, timeout=10).status_code == 404
    sign_in(browser, site.token)
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Private web data")
    shown(browser, 'a[aria-label="Download README.txt"]').click()
    wait(browser).until(lambda d: "Downloaded README.txt" in text_of(d, "#download-status"))
    wait(browser).until(lambda _: downloaded(site, "README.txt") == b"Iris measurements.\n")


def test_catalog_kind_facet_and_dataset_columns(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/?q=webdata{site.tag}")
    wait(browser).until(lambda d: text_of(d, "#result-count") == "2 results")
    browser.find_element(By.CSS_SELECTOR, 'a[data-facet="kind"][data-value="dataset"]').click()
    wait(browser).until(lambda d: hits(d) == [site.dataset])
    assert "kind=dataset" in browser.current_url
    hit = browser.find_element(By.CSS_SELECTOR, f'li.hit[data-servable="{site.dataset}"]')
    assert hit.find_element(By.CSS_SELECTOR, ".columns").text == f"Columns: id, length_cm, {XSS_COLUMN}"
    assert hit.find_element(By.CSS_SELECTOR, ".badge.kind").text == "dataset"
    assert hit.find_elements(By.CSS_SELECTOR, "img") == []
    browser.find_element(By.CSS_SELECTOR, 'a[data-remove="kind"]').click()
    wait(browser).until(lambda d: sorted(hits(d)) == sorted([site.dataset, site.model]))


def test_last_verification_and_verify_now(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/m/{site.model}")
    summary = shown(browser, "#last-verification")
    assert summary.get_attribute("data-passed") == "true"
    assert re.fullmatch(rf"passed Verified {RECENT}: 3/3 passed \(at publication\)", summary.text)
    browser.find_element(By.ID, "verify").click()
    wait(browser).until(lambda d: text_of(d, "#verify-result") == "Passed: 3/3")
    assert re.fullmatch(rf"passed Verified {RECENT}: 3/3 passed", text_of(browser, "#last-verification"))
    # the registry kept it: a fresh load shows the verify, not the publication check
    described = httpx.get(f"{site.url}/api/v1/servables/{site.model}", timeout=10).json()
    assert described["last_verification"]["trigger"] == "verify"
    open_page(browser, f"{site.url}/m/{site.model}")
    wait(browser).until(
        lambda d: re.fullmatch(rf"passed Verified {RECENT}: 3/3 passed", text_of(d, "#last-verification"))
    )
