"""Train, publish and run the formation-enthalpy pipeline of the DLHub paper.

    python -m examples.formation_enthalpy.publish --url http://127.0.0.1:8080 --token dlh_...

(a) featurises the small table ``formation_enthalpies.csv`` with matminer's Magpie preset and fits a
scikit-learn random forest on it; (b) publishes three python-function servables from ``fe_steps.py``:
``<prefix>_parse`` (formula -> composition), ``<prefix>_featurize`` (composition -> Magpie vector) and
``<prefix>_predict`` (vector -> eV/atom, the forest shipped as a joblib file); (c) publishes them as the
pipeline ``<prefix>`` and runs it on a few formulas, printing predictions next to the table's values.

``publish_example(client)`` does (a) and (b) and returns the servable names, for reuse (the paper's matminer
benchmark in loadtest/ runs the same three servables).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
from sklearn.ensemble import RandomForestRegressor

from dlhub.client import DLHubClient
from dlhub.client.metadata import python_function_document
from examples.formation_enthalpy import fe_steps

HERE = Path(__file__).resolve().parent
TABLE = HERE / "formation_enthalpies.csv"
STEPS_MODULE = "fe_steps"
AUTHORS = ["Ward, Logan", "Chard, Ryan"]
DEFAULT_PREFIX = "formation_enthalpy"
DEFAULT_FORMULAS = ("Fe2O3", "NaCl", "AlN", "MgO", "ZnS", "LiFePO4")
RANDOM_STATE = 0
N_ESTIMATORS = 200

FORMULA = {"type": "string", "description": "A chemical formula, e.g. Fe2O3"}
COMPOSITION = {"type": "dict", "description": "Element symbol -> amount in the formula unit"}
FEATURES = {
    "type": "ndarray",
    "shape": [132],
    "item_type": {"type": "float"},
    "description": "Magpie element-property statistics (matminer ElementProperty, preset magpie)",
}
ENTHALPY = {"type": "float", "description": "Formation enthalpy in eV/atom"}


@dataclass(frozen=True, slots=True)
class Step:
    function: str
    title: str
    input_type: dict[str, Any]
    output_type: dict[str, Any]
    files: tuple[str, ...] = (f"{STEPS_MODULE}.py",)


STEPS = (
    Step("parse", "Chemical formula to composition (pymatgen)", FORMULA, COMPOSITION),
    Step("featurize", "Magpie composition features (matminer)", COMPOSITION, FEATURES),
    Step(
        "predict",
        "Formation enthalpy random forest (scikit-learn)",
        FEATURES,
        ENTHALPY,
        files=(f"{STEPS_MODULE}.py", fe_steps.MODEL_FILE),
    ),
)


def load_table(path: Path = TABLE) -> list[tuple[str, float]]:
    """The (formula, formation enthalpy in eV/atom) rows of the training table."""
    with path.open(newline="") as handle:
        return [
            (row["formula"], float(row["formation_enthalpy_ev_per_atom"])) for row in csv.DictReader(handle)
        ]


def train_model(table: Sequence[tuple[str, float]]) -> RandomForestRegressor:
    """Fit the forest on the Magpie features of ``table`` (deterministic: fixed random state)."""
    features = [fe_steps.featurize(fe_steps.parse(formula)) for formula, _ in table]
    model = RandomForestRegressor(n_estimators=N_ESTIMATORS, random_state=RANDOM_STATE, n_jobs=1)
    model.fit(features, [value for _, value in table])
    return model


def _document(step: Step, name: str) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module=STEPS_MODULE,
        function=step.function,
        title=step.title,
        authors=AUTHORS,
        files=step.files,
        input_type=step.input_type,
        output_type=step.output_type,
        domains=["materials science"],
        description="A step of the formation-enthalpy pipeline (examples/formation_enthalpy).",
        dependencies={"pymatgen": ">=2024.10", "matminer": ">=0.9", "scikit-learn": ">=1.4"},
    )


def publish_example(client: DLHubClient, *, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Train the model and publish the three step servables; return ``{function: "owner/name@version"}``."""
    model = train_model(load_table())
    names: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dlhub-fe-") as staging:
        package_dir = Path(staging)
        shutil.copy(HERE / f"{STEPS_MODULE}.py", package_dir / f"{STEPS_MODULE}.py")
        joblib.dump(model, package_dir / fe_steps.MODEL_FILE)
        for step in STEPS:
            reply = client.publish(_document(step, f"{prefix}_{step.function}"), base_dir=package_dir)
            names[step.function] = f"{reply['shorthand_name']}@{reply['version']}"
    return names


def publish_pipeline(client: DLHubClient, steps: dict[str, str], *, prefix: str = DEFAULT_PREFIX) -> str:
    """Publish the pipeline parse -> featurize -> predict; return ``owner/name@version``."""
    reply = client.publish_pipeline(
        prefix,
        [steps[step.function] for step in STEPS],
        title="Formation enthalpy from a chemical formula",
        authors=AUTHORS,
        domains=["materials science"],
        description="pymatgen composition -> matminer Magpie features -> scikit-learn random forest.",
    )
    return f"{reply['shorthand_name']}@{reply['version']}"


def run_example(client: DLHubClient, pipeline: str, formulas: Sequence[str]) -> list[tuple[str, float]]:
    """Predicted formation enthalpy (eV/atom) of each formula, each one request to the pipeline."""
    return [(formula, float(client.run(pipeline, formula))) for formula in formulas]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="DLHub URL (default: DLHUB_URL or the saved login)")
    parser.add_argument("--token", help="API token (default: DLHUB_TOKEN or the saved login)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="name of the pipeline and its steps' prefix")
    parser.add_argument("formulas", nargs="*", default=list(DEFAULT_FORMULAS))
    args = parser.parse_args(argv)
    known = dict(load_table())
    with DLHubClient(args.url, args.token) as client:
        steps = publish_example(client, prefix=args.prefix)
        pipeline = publish_pipeline(client, steps, prefix=args.prefix)
        print(f"published {', '.join(steps.values())} and the pipeline {pipeline}")
        print(f"{'formula':<12}{'predicted':>12}{'table':>10}  (eV/atom)")
        for formula, predicted in run_example(client, pipeline, args.formulas):
            table = f"{known[formula]:10.3f}" if formula in known else f"{'-':>10}"
            print(f"{formula:<12}{predicted:12.3f}{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
