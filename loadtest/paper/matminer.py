"""The paper's three matminer servables, from examples/formation_enthalpy (published by its own function).

The example publishes parse (formula -> composition), featurize (composition -> Magpie features) and
predict (random forest) as python-function servables; here each step gets the input the previous one
produces for a fixed formula, as in the paper's Figure 3 (each servable measured on its own).
"""

from __future__ import annotations

import importlib
from typing import Any

from dlhub.client import DLHubClient
from loadtest.paper.cases import Case, any_output

FORMULA = "NaCl"
LABELS = ("matminer_util", "matminer_featurize", "matminer_model")
EXAMPLE_MODULES = ("examples.formation_enthalpy.publish", "examples.formation_enthalpy")


def _publisher() -> Any:
    for module_name in EXAMPLE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "publish_example"):
            return module.publish_example
    return None


def unavailable_reason() -> str | None:
    if _publisher() is None:
        return (
            "examples.formation_enthalpy.publish_example is not importable (the example is not in this tree)"
        )
    return None


def publish_matminer(url: str, token: str) -> list[Case]:
    """Publish the example's three servables; returns one case per step with the input that step sees."""
    publish_example = _publisher()
    with DLHubClient(url, token, timeout_s=600) as client:
        names: dict[str, str] = publish_example(client)
        steps = [names[key] for key in ("parse", "featurize", "predict")]
        cases = []
        value: Any = FORMULA
        for label, servable in zip(LABELS, steps, strict=True):
            cases.append(Case(label, servable, value, any_output))
            value = client.run(servable, value)
    return cases
