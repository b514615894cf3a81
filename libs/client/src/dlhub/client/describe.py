"""Publishing made simple: build a DLHub publication document from a live object.

``describe(model, name=..., title=..., authors=...)`` inspects a fitted scikit-learn estimator or a plain
Python function and returns a ``Described``: the metadata document (in the layout of the DLHub SDK 2.1.0,
like ``dlhub.client.metadata``) and the files to ship, in memory. ``DLHubClient.publish_model`` publishes it.

- A fitted scikit-learn estimator is pickled (or dumped with joblib) to ``model.pkl`` / ``model.joblib``; its
  input is ``ndarray [None, n_features_in_]`` of floats; ``run`` calls ``predict`` and, when the estimator
  has one, ``predict_proba`` is published as a method of its own (output ``[None, n_classes]``).
- A Python function must live in a module file (``inspect.getsourcefile``); that file is shipped. Its type
  hints become the argument types: positional parameters without defaults are the inputs (several of them:
  a tuple, spread with ``unpack``), parameters with defaults become the method's ``parameters``.
- A Keras model (``keras.Model``) is saved to ``model.keras``; its input and output types come from
  ``model.inputs`` / ``model.outputs`` (several: a tuple). ``run`` calls ``predict``; a model with several
  named outputs also gets one method per output (``method_details.output_name``).
- A PyTorch module (``torch.nn.Module``) is compiled with ``torch.jit.script`` or, when TorchScript cannot
  compile it, traced with ``torch.jit.trace`` on the caller's ``example`` input, and saved to ``model.pt``.
  The input type comes from ``example`` (a tensor or array, or a tuple of them for several inputs; the first
  axis is the batch) or from ``input_shape``/``input_dtype``; with an example the model is run once to
  describe its output.
- Dependencies are the installed versions (``importlib.metadata``) of scikit-learn, numpy and joblib for an
  estimator, of torch / keras (plus its backend, e.g. tensorflow, and h5py) and numpy for a neural network,
  or of the distributions providing the top-level modules a function's module imports.
"""

from __future__ import annotations

import ast
import collections.abc
import datetime as dt
import inspect
import io
import json
import pickle
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath
from typing import Any

from dlhub.client.metadata import base_document
from dlhub.client.packaging import build_package_from_bytes

SKLEARN_DISTRIBUTIONS = ("scikit-learn", "numpy", "joblib")
SERIALIZATION_METHODS = ("pickle", "joblib")

_SCALAR_TYPES: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    complex: "complex",
    str: "string",
    dt.datetime: "datetime",
    dt.timedelta: "timedelta",
}
_LIST_ORIGINS = (list, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable)
_DICT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


@dataclass
class Described:
    """A publication document and the files it names (relative path -> content)."""

    metadata: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata["dlhub"]["name"])

    def package(self) -> bytes:
        """The upload package: a .tar.gz of ``files``."""
        return build_package_from_bytes(self.files)

    def write(self, directory: str | Path) -> Path:
        """Write ``dlhub.json`` and the files into ``directory`` (for ``dlhub publish``); return the JSON."""
        root = Path(directory)
        for rel, content in self.files.items():
            target = root / PurePosixPath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        path = root / "dlhub.json"
        path.write_text(json.dumps(self.metadata, indent=2))
        return path


def describe(
    model: Any,
    *,
    name: str,
    title: str,
    authors: Sequence[str],
    affiliations: Sequence[str] = (),
    description: str = "",
    domains: Sequence[str] = (),
    visible_to: Sequence[str] = ("public",),
    dependencies: Mapping[str, str] | None = None,
    serialization_method: str = "pickle",
    autobatch: bool = False,
    example: Any = None,
    input_shape: Sequence[int | None] | None = None,
    input_dtype: str = "float32",
) -> Described:
    """Describe a fitted scikit-learn estimator, a Keras model, a PyTorch module or a Python function (see
    the module docstring).

    ``dependencies`` are added to (and override) the detected ones. ``serialization_method`` (``pickle``
    or ``joblib``) applies to estimators, ``autobatch`` to functions, ``example``, ``input_shape`` and
    ``input_dtype`` to PyTorch modules.
    """
    common: dict[str, Any] = {
        "name": name,
        "title": title,
        "authors": authors,
        "affiliations": affiliations,
        "description": description,
        "domains": domains,
        "visible_to": visible_to,
    }
    if is_sklearn_estimator(model):
        described = _describe_sklearn(model, serialization_method, common)
    elif is_keras_model(model):
        described = _describe_keras(model, common)
    elif is_torch_module(model):
        described = _describe_torch(model, TorchInput(example, input_shape, input_dtype), common)
    elif inspect.isfunction(model):
        described = _describe_function(model, autobatch, common)
    else:
        raise TypeError(
            f"cannot describe a {type(model).__module__}.{type(model).__qualname__}: expected a fitted "
            "scikit-learn estimator, a Keras model, a PyTorch module or a Python function defined in a "
            "module file"
        )
    if dependencies:
        described.metadata["dlhub"]["dependencies"]["python"].update(dependencies)
    return described


# -- dependencies ------------------------------------------------------------------------------------------


def installed_versions(distributions: Sequence[str]) -> dict[str, str]:
    """``{distribution: version}`` of those of ``distributions`` that are installed."""
    versions: dict[str, str] = {}
    for dist in distributions:
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def imported_top_level_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source`` (anywhere, including inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def module_dependencies(source: str, *, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Installed distributions (with versions) providing the third-party modules ``source`` imports."""
    mapping = importlib_metadata.packages_distributions()
    distributions: set[str] = set()
    for module in imported_top_level_modules(source):
        if module in exclude or module in sys.stdlib_module_names:
            continue
        distributions.update(mapping.get(module, ()))
    return installed_versions(sorted(distributions))


# -- argument types from type hints ------------------------------------------------------------------------


def _python_type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return f"{hint.__module__}.{hint.__qualname__}"
    return repr(hint)


def _python_object(hint: Any) -> dict[str, Any]:
    unknown = hint is Any or hint is inspect.Parameter.empty
    python_type = "builtins.object" if unknown else _python_type_name(hint)
    return {"type": "python object", "python_type": python_type}


def _is_ndarray(hint: Any) -> bool:
    return getattr(hint, "__module__", None) == "numpy" and getattr(hint, "__name__", None) == "ndarray"


def _numpy_item_type(dtype_hint: Any) -> dict[str, Any] | None:
    """Item type of ``numpy.typing.NDArray[numpy.float64]`` (``np.dtype[np.float64]``), if simple."""
    args = typing.get_args(dtype_hint)
    scalar = args[0] if args else None
    if not isinstance(scalar, type) or getattr(scalar, "__module__", None) != "numpy":
        return None
    import numpy as np

    for base, name in ((np.bool_, "boolean"), (np.integer, "integer"), (np.floating, "float")):
        if issubclass(scalar, base):
            return {"type": name}
    if issubclass(scalar, np.complexfloating):
        return {"type": "complex"}
    if issubclass(scalar, np.str_):
        return {"type": "string"}
    return None


def type_description(hint: Any) -> dict[str, Any]:
    """The DLHub argument type for a type hint (anything unknown is a ``python object``)."""
    if hint in _SCALAR_TYPES:
        return {"type": _SCALAR_TYPES[hint]}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _LIST_ORIGINS or origin in _LIST_ORIGINS:
        description: dict[str, Any] = {"type": "list"}
        if args:
            description["item_type"] = type_description(args[0])
        return description
    if hint is tuple or origin is tuple:
        if not args:
            return {"type": "list"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "list", "item_type": type_description(args[0])}
        if args == ((),):  # tuple[()]
            return {"type": "tuple", "element_types": []}
        return {"type": "tuple", "element_types": [type_description(a) for a in args]}
    if hint in _DICT_ORIGINS or origin in _DICT_ORIGINS:
        return {"type": "dict"}
    if typing.is_typeddict(hint):
        properties = {key: type_description(value) for key, value in typing.get_type_hints(hint).items()}
        return {"type": "dict", "properties": properties}
    if _is_ndarray(origin):  # numpy.typing.NDArray[...] is np.ndarray[Any, np.dtype[...]]
        description = {"type": "ndarray"}
        item = _numpy_item_type(args[1]) if len(args) == 2 else None
        if item is not None:
            description["item_type"] = item
        return description
    if _is_ndarray(hint):
        return {"type": "ndarray"}  # any shape
    if origin is typing.Literal and args and all(type(a) is type(args[0]) for a in args):
        return type_description(type(args[0]))
    return _python_object(hint)


def argument_type(hint: Any, description: str = "") -> dict[str, Any]:
    result = type_description(hint)
    if description:
        result["description"] = description
    return result


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class FunctionSignature:
    """What ``describe`` reads from a function: its inputs, parameters (defaults) and output."""

    input: dict[str, Any]
    output: dict[str, Any]
    parameters: dict[str, Any]
    unpack: bool


def function_signature(function: Callable[..., Any]) -> FunctionSignature:
    """Inputs: positional parameters without default (several: a tuple, ``unpack``); defaults: parameters."""
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: fall back to python objects
        hints = {}
    inputs: list[tuple[str, Any]] = []
    parameters: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{function.__qualname__}: *{param.name} cannot be described; name the arguments")
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if param.default is inspect.Parameter.empty:
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(
                    f"{function.__qualname__}: keyword-only argument {param.name!r} needs a default"
                )
            inputs.append((param.name, hints.get(param.name, Any)))
        elif _json_value(param.default):
            parameters[param.name] = param.default
    output = argument_type(hints.get("return", Any), f"Output of {function.__name__}")
    if len(inputs) == 1:
        (param_name, hint) = inputs[0]
        return FunctionSignature(argument_type(hint, param_name), output, parameters, unpack=False)
    element_types = [argument_type(hint, param_name) for param_name, hint in inputs]
    names = ", ".join(param_name for param_name, _ in inputs)
    tuple_type = {"type": "tuple", "element_types": element_types, "description": f"Arguments ({names})"}
    return FunctionSignature(tuple_type, output, parameters, unpack=True)


# -- Python functions --------------------------------------------------------------------------------------


def _module_files(function: Callable[..., Any]) -> tuple[str, dict[str, bytes], str]:
    """``(module name, files to ship, source of the module)`` for the module defining ``function``."""
    module_name = function.__module__
    if not module_name or module_name == "__main__":
        raise ValueError(
            f"{function.__qualname__} is defined in __main__; move it into a module file to publish it"
        )
    if "<locals>" in function.__qualname__ or function.__name__ == "<lambda>":
        raise ValueError(f"{function.__qualname__} is not importable: define it at the top level of a module")
    try:
        source_file = inspect.getsourcefile(function)
    except TypeError:
        source_file = None
    if source_file is None or not Path(source_file).is_file():
        raise ValueError(f"{function.__qualname__} has no module file to ship (got {source_file!r})")
    path = Path(source_file)
    parts = module_name.split(".")
    is_package = path.name == "__init__.py"
    if is_package:
        rel = PurePosixPath(*parts, "__init__.py")
    else:
        rel = PurePosixPath(*parts[:-1], f"{parts[-1]}.py")
    files = {str(rel): path.read_bytes()}
    # Parent packages: ship their __init__.py so the dotted module imports in the worker.
    package_dir = path.parent.parent if is_package else path.parent
    for depth in range(len(parts) - 1, 0, -1):
        init = package_dir / "__init__.py"
        content = init.read_bytes() if init.is_file() else b""
        files[str(PurePosixPath(*parts[:depth], "__init__.py"))] = content
        package_dir = package_dir.parent
    return module_name, files, path.read_text()


def function_types(function: Callable[..., Any], autobatch: bool = False) -> FunctionSignature:
    """``function_signature``, for a servable calling ``function`` once per element of a list with
    ``autobatch`` (then the input and output are lists of what the hints say). ``dlhub init --function``
    writes these too."""
    signature = function_signature(function)
    if autobatch:
        signature.input = {"type": "list", "item_type": signature.input, "description": "A batch of inputs"}
        signature.output = {
            "type": "list",
            "item_type": signature.output,
            "description": "One output per input",
        }
    return signature


def _describe_function(function: Callable[..., Any], autobatch: bool, common: dict[str, Any]) -> Described:
    module_name, files, source = _module_files(function)
    signature = function_types(function, autobatch)
    input_type, output_type = signature.input, signature.output
    top = module_name.partition(".")[0]
    doc = base_document(
        files={"other": sorted(files)},
        dependencies=module_dependencies(source, exclude=[top]),
        **common,
    )
    doc["servable"] = {
        "type": "Python static method",
        "shim": "python.PythonStaticMethodServable",
        "model_type": "Python function",
        "model_summary": f"{module_name}.{function.__qualname__}{inspect.signature(function)}",
        "methods": {
            "run": {
                "input": input_type,
                "output": output_type,
                "parameters": signature.parameters,
                "method_details": {
                    "module": module_name,
                    "method_name": function.__qualname__,
                    "autobatch": autobatch,
                    "unpack": signature.unpack,
                },
            }
        },
    }
    return Described(doc, files)


# -- scikit-learn ------------------------------------------------------------------------------------------


def is_sklearn_estimator(model: Any) -> bool:
    """Whether ``model`` is a scikit-learn estimator instance (without importing scikit-learn)."""
    if isinstance(model, type) or "sklearn" not in sys.modules:
        return False
    from sklearn.base import BaseEstimator

    return isinstance(model, BaseEstimator)


def _label_type(values: Any) -> dict[str, Any] | None:
    kind = getattr(getattr(values, "dtype", None), "kind", "")
    names = {"b": "boolean", "i": "integer", "u": "integer", "f": "float", "U": "string"}
    return {"type": names[kind]} if kind in names else None


def _json_labels(classes: Any) -> list[Any]:
    labels = classes.tolist() if hasattr(classes, "tolist") else list(classes)
    return [_json_labels(c) if hasattr(c, "tolist") and not isinstance(c, str) else c for c in labels]


def _serialize(model: Any, method: str) -> tuple[str, bytes]:
    if method == "pickle":
        return "model.pkl", pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    if method == "joblib":
        import joblib

        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        return "model.joblib", buffer.getvalue()
    expected = ", ".join(SERIALIZATION_METHODS)
    raise ValueError(f"serialization_method must be one of {expected}, got {method!r}")


def _describe_sklearn(model: Any, serialization_method: str, common: dict[str, Any]) -> Described:
    from sklearn.base import is_classifier

    n_features = getattr(model, "n_features_in_", None)
    if not isinstance(n_features, int):
        raise ValueError(f"{type(model).__name__} is not fitted (no n_features_in_): fit it first")
    model_path, content = _serialize(model, serialization_method)
    model_type = type(model).__name__
    classifier = bool(is_classifier(model))
    classes = getattr(model, "classes_", None) if classifier else None
    options: dict[str, Any] = {"serialization_method": serialization_method, "is_classifier": classifier}
    input_type = {
        "type": "ndarray",
        "shape": [None, n_features],
        "item_type": {"type": "float"},
        "description": f"List of records to evaluate with the model. Each record is a list of {n_features} "
        "variables.",
    }
    n_outputs = getattr(model, "n_outputs_", 1)
    multi_output = isinstance(n_outputs, int) and n_outputs > 1
    predict_output: dict[str, Any] = {
        "type": "ndarray",
        "shape": [None, n_outputs] if multi_output else [None],
        "description": "Predicted class of each record" if classifier else "Predicted value of each record",
    }
    if classes is not None:
        labels = _json_labels(classes)
        options["classes"] = labels
        item = _label_type(classes) if not multi_output else None
        if item is not None:
            predict_output["item_type"] = item
    elif not classifier:
        predict_output["item_type"] = {"type": "float"}
    methods: dict[str, Any] = {
        "run": {
            "input": input_type,
            "output": predict_output,
            "parameters": {},
            "method_details": {"method_name": "predict"},
        }
    }
    if classifier and classes is not None and not multi_output and hasattr(model, "predict_proba"):
        n_classes = len(options["classes"])
        methods["predict_proba"] = {
            "input": dict(input_type),
            "output": {
                "type": "ndarray",
                "shape": [None, n_classes],
                "item_type": {"type": "float"},
                "description": f"Probabilities for membership in each of {n_classes} classes",
            },
            "parameters": {},
            "method_details": {"method_name": "predict_proba"},
        }
    distributions = list(SKLEARN_DISTRIBUTIONS)
    own = importlib_metadata.packages_distributions().get(type(model).__module__.partition(".")[0], [])
    distributions.extend(d for d in own if d not in distributions)
    doc = base_document(files={"model": model_path}, dependencies=installed_versions(distributions), **common)
    doc["servable"] = {
        "type": "Scikit-learn estimator",
        "shim": "sklearn.ScikitLearnServable",
        "model_type": model_type,
        "model_summary": repr(model),
        "methods": methods,
        "options": options,
    }
    return Described(doc, {model_path: content})


# -- neural networks: Keras and PyTorch ---------------------------------------------------------------------

SUMMARY_LIMIT = 10000
"""Longest ``model_summary`` kept (the DLHub SDK's limit): summaries of large networks run to megabytes."""


def _array_type(shape: Sequence[Any], dtype: Any, description: str, *, batch: bool = True) -> dict[str, Any]:
    """An ``ndarray`` type of ``shape`` (the first axis any size when ``batch``) and the dtype's item type."""
    dims: list[int | None] = [d if isinstance(d, int) else None for d in shape]
    if batch and dims:
        dims[0] = None
    result: dict[str, Any] = {"type": "ndarray", "description": description, "shape": dims}
    item = _dtype_item_type(dtype)
    if item is not None:
        result["item_type"] = item
    return result


def _dtype_item_type(dtype: Any) -> dict[str, Any] | None:
    """``float`` for floating dtypes (the loaders use the model's own width), ``integer``, ``boolean``."""
    import numpy as np

    name = str(dtype).removeprefix("torch.")
    try:
        kind = np.dtype(name).kind
    except TypeError:
        return None
    names = {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "c": "complex"}
    return {"type": names[kind]} if kind in names else None


def _one_or_tuple(types: list[dict[str, Any]], what: str) -> dict[str, Any]:
    if len(types) == 1:
        return types[0]
    return {"type": "tuple", "description": f"Tuple of {what}", "element_types": types}


def _nn_document(
    common: dict[str, Any], model_file: str, modules: Sequence[str], servable: dict[str, Any]
) -> dict[str, Any]:
    """The document of a neural network; ``modules`` are the top-level modules it needs (``tensorflow`` may
    be installed as the ``tensorflow-cpu`` distribution: the installed one is recorded)."""
    mapping = importlib_metadata.packages_distributions()
    distributions = [dist for module in modules for dist in mapping.get(module, [module])]
    doc = base_document(files={"model": model_file}, dependencies=installed_versions(distributions), **common)
    doc["servable"] = {"model_type": "Deep NN", **servable}
    return doc


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras model instance (without importing Keras)."""
    if isinstance(model, type) or "keras" not in sys.modules:
        return False
    import keras

    return isinstance(model, keras.Model)


def _keras_summary(model: Any) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(str(line)))
    summary = "\n".join(lines)
    return summary[:SUMMARY_LIMIT] + "<<TRUNCATED>>" if len(summary) > SUMMARY_LIMIT else summary


def _describe_keras(model: Any, common: dict[str, Any]) -> Described:
    import tempfile

    import keras

    if not model.inputs:
        raise ValueError(
            f"the Keras model {model.name!r} is not built: call it or build it with an Input first"
        )
    with tempfile.TemporaryDirectory(prefix="dlhub-describe-") as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        content = path.read_bytes()
    inputs = [_array_type(t.shape, t.dtype, f"Input {t.name}") for t in model.inputs]
    output_names = [str(n) for n in getattr(model, "output_names", None) or []]
    outputs = [_array_type(t.shape, t.dtype, "Output") for t in model.outputs]
    if len(output_names) == len(outputs):
        for name, output in zip(output_names, outputs, strict=True):
            output["description"] = f"Output {name}"
    input_type = _one_or_tuple(inputs, "inputs")
    methods: dict[str, Any] = {
        "run": {
            "input": input_type,
            "output": _one_or_tuple(outputs, "outputs"),
            "parameters": {},
            "method_details": {"method_name": "predict"},
        }
    }
    if len(outputs) > 1 and len(output_names) == len(outputs):
        for name, output in zip(output_names, outputs, strict=True):
            if name.isidentifier() and name not in methods:
                methods[name] = {
                    "input": input_type,
                    "output": output,
                    "parameters": {},
                    "method_details": {"method_name": "predict", "output_name": name},
                }
    backend = keras.backend.backend()
    modules = ["keras", "numpy", "h5py", backend]
    doc = _nn_document(
        common,
        "model.keras",
        modules,
        {
            "type": "Keras Model",
            "shim": "keras.KerasServable",
            "model_summary": _keras_summary(model),
            "methods": methods,
        },
    )
    return Described(doc, {"model.keras": content})


def is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` instance (without importing PyTorch)."""
    if isinstance(model, type) or "torch" not in sys.modules:
        return False
    import torch

    return isinstance(model, torch.nn.Module)


@dataclass
class TorchInput:
    """What the caller says about a PyTorch module's input: an example, or a shape and dtype."""

    example: Any
    shape: Sequence[int | None] | None
    dtype: str

    def tensors(self) -> tuple[Any, ...] | None:
        """The example as a tuple of tensors (one per argument of ``forward``), if there is one."""
        import torch

        if self.example is None:
            return None
        parts = self.example if isinstance(self.example, tuple | list) else (self.example,)
        return tuple(p if isinstance(p, torch.Tensor) else torch.as_tensor(p) for p in parts)


def _torchscript(model: Any, example: tuple[Any, ...] | None) -> Any:
    """``torch.jit.script(model)``; when TorchScript cannot compile it, ``torch.jit.trace`` on the example."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export; it is still what the worker loads.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.script(model)
        except Exception as exc:
            if example is None:
                reason = (str(exc).splitlines() or [""])[0]
                raise ValueError(
                    f"TorchScript cannot compile {type(model).__name__} ({type(exc).__name__}: {reason}); "
                    "pass example=<input> to trace it instead"
                ) from exc
        return torch.jit.trace(model, example)


def _describe_torch(model: Any, given: TorchInput, common: dict[str, Any]) -> Described:
    import warnings

    import torch

    example = given.tensors()
    if example is None and given.shape is None:
        raise ValueError("describing a PyTorch module needs example=<input> or input_shape=[...]")
    was_training = model.training
    model.eval()
    try:
        compiled = _torchscript(model, example)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(compiled, buffer)
        if example is not None:
            inputs = [_array_type(t.shape, t.dtype, "Tensor") for t in example]
            with torch.inference_mode():
                result = model(*example)
            results = list(result) if isinstance(result, tuple | list) else [result]
            outputs = [_array_type(r.shape, r.dtype, "Tensor") for r in results]
        else:
            inputs = [_array_type(list(given.shape or ()), given.dtype, "Tensor", batch=False)]
            outputs = [{"type": "ndarray", "description": "Tensor"}]
    finally:
        model.train(was_training)
    doc = _nn_document(
        common,
        "model.pt",
        ["torch", "numpy"],
        {
            "type": "Torch Model",
            "shim": "torch.TorchServable",
            "model_summary": str(model)[:SUMMARY_LIMIT],
            "methods": {
                "run": {
                    "input": _one_or_tuple(inputs, "tensors"),
                    "output": _one_or_tuple(outputs, "tensors"),
                    "parameters": {},
                    "method_details": {"method_name": "__call__"},
                }
            },
        },
    )
    return Described(doc, {"model.pt": buffer.getvalue()})


__all__ = [
    "Described",
    "argument_type",
    "describe",
    "function_signature",
    "imported_top_level_modules",
    "installed_versions",
    "is_keras_model",
    "is_torch_module",
    "module_dependencies",
    "type_description",
]
