"""Headless chromium for the web catalog's tests, benchmarks and screenshots (Debian's chromium driven
through chromium-driver with Selenium; nothing is downloaded at test time).

Every wait is an explicit ``WebDriverWait`` with a deadline; ``start_browser`` returns None when chromium
or its driver is missing, and the caller decides whether that skips (tests) or fails (scripts).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 20.0


class BrowserUnavailable(RuntimeError):
    """chromium or chromium-driver is not installed, or chromium did not start."""


@contextmanager
def chromium(width: int = 1280, height: int = 900, download_dir: Path | None = None) -> Iterator[WebDriver]:
    """A headless chromium with a ``width`` x ``height`` window, quit afterwards; downloads land in
    ``download_dir`` without a prompt when one is given."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise BrowserUnavailable(
            "chromium and chromium-driver are not installed (scripts/test-servers start)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    if download_dir is not None:
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(download_dir),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
    try:
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=driver_path)
        )
    except WebDriverException as exc:
        raise BrowserUnavailable(f"chromium did not start: {exc.msg}") from exc
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, timeout_s: float = WAIT_S) -> WebDriverWait[WebDriver]:
    # A re-render replaces elements: a lookup that races it is retried until the deadline.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout_s, ignored_exceptions=ignored)


def text_of(driver: WebDriver, selector: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def shown(driver: WebDriver, selector: str) -> WebElement:
    element: WebElement = wait(driver).until(lambda d: d.find_element(By.CSS_SELECTOR, selector))
    return element


def hits(driver: WebDriver) -> list[str]:
    return [str(e.get_attribute("data-servable")) for e in driver.find_elements(By.CSS_SELECTOR, "li.hit")]


def open_page(driver: WebDriver, url: str) -> None:
    """Load ``url`` signed out (the token lives in the tab's sessionStorage)."""
    driver.execute_script("try { sessionStorage.clear() } catch (e) {}")  # about:blank has no storage
    driver.get(url)


def wait_ready(driver: WebDriver) -> None:
    """Until the app has finished rendering the current page (it sets ``body[data-ready]``)."""
    wait(driver).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def sign_in(driver: WebDriver, token: str, user: str = "alice") -> None:
    shown(driver, "#token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver).until(lambda d: user in text_of(d, "#account"))


# axe-core (the accessibility rules engine) from the npm registry: only the tarball is fetched (no Node),
# checked against the registry's integrity digest, and kept in the test-servers cache, never in the repo.
AXE_VERSION = "4.14.1"
AXE_INTEGRITY = (
    "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
)
AXE_URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"


def axe_source(timeout_s: float = 60.0) -> str:
    """The text of axe.min.js, downloaded once into ``$DLHUB_TEST_CACHE`` (raises OSError when offline)."""
    cache = Path(os.environ.get("DLHUB_TEST_CACHE") or Path.home() / ".cache" / "dlhub-test-servers")
    target = cache / f"axe-core-{AXE_VERSION}" / "axe.min.js"
    if target.is_file():
        return target.read_text(encoding="utf-8")
    with urllib.request.urlopen(AXE_URL, timeout=timeout_s) as response:
        tarball = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != AXE_INTEGRITY:
        raise OSError(f"axe-core {AXE_VERSION}: integrity mismatch ({digest})")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/axe.min.js")
        if member is None:
            raise OSError("axe-core tarball has no package/axe.min.js")
        source = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(source)
    partial.replace(target)
    return source.decode("utf-8")


def axe_violations(
    driver: WebDriver, source: str, impacts: tuple[str, ...] = ("serious", "critical")
) -> list[str]:
    """Run axe on the current page; the violations of the given impacts as "rule: target" lines."""
    driver.execute_script(source)
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => done(r.violations), (e) => done(String(e)));"
    )
    if isinstance(found, str):
        raise AssertionError(f"axe failed: {found}")
    return [
        f"{v['id']} ({v['impact']}): {', '.join(str(n['target']) for n in v['nodes'][:3])}"
        for v in found
        if v.get("impact") in impacts
    ]
