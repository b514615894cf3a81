"""The publication document DLHub SDK 2.1.0's ScikitLearnModel writes, verbatim from
shared/reference/dlhub-metadata.md (tests/data/dlhub-sdk-2.1.0-iris_rf.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SDK_EXAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "dlhub-sdk-2.1.0-iris_rf.json"


def sdk_sklearn_document(name: str = "iris_rf") -> dict[str, Any]:
    """A fresh copy of the SDK's document, published under ``name``."""
    document: dict[str, Any] = json.loads(SDK_EXAMPLE_PATH.read_text())
    document["dlhub"]["name"] = name
    return document
