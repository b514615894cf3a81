"""The three steps of the formation-enthalpy pipeline; this file is the package of each of its servables.

It runs inside a DLHub worker (and in ``publish.py`` to train the model): pymatgen and matminer are imported
on first use so that importing the module stays cheap, and the trained model is the ``fe_model.joblib``
file shipped beside this module in the ``predict`` servable's package.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

MODEL_FILE = "fe_model.joblib"


def parse(formula: str) -> dict[str, float]:
    """A chemical formula (``"Fe2O3"``) as element -> amount, via pymatgen's ``Composition``."""
    from pymatgen.core import Composition, Element

    composition = Composition(formula)
    # pymatgen reads unknown symbols ("Xx") as dummy species, which have no Magpie properties.
    unknown = [str(e) for e in composition.elements if not isinstance(e, Element)]
    if unknown:
        raise ValueError(f"{formula!r} has unknown elements: {', '.join(unknown)}")
    return {str(element): float(amount) for element, amount in composition.get_el_amt_dict().items()}


@functools.cache
def _featurizer() -> Any:
    from matminer.featurizers.composition import ElementProperty

    return ElementProperty.from_preset("magpie")


def featurize(composition: dict[str, float]) -> list[float]:
    """The 132 Magpie element-property statistics of a composition (element -> amount)."""
    from pymatgen.core import Composition

    values = _featurizer().featurize(Composition(composition))
    # A property missing for an element is NaN, which JSON cannot carry; the model was trained the same way.
    return [0.0 if math.isnan(v) else float(v) for v in values]


def feature_labels() -> list[str]:
    return [str(label) for label in _featurizer().feature_labels()]


@functools.cache
def _model() -> Any:
    import joblib

    return joblib.load(Path(__file__).with_name(MODEL_FILE))


def predict(features: list[float]) -> float:
    """Formation enthalpy (eV/atom) predicted by the random forest from one Magpie feature vector."""
    return float(_model().predict([features])[0])
