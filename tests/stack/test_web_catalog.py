"""The web catalog in a real headless browser (Debian's chromium through chromium-driver, Selenium).

One stack and one browser for the module; every wait is an explicit WebDriverWait with a deadline. A missing
browser fails in CI and skips locally, like the other test servers (scripts/test-servers installs it).
"""

from __future__ import annotations

import json
import subprocess
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
)

XSS_TITLE = '<img src=x onerror="window.__xss = 1">Inert title'
XSS_ABSTRACT = "<script>window.__xss = 2</script><b>bold?</b>"


@dataclass
class Catalog:
    url: str
    token: str
    tag: str
    mean: str  # alice/<name>: input a list of numbers, domain materials
    square: str  # input a number, domain chemistry
    private: str  # visible to alice only
    xss: str  # hostile title and abstract


def _publish(client: DLHubClient, base: Path, tag: str, function: str, **extra: Any) -> str:
    name = f"{function}_{uuid.uuid4().hex[:6]}"
    doc = python_function_document(
        name=name, module="e2efns", function=function, files=["e2efns.py"],
        title=extra.pop("title", f"Web {function}"), authors=["Doe, Jane"],
        description=extra.pop("description", "") + f" webtag{tag}", **extra,
    )  # fmt: skip
    assert client.publish(doc, base_dir=base)["status"] == "ready"
    return f"alice/{name}"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    base = tmp_path_factory.mktemp("web")
    process, info = start_stack(base, workers=1)
    try:
        pkg = base / "pkg"
        pkg.mkdir()
        (pkg / "e2efns.py").write_text(FUNCTIONS)
        tag = uuid.uuid4().hex[:8]
        alice = DLHubClient(info["url"], info["alice"])
        numbers = {"type": "list", "item_type": {"type": "number"}}
        found = Catalog(
            url=info["url"],
            token=info["alice"],
            tag=tag,
            mean=_publish(alice, pkg, tag, "mean", domains=["materials"], input_type=numbers),
            square=_publish(alice, pkg, tag, "square", domains=["chemistry"], input_type={"type": "number"}),
            private=_publish(alice, pkg, tag, "noop", title="Private web model", visible_to=["user:alice"]),
            xss=_publish(alice, pkg, tag, "double", title=XSS_TITLE, description=XSS_ABSTRACT),
        )

        def indexed() -> bool:
            params = {"q": f"webtag{tag}"}
            response = httpx.get(f"{found.url}/api/v1/search", params=params, timeout=10)
            return bool(response.json()["total"] == 3)

        wait_until(indexed, timeout_s=30, message="the public servables to be indexed")
        yield found
    finally:
        stop_stack(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium() as driver:
            yield driver
    except BrowserUnavailable as exc:
        missing_test_server(str(exc))


def test_search_and_facet_narrowing(browser: WebDriver, catalog: Catalog) -> None:
    open_page(browser, f"{catalog.url}/?q=webtag{catalog.tag}")
    wait(browser).until(lambda d: text_of(d, "#result-count") == "3 results")
    assert sorted(hits(browser)) == sorted([catalog.mean, catalog.square, catalog.xss])
    browser.find_element(By.CSS_SELECTOR, 'a[data-facet="domain"][data-value="materials"]').click()
    wait(browser).until(lambda d: text_of(d, "#result-count") == "1 result")
    assert hits(browser) == [catalog.mean]
    assert "domain=materials" in browser.current_url and f"q=webtag{catalog.tag}" in browser.current_url
    # The URL carries the query: opened afresh, it shows the same narrowed list.
    open_page(browser, browser.current_url)
    wait(browser).until(lambda d: hits(d) == [catalog.mean])
    browser.find_element(By.CSS_SELECTOR, 'a[data-remove="domain"]').click()
    wait(browser).until(lambda d: text_of(d, "#result-count") == "3 results")
    browser.back()
    wait(browser).until(lambda d: text_of(d, "#result-count") == "1 result")
    # Free text through the search box narrows as well.
    box = shown(browser, "#q")
    box.clear()
    box.send_keys(f"webtag{catalog.tag} square")
    browser.find_element(By.ID, "search-button").click()
    # ... within the domain filter still in place (square is chemistry), then without it.
    wait(browser).until(lambda d: text_of(d, "#result-count") == "0 results")
    browser.find_element(By.CSS_SELECTOR, 'a[data-remove="domain"]').click()
    wait(browser).until(lambda d: hits(d) == [catalog.square])


def test_model_page_citation_copy(browser: WebDriver, catalog: Catalog) -> None:
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": catalog.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    open_page(browser, f"{catalog.url}/m/{catalog.mean}")
    expected = httpx.get(f"{catalog.url}/api/v1/servables/{catalog.mean}/citation", timeout=10).text
    wait(browser).until(lambda d: text_of(d, "#bibtex").strip() == expected.strip())
    assert text_of(browser, "#model-title") == "Web mean"
    assert "materials" in text_of(browser, ".tags")
    browser.find_element(By.XPATH, "//button[text()='Copy BibTeX']").click()
    status = browser.find_element(By.XPATH, "//button[text()='Copy BibTeX']/following-sibling::span")
    wait(browser).until(lambda d: status.text == "Copied")
    copied = browser.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done('ERR ' + e));"
    )
    assert copied == expected
    # The usage snippets name this version, and the curl one works when pasted into a shell.
    assert f'client.run("{catalog.mean}@1", [1])' in text_of(browser, "#usage-sdk")
    assert f"run {catalog.mean}@1 --input" in text_of(browser, "#usage-cli")
    pasted = subprocess.run(
        ["bash", "-c", text_of(browser, "#usage-curl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(pasted.stdout)["output"] == 1


def test_try_it_validation_error_then_success(browser: WebDriver, catalog: Catalog) -> None:
    open_page(browser, f"{catalog.url}/m/{catalog.mean}")
    field = shown(browser, "#try-it textarea")
    field.clear()
    field.send_keys('[1, "x", 3]')
    browser.find_element(By.ID, "run-button").click()
    error = wait(browser).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-error-for="inputs"]').text or None
    )
    assert "inputs[1]" in str(error)
    assert field.get_attribute("aria-invalid") == "true"
    field.clear()
    field.send_keys("[1, 2, 6]")
    browser.find_element(By.ID, "run-button").click()
    state = shown(browser, "#run-state")
    wait(browser).until(lambda d: state.get_attribute("data-state") == "completed")
    assert text_of(browser, "#output") == "3"
    assert "inference_ms" in text_of(browser, "#run-result table.timings")
    assert field.get_attribute("aria-invalid") is None


def test_async_run_followed_to_completion(browser: WebDriver, catalog: Catalog) -> None:
    open_page(browser, f"{catalog.url}/m/{catalog.square}")
    field = shown(browser, "#try-it input[type=text]")
    field.clear()
    field.send_keys("7")
    browser.find_element(By.ID, "run-async").click()
    browser.find_element(By.ID, "run-button").click()
    wait(browser).until(lambda d: "/tasks/" in d.current_url)
    state = shown(browser, "#task-state")
    wait(browser).until(lambda d: state.get_attribute("data-state") in ("completed", "failed"))
    assert state.get_attribute("data-state") == "completed"
    assert text_of(browser, "#output") == "49"
    task_id = browser.current_url.rsplit("/", 1)[1]
    assert httpx.get(f"{catalog.url}/api/v1/tasks/{task_id}", timeout=10).json()["output"] == 49


def test_private_model_invisible_when_signed_out(browser: WebDriver, catalog: Catalog) -> None:
    open_page(browser, f"{catalog.url}/?q=webtag{catalog.tag}")
    wait(browser).until(lambda d: text_of(d, "#result-count") == "3 results")
    assert catalog.private not in hits(browser)
    open_page(browser, f"{catalog.url}/m/{catalog.private}")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "main .error"))
    assert "Private web model" not in browser.find_element(By.TAG_NAME, "main").text

    sign_in(browser, catalog.token)
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Private web model")
    open_page(browser, f"{catalog.url}/?q=webtag{catalog.tag}")  # open_page signs out again
    wait(browser).until(lambda d: text_of(d, "#result-count") == "3 results")
    sign_in(browser, catalog.token)
    wait(browser).until(lambda d: catalog.private in hits(d))
    browser.find_element(By.ID, "sign-out").click()
    wait(browser).until(lambda d: catalog.private not in hits(d) and len(hits(d)) == 3)


def test_xss_payload_in_title_and_abstract_is_inert(browser: WebDriver, catalog: Catalog) -> None:
    open_page(browser, f"{catalog.url}/?q=webtag{catalog.tag}")
    wait(browser).until(lambda d: catalog.xss in hits(d))
    hit = browser.find_element(By.CSS_SELECTOR, f'li.hit[data-servable="{catalog.xss}"]')
    assert hit.find_element(By.CSS_SELECTOR, "h2").text == XSS_TITLE
    assert hit.find_elements(By.CSS_SELECTOR, "img, script, b") == []
    open_page(browser, f"{catalog.url}/m/{catalog.xss}")
    wait(browser).until(lambda d: text_of(d, "#model-title") == XSS_TITLE)
    assert XSS_ABSTRACT in text_of(browser, ".abstract")
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main b, main script") == []
    assert browser.execute_script("return window.__xss === undefined") is True
    assert browser.title == f"{XSS_TITLE} · DLHub"


def test_shell_headers_and_client_routes(catalog: Catalog) -> None:
    """The shell answers the client-side paths with a strict CSP; static files revalidate by ETag."""
    for path in ("/", "/m/alice/x", "/m/alice/x@2", f"/tasks/{uuid.uuid4()}"):
        response = httpx.get(catalog.url + path, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(catalog.url + "/static/js/app.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    again = httpx.get(
        catalog.url + "/static/js/app.js", headers={"If-None-Match": script.headers["etag"]}, timeout=10
    )
    assert again.status_code == 304 and again.content == b""
    missing = httpx.get(catalog.url + "/static/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
