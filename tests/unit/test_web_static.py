"""Static checks of the web catalog's files (package data of dlhub.registry)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

pytestmark = pytest.mark.unit

WEB = resources.files("dlhub.registry") / "web"


def modules() -> list[str]:
    return sorted(f.name for f in (WEB / "js").iterdir() if f.name.endswith(".js"))


def test_the_shell_preloads_every_module_app_js_imports() -> None:
    # Without the preload a module is fetched only once its importer has been parsed (a waterfall).
    shell = (WEB / "index.html").read_text(encoding="utf-8")
    preloaded = sorted(re.findall(r'<link rel="modulepreload" href="/static/js/([\w.]+)">', shell))
    assert preloaded == [m for m in modules() if m != "app.js"]


def test_no_markup_sinks_and_no_inline_handlers() -> None:
    # Untrusted text goes in as text nodes only (docs/web.md, Security).
    for name in modules():
        source = (WEB / "js" / name).read_text(encoding="utf-8")
        for sink in (
            "innerHTML",
            "outerHTML =",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in source, f"{name} uses {sink}"
    shell = (WEB / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"\son\w+=", shell) and "<script>" not in shell and "style=" not in shell
