"""Accessibility and phone width of the web catalog in headless chromium: no horizontal scrolling at
390x844, every form control labelled, the main flow by keyboard alone, and axe-core's serious and critical
rules on the main pages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.e2e_servables import FUNCTIONS
from tests.support.servers import missing_test_server
from tests.support.stack import start_stack, stop_stack

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import (
    BrowserUnavailable,
    axe_source,
    axe_violations,
    chromium,
    open_page,
    text_of,
    wait,
    wait_ready,
)

LONG_NAME = "a_rather_long_servable_name_that_might_overflow_a_phone_screen_" + "x" * 40


@dataclass
class Site:
    url: str
    token: str
    model: str
    task_id: str
    tag: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("weba11y")
    process, info = start_stack(base, workers=1)
    try:
        pkg = base / "pkg"
        pkg.mkdir()
        (pkg / "e2efns.py").write_text(FUNCTIONS)
        tag = uuid.uuid4().hex[:8]
        model = _publish(DLHubClient(info["url"], info["alice"]), pkg, tag)
        answer = httpx.post(
            f"{info['url']}/api/v1/servables/{model}/run",
            json={"inputs": [1, 2], "asynchronous": True},
            headers={"Authorization": f"Bearer {info['alice']}"},
            timeout=30,
        ).json()
        yield Site(info["url"], info["alice"], model, str(answer["task_id"]), tag)
    finally:
        stop_stack(process)


def _publish(client: DLHubClient, pkg: Path, tag: str) -> str:
    doc = python_function_document(
        name=LONG_NAME, module="e2efns", function="mean", files=["e2efns.py"],
        title="Mean of a list of numbers, with a title long enough to wrap on a phone screen",
        authors=["Doe, Jane", "Roe, Richard"], description=f"Averages its inputs. a11ytag{tag}",
        domains=["materials science", "statistics"],
        input_type={"type": "list", "item_type": {"type": "number"}}, output_type={"type": "number"},
    )  # fmt: skip
    doc["dlhub"]["test_vectors"] = [{"inputs": [1, 2, 6], "expected": 3}]
    assert client.publish(doc, base_dir=pkg)["status"] == "ready"
    return f"alice/{LONG_NAME}"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium() as driver:
            yield driver
    except BrowserUnavailable as exc:
        missing_test_server(str(exc))


def _pages(site: Site) -> dict[str, str]:
    return {
        "catalog": f"{site.url}/?q=a11ytag{site.tag}",
        "model": f"{site.url}/m/{site.model}",
        "task": f"{site.url}/tasks/{site.task_id}",
        "publish": f"{site.url}/publish",
    }


def _open_signed_in(browser: WebDriver, url: str, token: str) -> None:
    open_page(browser, url)
    browser.execute_script("sessionStorage.setItem('dlhub.token', arguments[0])", token)
    browser.get(url)
    wait_ready(browser)
    wait(browser).until(lambda d: "alice" in text_of(d, "#account"))


TOO_WIDE = """
return [...document.querySelectorAll('body *')].filter((el) => el.getBoundingClientRect().right > 391)
  .slice(0, 5)
  .map((el) => `${el.tagName}.${el.className}#${el.id} ${Math.round(el.getBoundingClientRect().right)}`);
"""
UNLABELLED = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter((el) => el.tagName === 'BUTTON'
    ? !el.textContent.trim() && !el.getAttribute('aria-label')
    : !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
      && !el.getAttribute('aria-labelledby'))
  .map((el) => el.outerHTML.slice(0, 120));
"""


def test_phone_width_has_no_horizontal_scroll_and_controls_are_labelled(
    browser: WebDriver, site: Site
) -> None:
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        for page, url in _pages(site).items():
            _open_signed_in(browser, url, site.token)
            sizes = browser.execute_script(
                "const e = document.documentElement; return [e.scrollWidth, e.clientWidth];"
            )
            wide = browser.execute_script(TOO_WIDE)
            assert sizes[1] == 390 and sizes[0] <= sizes[1], f"{page}: scrolls sideways {sizes}: {wide}"
            assert browser.execute_script(UNLABELLED) == [], page
        # The open dialogs too.
        _open_signed_in(browser, _pages(site)["model"], site.token)
        browser.find_element(By.ID, "deprecate-open").click()
        wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog[open]"))
        assert browser.execute_script(UNLABELLED) == []
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _tab_until(browser: WebDriver, script: str, limit: int = 40) -> None:
    """Press Tab until ``script`` (run on the focused element) is true; fail past ``limit`` presses."""
    for _ in range(limit):
        if browser.execute_script(f"const el = document.activeElement; return Boolean({script});"):
            return
        browser.switch_to.active_element.send_keys(Keys.TAB)
    raise AssertionError(f"{script} never had the focus after {limit} tabs")


def test_search_to_model_page_by_keyboard_alone(browser: WebDriver, site: Site) -> None:
    open_page(browser, f"{site.url}/")
    wait_ready(browser)
    _tab_until(browser, "el.id === 'q'")
    browser.switch_to.active_element.send_keys(f"a11ytag{site.tag}", Keys.ENTER)
    wait(browser).until(lambda d: text_of(d, "#result-count") == "1 result")
    _tab_until(browser, "el.closest('li.hit h2 a')")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser).until(lambda d: "Mean of a list" in text_of(d, "#model-title"))
    # ... and on to a run: Tab to the Run button, Enter, the output.
    wait_ready(browser)
    _tab_until(browser, "el.id === 'run-button'", limit=80)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser).until(
        lambda d: d.find_element(By.ID, "run-state").get_attribute("data-state") == "completed"
    )
    assert text_of(browser, "#output") == "3"


def test_axe_finds_no_serious_violations(browser: WebDriver, site: Site) -> None:
    try:
        source = axe_source()
    except OSError as exc:
        missing_test_server(f"axe-core could not be fetched from the npm registry: {exc}")
    for page, url in _pages(site).items():
        _open_signed_in(browser, url, site.token)
        assert axe_violations(browser, source) == [], page
