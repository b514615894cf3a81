"""examples/formation_enthalpy against the real stack: train, publish the steps and the pipeline, run."""

from __future__ import annotations

import math

import pytest

from dlhub.client import DLHubClient
from examples.formation_enthalpy import fe_steps
from examples.formation_enthalpy.publish import (
    load_table,
    main,
    publish_example,
    publish_pipeline,
    run_example,
    train_model,
)
from tests.support.stack import StackInfo, unique

# Spread over oxides, nitrides, halides and a sulfide of the table.
FORMULAS = ["MgO", "Fe2O3", "SiO2", "AlN", "TiN", "NaCl", "CaF2", "ZnS"]


def test_pipeline_predicts_the_training_table(alice: DLHubClient) -> None:
    prefix = unique("fe")
    steps = publish_example(alice, prefix=prefix)
    assert set(steps) == {"parse", "featurize", "predict"}
    assert steps["parse"] == f"alice/{prefix}_parse@1"
    pipeline = publish_pipeline(alice, steps, prefix=prefix)
    assert pipeline == f"alice/{prefix}@1"

    table = dict(load_table())
    predicted = dict(run_example(alice, pipeline, FORMULAS))
    assert all(math.isfinite(v) for v in predicted.values())
    errors = [abs(predicted[f] - table[f]) for f in FORMULAS]
    assert max(errors) < 0.6 and sum(errors) / len(errors) < 0.25, predicted  # a forest fits its training set

    # Each step is a servable of its own; the pipeline answers what the same model computes locally.
    composition = alice.run(steps["parse"], "Fe2O3")
    assert composition == {"Fe": 2.0, "O": 3.0}
    features = alice.run(steps["featurize"], composition)
    assert len(features) == 132 and features == pytest.approx(fe_steps.featurize(composition))
    local = train_model(load_table()).predict([features])[0]
    assert alice.run(steps["predict"], features) == pytest.approx(local, rel=1e-9)
    assert predicted["Fe2O3"] == pytest.approx(local, rel=1e-9)


def test_unknown_element_fails_in_the_parse_step(alice: DLHubClient) -> None:
    prefix = unique("fe_bad")
    pipeline = publish_pipeline(alice, publish_example(alice, prefix=prefix), prefix=prefix)
    record = alice.run_detailed(pipeline, "Xx2O3")
    assert record["state"] == "failed" and record["error"]["step"] == 0, record
    assert record["error"]["exception_type"] == "ValueError" and "Xx" in record["error"]["message"]


def test_command_line_entry_point(stack: StackInfo, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = unique("fe_cli")
    assert (
        main(["--url", stack.url, "--token", stack.tokens["alice"], "--prefix", prefix, "NaCl", "LiFePO4"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"alice/{prefix}@1" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"NaCl", "LiFePO4"}
    assert rows["LiFePO4"][1] == "-" and math.isfinite(float(rows["NaCl"][0]))
