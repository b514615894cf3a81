"""Small real PyTorch, Keras and TensorFlow models for the ML servable tests, built in the test (fixed seeds,
no downloads), and the method descriptions the DLHub SDK's builders write for them."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

TORCH_SHIM = "torch.TorchServable"
KERAS_SHIM = "keras.KerasServable"
TF_SHIM = "tensorflow.TensorFlowServable"

# A module a package ships: the state-dict servable constructs its class in the worker.
TORCH_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, n_in=4, hidden=8, n_out=3):
            super().__init__()
            self.hidden = nn.Linear(n_in, hidden)
            self.out = nn.Linear(hidden, n_out)

        def forward(self, x):
            return self.out(torch.relu(self.hidden(x)))

        @torch.jit.export
        def embed(self, x):
            return torch.relu(self.hidden(x))


    class TwoHeads(nn.Module):
        \"\"\"Two tensors in, a tuple of two out (the SDK's multi-input, multi-output case).\"\"\"

        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def forward(self, x, y):
            return self.layer(x), self.layer(y) * 2


    class ConvNet(nn.Module):
        \"\"\"A tiny conv net TorchScript cannot compile (a lambda attribute): describe() traces it.\"\"\"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, kernel_size=3)
            self.fc = nn.Linear(2 * 4 * 4, 2)
            self.scale = lambda t: t * 0.5

        def forward(self, x):
            return self.fc(self.scale(torch.relu(self.conv(x))).flatten(1))
    """
)


def tensor_type(shape: list[int | None], item: str = "float", description: str = "Tensor") -> dict[str, Any]:
    return {"type": "ndarray", "description": description, "shape": shape, "item_type": {"type": item}}


def tuple_type(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tuple", "description": "Tuple of tensors", "element_types": list(elements)}


def method(input: dict[str, Any], output: dict[str, Any], **details: Any) -> dict[str, Any]:
    return {"input": input, "output": output, "parameters": {}, "method_details": details}


def seeded_torch(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch


def torch_reference(model: Any, *inputs: Any, function: str = "forward") -> Any:
    """What the model returns in this process, as NumPy (tuples as lists)."""
    import torch

    with torch.inference_mode():
        result = getattr(model, function)(*(torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in inputs))
    if isinstance(result, tuple):
        return [r.numpy() for r in result]
    return result.numpy()


# -- Keras ---------------------------------------------------------------------------------------------------


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def keras_two_outputs() -> Any:
    """``x`` [N, 4] -> ``y`` [N, 2] and ``embed`` [N, 3] (a functional model with two named outputs)."""
    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    y = keras.layers.Dense(2, name="y")(hidden)
    embed = keras.layers.Dense(3, activation="tanh", name="embed")(hidden)
    return keras.Model(x, [y, embed])


def keras_sequential() -> Any:
    """A Sequential MLP [N, 3] -> [N, 1], the kind the DLHub SDK saved to HDF5."""
    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input(shape=(3,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="output"),
        ]
    )


def keras_two_inputs() -> Any:
    """``a`` [N, 2] and ``b`` [N, 3] -> [N, 1]."""
    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(2)
    a = keras.Input(shape=(2,), name="a")
    b = keras.Input(shape=(3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    return keras.Model([a, b], keras.layers.Dense(1, name="out")(joined))


# -- TensorFlow SavedModel ---------------------------------------------------------------------------------

TF_SLOPE = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def save_tf_module(directory: Path) -> list[str]:
    """The DLHub SDK's TF2 test model: ``run`` (y = m * x + 1), ``scalar_multiply(z, x)`` and ``stats`` (two
    named outputs). Returns the saved files relative to ``directory`` (the SDK's ``dlhub.files.other``)."""
    quiet_tensorflow()
    import tensorflow as tf

    module = tf.Module()
    module.m = tf.Variable(TF_SLOPE, name="slope")

    def call(x: Any) -> Any:
        return module.m * x + 1

    def scalar_multiply(z: Any, x: Any) -> Any:
        return tf.multiply(z, x)

    def stats(x: Any) -> Any:
        return {"total": tf.reduce_sum(x, axis=1), "largest": tf.reduce_max(x, axis=1)}

    rows = tf.TensorSpec((None, 3), tf.float32)
    module.call = tf.function(call)
    module.scalar_multiply = tf.function(
        scalar_multiply, input_signature=[tf.TensorSpec([], tf.float32), rows]
    )
    module.stats = tf.function(stats, input_signature=[rows])
    signatures = {
        "serving_default": module.call.get_concrete_function(rows),
        "scalar_multiply": module.scalar_multiply,
        "stats": module.stats,
    }
    tf.saved_model.save(module, str(directory), signatures=signatures)
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def tf_methods() -> dict[str, Any]:
    """The methods ``TensorFlowModel.create_model`` (DLHub SDK, TF2) describes for ``save_tf_module``."""
    rows = tensor_type([None, 3], description="x:0")
    return {
        "run": method(rows, tensor_type([None, 3], description="Identity:0")),
        "scalar_multiply": method(
            tuple_type(rows, tensor_type([], description="z:0")),
            tensor_type([None, 3], description="Identity:0"),
        ),
        "stats": method(
            rows,
            tuple_type(
                tensor_type([None], description="Identity:0"), tensor_type([None], description="Identity_1:0")
            ),
        ),
    }


def save_tf1_graph(directory: Path) -> list[str]:
    """The DLHub SDK's TF1 test model, written with ``SavedModelBuilder``: ``serving_default`` (y = m * x + 1,
    m = 1), ``length`` (sum of y - x) and ``scalar_multiply`` (z * x). Returns the files, as
    ``save_tf_module``."""
    quiet_tensorflow()
    import tensorflow as tf

    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info

    def signature(inputs: dict[str, Any], outputs: dict[str, Any], name: str) -> Any:
        return v1.saved_model.signature_def_utils.build_signature_def(
            inputs={k: info(v) for k, v in inputs.items()},
            outputs={k: info(v) for k, v in outputs.items()},
            method_name=name,
        )

    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        x = v1.placeholder("float", shape=(None, 3), name="Input")
        z = v1.placeholder("float", shape=(), name="ScalarMultiple")
        slopes = v1.Variable([1.0, 1.0, 1.0], name="Slopes")
        y = slopes * x + 1
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(directory))
        builder.add_meta_graph_and_variables(
            session,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": signature({"x": x}, {"y": y}, "run"),
                "length": signature({"x": x}, {"len": v1.reduce_sum(y - x)}, "length"),
                "scalar_multiply": signature(
                    {"x": x, "z": z}, {"scale_mult": v1.multiply(z, x)}, "scalar_multiply"
                ),
            },
        )
        builder.save()
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def tf1_methods() -> dict[str, Any]:
    """The methods the DLHub SDK's TF1 builder describes for ``save_tf1_graph`` (node names in
    ``method_details``; several inputs as a ``tuple`` sorted by input name)."""
    rows = tensor_type([None, 3], description="x")
    return {
        "run": method(
            rows, tensor_type([None, 3], description="y"), input_nodes=["Input:0"], output_nodes=["add:0"]
        ),
        "length": method(
            rows, tensor_type([], description="len"), input_nodes=["Input:0"], output_nodes=["Sum:0"]
        ),
        "scalar_multiply": method(
            {
                "type": "tuple",
                "description": "Arguments",
                "shape": [2],
                "element_types": [rows, tensor_type([], description="z")],
            },
            tensor_type([None, 3], description="scale_mult"),
            input_nodes=["Input:0", "ScalarMultiple:0"],
            output_nodes=["Mul:0"],
        ),
    }
