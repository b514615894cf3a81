"""The web catalog's palette meets WCAG AA: every text colour on the backgrounds it is used on has a contrast
ratio of at least 4.5:1 (computed from the colours app.css declares, so a palette change is checked)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

pytestmark = pytest.mark.unit

AA_TEXT = 4.5


def stylesheet() -> str:
    return (resources.files("dlhub.registry") / "web" / "app.css").read_text(encoding="utf-8")


def palette() -> dict[str, str]:
    root = re.search(r":root\s*\{(.*?)\}", stylesheet(), re.S)
    assert root is not None
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", root.group(1)))


def luminance(colour: str) -> float:
    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def colour(name: str) -> str:
    return name if name.startswith("#") else palette()[name]


# (text, background) as used in app.css: variables by name, literals as written there.
PAIRS = [
    ("fg", "bg"), ("fg", "panel"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg"), ("accent", "panel"),
    ("accent-fg", "accent"), ("danger", "bg"), ("danger", "#fff0f0"), ("ok", "bg"), ("warn", "bg"),
    ("warn", "panel"), ("fg", "#fff4d6"), ("#ffffff", "#0d2a4a"), ("#ffd7d7", "#0d2a4a"),
    ("#ffffff", "danger"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "background"), PAIRS, ids=[f"{t} on {b}" for t, b in PAIRS])
def test_text_colours_meet_wcag_aa(text: str, background: str) -> None:
    ratio = contrast(colour(text), colour(background))
    assert ratio >= AA_TEXT, f"{text} on {background}: {ratio:.2f}:1 < {AA_TEXT}:1"


def test_every_literal_pair_is_still_in_the_stylesheet() -> None:
    # The literals above are the ones app.css uses; if one goes, this list must be revisited.
    css = stylesheet().lower()
    for text, background in PAIRS:
        for value in (text, background):
            assert not value.startswith("#") or value in css or value == "#ffffff", value


def test_the_formula_matches_known_ratios() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
