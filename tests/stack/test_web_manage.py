"""Signed-in use of the web catalog in headless chromium: publish from the browser (a build that fails, then
one that succeeds, followed live), deprecate and delete through their confirmation dialogs, and none of it
offered to someone who may not manage the model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from tests.support.servers import missing_test_server
from tests.support.stack import create_token, start_stack, stop_stack

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import (
    BrowserUnavailable,
    chromium,
    open_page,
    shown,
    sign_in,
    text_of,
    wait,
    wait_ready,
)

BROKEN = "raise ImportError('webpub cannot be imported: a missing native library')\n"
WORKING = "def cube(x):\n    return x * x * x\n"


@dataclass
class Stack:
    url: str
    alice: str
    bob: str
    files: Path  # dlhub.json, broken/webpub.py, working/webpub.py
    name: str
    managed: str  # alice/<name>: two versions, public, for deprecate and delete


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("webmanage")
    process, info = start_stack(base, workers=1)
    try:
        files = base / "upload"
        (files / "broken").mkdir(parents=True)
        (files / "working").mkdir()
        name = f"webpub_{uuid.uuid4().hex[:6]}"
        doc = python_function_document(
            name=name, module="webpub", function="cube", files=["webpub.py"], title="Cube from the browser",
            authors=["Doe, Jane"], input_type={"type": "integer"}, output_type={"type": "integer"},
        )  # fmt: skip
        doc["dlhub"]["test_vectors"] = [{"inputs": 3, "expected": 27}]
        (files / "dlhub.json").write_text(json.dumps(doc))
        (files / "broken" / "webpub.py").write_text(BROKEN)
        (files / "working" / "webpub.py").write_text(WORKING)
        managed = _publish_managed(info["url"], info["alice"], base)
        bob = create_token(info["env"], info["data_dir"], "bob")
        yield Stack(info["url"], info["alice"], bob, files, name, managed)
    finally:
        stop_stack(process)


def _publish_managed(url: str, token: str, base: Path) -> str:
    pkg = base / "managed"
    pkg.mkdir()
    (pkg / "fns.py").write_text("def ident(x):\n    return x\n")
    alice = DLHubClient(url, token)
    name = f"managed_{uuid.uuid4().hex[:6]}"
    for version in (1, 2):
        doc = python_function_document(
            name=name, module="fns", function="ident", files=["fns.py"], title=f"Managed v{version}",
            authors=["Doe, Jane"],
        )  # fmt: skip
        assert alice.publish(doc, base_dir=pkg)["status"] == "ready"
    return f"alice/{name}"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium() as driver:
            yield driver
    except BrowserUnavailable as exc:
        missing_test_server(str(exc))


def _api(stack: Stack, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or stack.alice}"}
    return httpx.get(f"{stack.url}/api/v1{path}", headers=headers, timeout=10).json()


def _publish_in_browser(browser: WebDriver, stack: Stack, module_dir: str, version: int) -> str:
    """Choose dlhub.json and the module, publish, and wait for the followed build to end; its final state."""
    metadata = shown(browser, "#pub-metadata")
    metadata.send_keys(str(stack.files / "dlhub.json"))
    wait(browser).until(lambda d: "webpub.py" in text_of(d, "#pub-summary"))
    chooser = browser.find_element(By.ID, "pub-files")
    chooser.clear()
    chooser.send_keys(str(stack.files / module_dir / "webpub.py"))
    browser.find_element(By.ID, "pub-submit").click()
    wait(browser).until(lambda d: f"@{version}" in text_of(d, "#build-heading"))
    state = shown(browser, "#build-state")
    wait(browser, 120).until(lambda d: state.get_attribute("data-state") in ("ready", "failed"))
    return str(state.get_attribute("data-state"))


def test_publish_failing_then_succeeding_build(browser: WebDriver, stack: Stack) -> None:
    open_page(browser, f"{stack.url}/publish")
    wait(browser).until(lambda d: "Sign in" in text_of(d, "#publish-signed-out"))
    sign_in(browser, stack.alice)
    # Without the declared file, the page says which one is missing before anything is sent.
    shown(browser, "#pub-metadata").send_keys(str(stack.files / "dlhub.json"))
    wait(browser).until(lambda d: "webpub.py" in text_of(d, "#pub-summary"))
    browser.find_element(By.ID, "pub-submit").click()
    wait(browser).until(lambda d: "webpub.py missing" in text_of(d, "#pub-files-error"))
    assert browser.find_element(By.ID, "pub-files").get_attribute("aria-invalid") == "true"

    assert _publish_in_browser(browser, stack, "broken", 1) == "failed"
    assert "webpub cannot be imported" in text_of(browser, "#build-error")
    log = text_of(browser, "#build-log")
    assert "extracted the package" in log and "running 1 test vectors" in log
    failed = _api(stack, f"/servables/alice/{stack.name}/versions/1/build")
    assert failed["state"] == "failed" and failed["error"] in text_of(browser, "#build-error")
    # The log shown is the record's log (lines arrived through the stream, not a reload).
    assert failed["log"][0] in log

    assert _publish_in_browser(browser, stack, "working", 2) == "ready", text_of(browser, "#build-slot")
    assert "build-error" not in browser.page_source
    browser.find_element(By.ID, "build-model-link").click()
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Cube from the browser")
    assert f"alice/{stack.name}@2" in text_of(browser, ".model-head")
    assert "ready" in text_of(browser, ".model-head .badge")


def test_deprecate_and_delete_through_dialogs(browser: WebDriver, stack: Stack) -> None:
    owner_path = f"/servables/{stack.managed}"
    open_page(browser, f"{stack.url}/m/{stack.managed}")
    sign_in(browser, stack.alice)
    opener = shown(browser, "#deprecate-open")
    opener.click()
    dialog = shown(browser, "dialog#deprecate-dialog[open]")
    # Focus moved into the modal dialog; a malformed replacement is refused at its field.
    assert browser.switch_to.active_element.get_attribute("id") == "dep-reason"
    browser.switch_to.active_element.send_keys("superseded by a better fit")
    dialog.find_element(By.ID, "dep-replacement").send_keys("not a reference")
    dialog.find_element(By.ID, "deprecate-dialog-confirm").click()
    wait(browser).until(lambda d: text_of(d, "#dep-replacement-error") != "")
    assert dialog.find_element(By.ID, "dep-replacement").get_attribute("aria-invalid") == "true"
    assert _api(stack, owner_path)["deprecated"] is False
    replacement = dialog.find_element(By.ID, "dep-replacement")
    replacement.clear()
    replacement.send_keys(f"{stack.managed}@1")
    dialog.find_element(By.ID, "deprecate-dialog-confirm").click()
    wait(browser).until(lambda d: "superseded by a better fit" in text_of(d, ".model-head .notice"))
    assert f"use {stack.managed}@1 instead" in text_of(browser, ".model-head .notice")
    described = _api(stack, owner_path)
    assert described["deprecated"] is True and described["deprecation_replacement"] == f"{stack.managed}@1"

    # Escape cancels a dialog, and the focus returns to the button that opened it.
    shown(browser, "#delete-open").click()
    shown(browser, "dialog#delete-dialog[open]")
    assert browser.switch_to.active_element.get_attribute("id") == "delete-dialog-cancel"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog#delete-dialog"))
    assert browser.switch_to.active_element.get_attribute("id") == "delete-open"
    assert _api(stack, owner_path)["version"] == 2

    # Delete version 2: the page moves to version 1; then everything.
    browser.find_element(By.ID, "delete-open").click()
    shown(browser, "dialog#delete-dialog[open]").find_element(By.ID, "delete-dialog-confirm").click()
    wait(browser).until(lambda d: f"{stack.managed}@1" in text_of(d, ".model-head"))
    assert [v["status"] for v in _api(stack, f"{owner_path}/versions")["versions"]] == ["ready", "deleted"]
    shown(browser, "#delete-open").click()
    dialog = shown(browser, "dialog#delete-dialog[open]")
    dialog.find_element(By.ID, "delete-all").click()
    dialog.find_element(By.ID, "delete-dialog-confirm").click()
    wait(browser).until(lambda d: "deleted version 1" in text_of(d, "#deleted-notice"))
    assert httpx.get(f"{stack.url}/api/v1{owner_path}", timeout=10).status_code in (404, 410)


def test_manage_controls_only_for_those_who_may_manage(browser: WebDriver, stack: Stack) -> None:
    target = f"{stack.url}/m/alice/{stack.name}"
    open_page(browser, target)
    wait(browser).until(lambda d: text_of(d, "#model-title") == "Cube from the browser")
    wait_ready(browser)
    assert browser.find_elements(By.ID, "manage-slot") and not browser.find_elements(By.ID, "delete-open")
    browser.execute_script("delete document.body.dataset.ready")  # so that the wait sees the new render
    sign_in(browser, stack.bob, user="bob")
    wait_ready(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "#deprecate-open, #delete-open") == []
    # ... and the registry refuses bob anyway (the page only hides what it would refuse).
    refused = httpx.delete(
        f"{stack.url}/api/v1/servables/alice/{stack.name}",
        headers={"Authorization": f"Bearer {stack.bob}"},
        timeout=10,
    )
    assert refused.status_code == 403
