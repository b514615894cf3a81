"""PyTorch, Keras and TensorFlow servables end to end: small real models built here, published with the
original DLHub SDK's document layouts and with describe()/publish_model, run over REST and compared with the
same model called in this process."""

from __future__ import annotations

import io
import shutil
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from dlhub.client import DLHubClient
from tests.stack.test_e2e_types import rest_run, sdk_document
from tests.support.ml_servables import (
    KERAS_SHIM,
    TF_SHIM,
    TF_SLOPE,
    TORCH_MODULE,
    TORCH_SHIM,
    keras_sequential,
    keras_two_inputs,
    keras_two_outputs,
    method,
    save_tf1_graph,
    save_tf_module,
    seeded_torch,
    tensor_type,
    tf1_methods,
    tf_methods,
    torch_reference,
    tuple_type,
)
from tests.support.stack import StackInfo, unique
from tests.support.type_servables import import_module_file

# Keras' own NumPy conversion warns under NumPy 2 when the test computes reference outputs.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"
)

ROWS = [[0.5, -1.0, 2.0, 3.0], [1.0, 0.25, -0.5, 0.0], [2.0, 2.0, 2.0, 2.0]]
# Declared without a column count, so a wrong width reaches the model instead of the registry's check.
ANY_ROWS = tensor_type([None, None])


def rest_status(stack: StackInfo, servable: str, inputs: Any, method: str = "run") -> httpx.Response:
    return httpx.post(
        f"{stack.api}/servables/{servable}/run",
        json={"inputs": inputs, "method": method},
        headers={"Authorization": f"Bearer {stack.tokens['alice']}"},
        timeout=120,
    )


def rest_record(stack: StackInfo, servable: str, inputs: Any, method: str = "run") -> dict[str, Any]:
    """The run record (completed or failed) of a synchronous REST run; the HTTP call itself succeeds."""
    response = rest_status(stack, servable, inputs, method)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def assert_close(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=1e-5, atol=1e-6)


def assert_fails_then_recovers(
    stack: StackInfo,
    servable: str,
    method: str,
    bad: Any,
    exception_types: set[str],
    good: Any,
    expected: Any,
) -> None:
    """A bad input fails the task with the model's own exception type; the next request still works."""
    record = rest_record(stack, servable, bad, method=method)
    assert record["state"] == "failed", record
    assert record["error"]["exception_type"] in exception_types, record["error"]
    assert_close(rest_run(stack, stack.tokens["alice"], servable, good, method=method), expected)


# -- PyTorch -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, Path]]:
    """The module of network classes, imported here under a unique name and kept on disk to ship it."""
    directory = tmp_path_factory.mktemp("torchmod")
    name = unique("mlnets")
    module = import_module_file(directory, name, TORCH_MODULE)
    yield module, directory / f"{name}.py"
    del sys.modules[name]


def torchscript_bytes(model: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and still what we load
        torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def torch_document(
    name: str, files: dict[str, Any], methods: dict[str, Any], **servable: Any
) -> dict[str, Any]:
    """``TorchModel.create_model``'s layout (type, model_type, torch in the dependencies)."""
    doc = sdk_document(name, "Torch Model", TORCH_SHIM, files, methods, model_type="Deep NN", **servable)
    # What the original SDK records: the publisher's installed version (the worker's here, so it shares the
    # worker environment; a different pin would build an environment of its own, see test_environments).
    doc["dlhub"]["dependencies"]["python"]["torch"] = importlib_metadata.version("torch")
    return doc


def test_torchscript_sdk_document_runs_several_methods(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path, torch_module: tuple[ModuleType, Path]
) -> None:
    module, _ = torch_module
    seeded_torch(0)
    net = module.Net()
    (tmp_path / "model.pt").write_bytes(torchscript_bytes(net))
    name = unique("torch_mlp")
    doc = torch_document(
        name,
        {"model": "model.pt"},
        {
            "run": method(tensor_type([None, 4]), tensor_type([None, 3]), method_name="__call__"),
            "embed": method(tensor_type([None, 4]), tensor_type([None, 8])),  # an @torch.jit.export method
            "loose": method(ANY_ROWS, tensor_type([None, 3]), method_name="forward"),
        },
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    servable = f"alice/{name}"
    token = stack.tokens["alice"]
    assert_close(rest_run(stack, token, servable, ROWS), torch_reference(net, ROWS))
    assert_close(
        rest_run(stack, token, servable, ROWS, method="embed"), torch_reference(net, ROWS, function="embed")
    )
    handle = alice.run_async(servable, ROWS[:1], method="loose")
    assert_close(handle.result(timeout_s=60), torch_reference(net, ROWS[:1]))

    # The declared shape rejects three columns before queueing; undeclared, the model itself fails.
    response = rest_status(stack, servable, [[1.0, 2.0, 3.0]])
    assert response.status_code == 400 and response.json()["error"]["field"].startswith("inputs")
    assert_fails_then_recovers(
        stack,
        servable,
        "loose",
        [[1.0, 2.0, 3.0]],
        {"RuntimeError"},
        ROWS[1:],
        torch_reference(net, ROWS[1:]),
    )


def test_torch_tuple_inputs_and_outputs(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path, torch_module: tuple[ModuleType, Path]
) -> None:
    """``TorchModel.create_model(path, [(None, 4)] * 2, [(None, 1)] * 2)``: two tensors in, a tuple out."""
    module, _ = torch_module
    seeded_torch(1)
    heads = module.TwoHeads()
    (tmp_path / "model.pth").write_bytes(torchscript_bytes(heads))
    name = unique("torch_heads")
    rows = tensor_type([None, 4])
    doc = torch_document(
        name,
        {"model": "model.pth"},
        {"run": method(tuple_type(rows, rows), tuple_type(tensor_type([None, 1]), tensor_type([None, 1])))},
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    first, second = rest_run(stack, stack.tokens["alice"], f"alice/{name}", [ROWS[:2], ROWS[1:]])
    expected = torch_reference(heads, ROWS[:2], ROWS[1:])
    assert_close(first, expected[0])
    assert_close(second, expected[1])


def test_torch_state_dict_with_shipped_module_class(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path, torch_module: tuple[ModuleType, Path]
) -> None:
    import torch

    module, module_file = torch_module
    shutil.copy(module_file, tmp_path / module_file.name)
    seeded_torch(2)
    net = module.Net(hidden=6)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    name = unique("torch_state")
    doc = torch_document(
        name,
        {"model": "weights.pt", "other": [module_file.name]},
        {"run": method(tensor_type([None, 4]), tensor_type([None, 3]), method_name="__call__")},
        options={"module_class": f"{module.__name__}:Net", "init": {"hidden": 6}},
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    assert_close(rest_run(stack, stack.tokens["alice"], f"alice/{name}", ROWS), torch_reference(net, ROWS))

    # The original SDK's layout: a whole pickled module (torch.save(model)) whose class the package ships.
    torch.save(net, tmp_path / "pickled.pt")
    pickled = unique("torch_pickled")
    doc = torch_document(
        pickled,
        {"model": "pickled.pt", "other": [module_file.name]},
        {"run": method(tensor_type([None, 4]), tensor_type([None, 3]), method_name="__call__")},
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    assert_close(rest_run(stack, stack.tokens["alice"], f"alice/{pickled}", ROWS), torch_reference(net, ROWS))

    # A file that is neither TorchScript, a state dict with its class, nor a pickled module: a typed error.
    torch.save({"not": "a model"}, tmp_path / "junk.pt")
    junk = unique("torch_junk")
    methods = {"run": method(tensor_type([None, 4]), tensor_type([None, 3]))}
    doc = torch_document(junk, {"model": "junk.pt"}, methods)
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    record = rest_record(stack, f"alice/{junk}", ROWS)
    assert record["state"] == "failed", record
    assert "state dict" in record["error"]["message"], record["error"]


def test_torch_publish_model_traces_a_conv_net(
    stack: StackInfo, alice: DLHubClient, torch_module: tuple[ModuleType, Path]
) -> None:
    """describe() scripts a module, or traces it on the example when TorchScript cannot compile it."""
    module, _ = torch_module
    seeded_torch(3)
    conv = module.ConvNet()
    images = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)
    name = unique("torch_conv")
    reply = alice.publish_model(
        conv, name=name, title="Tiny conv net", authors=["Doe, Jane"], example=images[:1]
    )
    assert reply["status"] == "ready"
    metadata = alice.describe(f"alice/{name}")["metadata"]
    assert metadata["servable"]["methods"]["run"]["input"]["shape"] == [None, 1, 6, 6]
    assert metadata["dlhub"]["dependencies"]["python"]["torch"] == importlib_metadata.version("torch")
    output = rest_run(stack, stack.tokens["alice"], f"alice/{name}", images.tolist())
    assert_close(output, torch_reference(conv, images))

    seeded_torch(4)
    net = module.Net()
    scripted = unique("torch_scripted")
    assert (
        alice.publish_model(net, name=scripted, title="MLP", authors=["Doe, Jane"], input_shape=[None, 4])[
            "status"
        ]
        == "ready"
    )
    assert_close(alice.run(f"alice/{scripted}", ROWS), torch_reference(net, ROWS))


# -- Keras ---------------------------------------------------------------------------------------------------


def keras_reference(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, list) and len(model.inputs) > 1:
        arrays: Any = [np.asarray(x, dtype=np.float32) for x in inputs]
    else:
        arrays = np.asarray(inputs, dtype=np.float32)
    return model.predict(arrays, verbose=0)


def keras_document(name: str, files: dict[str, Any], methods: dict[str, Any]) -> dict[str, Any]:
    """``KerasModel.create_model``'s layout (type, model_type, keras and h5py in the dependencies)."""
    doc = sdk_document(name, "Keras Model", KERAS_SHIM, files, methods, model_type="Deep NN")
    installed = {name: importlib_metadata.version(name) for name in ("keras", "h5py")}
    doc["dlhub"]["dependencies"]["python"].update(installed)
    return doc


def test_keras_sdk_document_runs_predict_and_named_outputs(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path
) -> None:
    model = keras_two_outputs()
    model.save(tmp_path / "model.keras")
    name = unique("keras_two")
    two_out = tuple_type(tensor_type([None, 2]), tensor_type([None, 3]))
    doc = keras_document(
        name,
        {"model": "model.keras"},
        {
            "run": method(tensor_type([None, 4]), two_out, method_name="predict", classes=[["y0", "y1"], []]),
            "embed": method(
                tensor_type([None, 4]), tensor_type([None, 3]), output_name="embed", batch_size=2
            ),
            "first": method(ANY_ROWS, tensor_type([None, 2]), method_name="__call__", output_index=0),
        },
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    servable = f"alice/{name}"
    token = stack.tokens["alice"]
    expected = keras_reference(model, ROWS)
    y, embed = rest_run(stack, token, servable, ROWS)
    assert_close(y, expected[0])
    assert_close(embed, expected[1])
    assert_close(rest_run(stack, token, servable, ROWS, method="embed"), expected[1])
    assert_close(alice.run_async(servable, ROWS, method="first").result(timeout_s=60), expected[0])
    assert_fails_then_recovers(
        stack, servable, "first", [[1.0, 2.0]], {"InvalidArgumentError", "ValueError"}, ROWS, expected[0]
    )


def test_keras_legacy_hdf5_and_json_architecture(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path
) -> None:
    """The SDK saved whole models to HDF5 (``model.hd5`` in its tests), or weights plus an architecture."""
    sequential = keras_sequential()
    sequential.save(tmp_path / "model.h5")
    (tmp_path / "model.h5").rename(tmp_path / "model.hd5")
    name = unique("keras_h5")
    doc = keras_document(
        name,
        {"model": "model.hd5"},
        {"run": method(tensor_type([None, 3]), tensor_type([None, 1]), method_name="predict", classes=["y"])},
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]]
    assert_close(
        rest_run(stack, stack.tokens["alice"], f"alice/{name}", rows), keras_reference(sequential, rows)
    )

    two = keras_two_inputs()
    (tmp_path / "arch.json").write_text(two.to_json())
    two.save_weights(tmp_path / "model.weights.h5")
    arch = unique("keras_arch")
    doc = keras_document(
        arch,
        {"model": "model.weights.h5", "arch": "arch.json"},
        {"run": method(tuple_type(tensor_type([None, 2]), tensor_type([None, 3])), tensor_type([None, 1]))},
    )
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    inputs = [[[1.0, 2.0], [0.0, -1.0]], [[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]]
    expected = keras_reference(two, inputs)
    assert_close(rest_run(stack, stack.tokens["alice"], f"alice/{arch}", inputs), expected)
    assert_close(alice.run(f"alice/{arch}", inputs), expected)


def test_keras_publish_model(stack: StackInfo, alice: DLHubClient) -> None:
    model = keras_two_outputs()
    name = unique("keras_described")
    reply = alice.publish_model(model, name=name, title="Two-output MLP", authors=["Doe, Jane"])
    assert reply["status"] == "ready"
    expected = keras_reference(model, ROWS)
    y, embed = alice.run(f"alice/{name}", ROWS)
    assert_close(y, expected[0])
    assert_close(embed, expected[1])
    assert_close(alice.run(f"alice/{name}", ROWS, method="embed"), expected[1])
    response = rest_status(stack, f"alice/{name}", [[1.0, 2.0]])
    assert response.status_code == 400 and response.json()["error"]["field"] == "inputs[0]", response.text


# -- TensorFlow SavedModel -----------------------------------------------------------------------------------


def test_tensorflow_saved_model_signatures_as_methods(
    stack: StackInfo, alice: DLHubClient, tmp_path: Path
) -> None:
    files = save_tf_module(tmp_path)
    name = unique("tf_module")
    methods = tf_methods()
    # A DLHub extension: a method bound to a named signature, declared loosely so bad shapes reach TF.
    methods["loose"] = method(ANY_ROWS, tensor_type([None, 3]), signature="serving_default")
    doc = sdk_document(name, "TensorFlow Model", TF_SHIM, {"other": files}, methods)
    # The original SDK writes "tensorflow"; this worker has the tensorflow-cpu build of the same version.
    doc["dlhub"]["dependencies"]["python"]["tensorflow"] = importlib_metadata.version("tensorflow-cpu")
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    servable = f"alice/{name}"
    token = stack.tokens["alice"]
    x = np.asarray(ROWS, dtype=np.float32)[:, :3]
    assert_close(rest_run(stack, token, servable, x.tolist()), TF_SLOPE * x + 1)
    assert_close(rest_run(stack, token, servable, [x.tolist(), 2.0], method="scalar_multiply"), 2 * x)
    largest, total = alice.run_async(servable, x.tolist(), method="stats").result(timeout_s=60)
    assert_close(largest, x.max(axis=1))
    assert_close(total, x.sum(axis=1))

    response = rest_status(stack, servable, [[1.0, 2.0]])
    assert response.status_code == 400, response.text
    assert_fails_then_recovers(
        stack, servable, "loose", [[1.0, 2.0]], {"InvalidArgumentError"}, x.tolist(), TF_SLOPE * x + 1
    )


def test_tensorflow_v1_saved_model_sdk_document(stack: StackInfo, alice: DLHubClient, tmp_path: Path) -> None:
    """What the SDK wrote for a TF1 graph: node names in method_details, several inputs as a list."""
    files = save_tf1_graph(tmp_path)
    name = unique("tf1_graph")
    doc = sdk_document(name, "TensorFlow Model", TF_SHIM, {"other": files}, tf1_methods())
    assert alice.publish(doc, base_dir=tmp_path)["status"] == "ready"
    servable = f"alice/{name}"
    token = stack.tokens["alice"]
    x = np.asarray(ROWS, dtype=np.float32)[:, :3]
    assert_close(rest_run(stack, token, servable, x.tolist()), x + 1)
    assert_close(rest_run(stack, token, servable, x.tolist(), method="length"), float(x.size))
    assert_close(rest_run(stack, token, servable, [x.tolist(), 3.0], method="scalar_multiply"), 3 * x)
