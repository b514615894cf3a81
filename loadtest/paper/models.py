"""Keras models of the paper's two neural networks, with random weights (no training data is needed).

    python -m loadtest.paper.models --out DIR [--inception]

Runs in its own process so that the benchmark driver (which also generates load) never imports TensorFlow.
- ``cifar10.keras``: the small CIFAR-10 CNN of the TensorFlow tutorial (3 conv layers + 2 dense, 32x32x3 ->
  10 classes, ~122k parameters);
- ``inception_v3.keras``: ``keras.applications.InceptionV3(weights=None)`` (299x299x3 -> 1000, ~23.9M
  parameters).
Weights are random (seeded), so outputs are meaningless but the compute and data sizes match the paper's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CIFAR_FILE = "cifar10.keras"
INCEPTION_FILE = "inception_v3.keras"
CIFAR_SHAPE = (32, 32, 3)
INCEPTION_SHAPE = (299, 299, 3)


def _cifar10() -> Any:
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=CIFAR_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="cifar10_cnn",
    )


def _inception() -> Any:
    import keras

    return keras.applications.InceptionV3(weights=None, input_shape=INCEPTION_SHAPE)


def build(out: Path, inception: bool) -> dict[str, int]:
    """Save the models in ``out`` (skipping files already there); returns parameter counts."""
    import keras

    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    params: dict[str, int] = {}
    targets = [(CIFAR_FILE, _cifar10)] + ([(INCEPTION_FILE, _inception)] if inception else [])
    for filename, factory in targets:
        model = factory()
        params[filename] = int(model.count_params())
        if not (out / filename).is_file():
            model.save(out / filename)
    return params


def build_in_subprocess(out: Path, inception: bool) -> dict[str, int]:
    cmd = [sys.executable, "-m", "loadtest.paper.models", "--out", str(out)]
    done = subprocess.run(cmd + (["--inception"] if inception else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the Keras models failed: {done.stderr[-2000:]}")
    params: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return params


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inception", action="store_true")
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.inception)))


if __name__ == "__main__":
    main()
