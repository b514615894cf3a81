"""The servables of the experiments, published through the SDK exactly as a user would."""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from dlhub.client import DLHubClient
from dlhub.client.metadata import base_document, python_function_document

AUTHORS = ["Bench, Mark"]
BENCH_MODULE = "paper_bench"
# Shipped as the package of every python-function servable below. ``burn`` is the CPU-bound servable of the
# scaling experiment: pure-Python integer arithmetic (it holds the GIL, so only more processes help).
BENCH_SOURCE = """
def noop(x):
    return "hello world"


def burn(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def add_one(x):
    return [v + 1 for v in x]


def double(x):
    return [v * 2 for v in x]


def total(x):
    return sum(x)
"""
BURN_ITERATIONS = 350_000
"""About 20 ms of pure Python on an idle x86 core (the measured inference time is reported with it)."""
PIPELINE_STEPS = ("add_one", "double", "total")


def _publish(url: str, token: str, doc: dict[str, Any], base_dir: Path) -> str:
    with DLHubClient(url, token, timeout_s=600) as client:
        reply = client.publish(doc, base_dir=str(base_dir), timeout_s=600)
    return str(reply["shorthand_name"])


def publish_function(url: str, token: str, name: str, function: str, *, autobatch: bool = False) -> str:
    """Publish one function of ``BENCH_SOURCE`` as a python-function servable named ``name``."""
    with tempfile.TemporaryDirectory(prefix="dlhub-paper-") as tmp:
        Path(tmp, f"{BENCH_MODULE}.py").write_text(BENCH_SOURCE)
        doc = python_function_document(
            name=name, module=BENCH_MODULE, function=function, files=[f"{BENCH_MODULE}.py"],
            title=f"Benchmark function {function}", authors=AUTHORS, autobatch=autobatch,
        )  # fmt: skip
        return _publish(url, token, doc, Path(tmp))


def keras_document(name: str, title: str, shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """The original DLHub SDK's KerasModel layout (shim ``keras.KerasServable``, method ``predict``)."""
    doc = base_document(
        name=name, title=title, authors=AUTHORS, files={"model": "model.keras"},
        description="Architecture of the DLHub paper's benchmark network with random weights (not trained).",
        dependencies={"keras": _version("keras")},
    )  # fmt: skip
    doc["servable"] = {
        "type": "Keras Model",
        "shim": "keras.KerasServable",
        "model_type": "Deep NN",
        "model_summary": title,
        "methods": {
            "run": {
                "input": {
                    "type": "ndarray",
                    "shape": [None, *shape],
                    "item_type": {"type": "float"},
                    "description": "Images",
                },
                "output": {
                    "type": "ndarray",
                    "shape": [None, n_classes],
                    "item_type": {"type": "float"},
                    "description": "Class probabilities",
                },
                "parameters": {},
                "method_details": {"method_name": "predict"},
            }
        },
        "options": {},
    }
    return doc


def publish_keras(
    url: str, token: str, name: str, model_file: Path, shape: tuple[int, ...], n_classes: int
) -> str:
    with tempfile.TemporaryDirectory(prefix="dlhub-paper-") as tmp:
        shutil.copyfile(model_file, Path(tmp, "model.keras"))
        doc = keras_document(name, f"{name} (random weights)", shape, n_classes)
        return _publish(url, token, doc, Path(tmp))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
