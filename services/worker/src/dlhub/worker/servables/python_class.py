"""``python.PythonClassMethodServable``: methods of one Python object, restored or built once per process.

The object comes from either

- a serialized object (what the DLHub SDK's ``PythonClassMethodModel`` ships): ``dlhub.files.pickle`` (the
  SDK's role name) or ``dlhub.files.model``, read with ``servable.options.serialization_method`` (``pickle``
  or ``joblib``; by default ``joblib`` for a ``.joblib`` file and ``pickle`` otherwise). Classes that the
  pickle names and that live in a module shipped in ``files/`` are imported from there (see
  ``python_function.import_servable_module``), so two servables shipping the same module name do not mix;
  ``joblib`` files only get ``files/`` on ``sys.path`` while they load.
- or, when no serialized object is given, a class imported from a module: ``method_details.module``
  (dotted; shipped in ``files/`` or installed) and ``method_details.class_name`` (``"Class"``, or
  ``"module.Class"`` when ``module`` is absent), constructed with the keyword arguments
  ``method_details.init`` (or ``servable.options.init``).

The object settings (``class_name``, ``module``, ``init``) are read from the ``run`` method; another method
may repeat them but not contradict them. Every method calls the object attribute named by its
``method_details.method_name`` (an attribute path such as ``"model.predict"``; methods other than ``run``
default to their own name) with the ``python.PythonStaticMethodServable`` conventions: ``autobatch``,
``unpack`` and the merged ``parameters`` as keyword arguments.

Unpickling and constructing run the publisher's code: that is why they happen only here, inside the executor.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError, servable_section
from dlhub.worker.servables.python_function import (
    call_python,
    first_on_sys_path,
    import_servable_module,
    module_roots,
    resolve_attribute,
    shipped_root,
)

SERIALIZATION_METHODS = ("pickle", "joblib")
OBJECT_SETTINGS = ("class_name", "module", "init")


class PythonClassMethodServable(Servable):
    shim = "python.PythonClassMethodServable"

    def __init__(self) -> None:
        super().__init__()
        self.obj: Any = None
        self._functions: dict[str, tuple[Callable[..., Any], bool, bool]] = {}

    def _load(self) -> None:
        if "run" not in self.methods:
            raise ValidationFailed(f"{self.shim} requires a 'run' method", field="servable.methods.run")
        settings = self._object_settings()
        path = self.files_entry("pickle") or self.files_entry("model")
        if path is not None:
            self.obj = self._restore(path)
            self._check_class(settings.get("class_name"))
        else:
            self.obj = self._construct(settings)
        for method in self.methods:
            details = self.method_details(method)
            name = details.get("method_name") or (None if method == "run" else method)
            field = f"servable.methods.{method}.method_details.method_name"
            if not isinstance(name, str) or not name:
                raise ValidationFailed(f"{field} is required for {self.shim}", field=field)
            self._functions[method] = (
                self._bound_method(method, name),
                bool(details.get("autobatch")),
                bool(details.get("unpack")),
            )

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        function, autobatch, unpack = self._functions[method]
        return call_python(function, method, inputs, parameters, autobatch=autobatch, unpack=unpack)

    # -- the object ------------------------------------------------------------------------------------------

    def _object_settings(self) -> dict[str, Any]:
        """``class_name``/``module``/``init`` of ``run``; other methods may only repeat them."""
        settings = {k: v for k, v in self.method_details("run").items() if k in OBJECT_SETTINGS}
        if "init" not in settings:
            options = servable_section(self.metadata).get("options") or {}
            if isinstance(options, dict) and "init" in options:
                settings["init"] = options["init"]
        for method in self.methods:
            details = self.method_details(method)
            for key in OBJECT_SETTINGS:
                if key in details and details[key] != settings.get(key):
                    field = f"servable.methods.{method}.method_details.{key}"
                    raise ValidationFailed(
                        f"{field} differs from the 'run' method's: every method of a {self.shim} calls the "
                        "same object",
                        field=field,
                    )
        return settings

    def _serialization(self, path: Path) -> str:
        options = servable_section(self.metadata).get("options") or {}
        default = "joblib" if path.suffix == ".joblib" else "pickle"
        method = options.get("serialization_method", default) if isinstance(options, dict) else default
        if method not in SERIALIZATION_METHODS:
            raise ValidationFailed(
                f"unsupported serialization_method {method!r}; expected one of "
                f"{', '.join(SERIALIZATION_METHODS)}",
                field="servable.options.serialization_method",
            )
        return str(method)

    def _restore(self, path: Path) -> Any:
        serialization = self._serialization(path)
        try:
            if serialization == "joblib":
                import joblib

                with first_on_sys_path(self.files_dir):
                    return joblib.load(path)
            with path.open("rb") as stream:
                return _ServableUnpickler(stream, self.files_dir, self.metadata).load()
        except FileNotFoundError as exc:
            raise ServableLoadError(f"object file {path.name!r} not found in the servable's files") from exc
        except ServableLoadError:
            raise
        except (Exception, SystemExit) as exc:
            raise ServableLoadError(
                f"cannot load object file {path.name!r} with {serialization}: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_class(self, class_name: Any) -> None:
        """The SDK records ``module.Class`` of the pickled object: the restored object must be one."""
        if not isinstance(class_name, str) or not class_name:
            return
        expected = class_name.rpartition(".")[2]
        actual = type(self.obj).__name__
        if expected != actual:
            raise ServableLoadError(
                f"the object file holds a {actual}, but method_details.class_name is {class_name!r}"
            )

    def _construct(self, settings: dict[str, Any]) -> Any:
        field = "servable.methods.run.method_details"
        class_name = settings.get("class_name")
        module_name = settings.get("module")
        if not isinstance(class_name, str) or not class_name:
            raise ValidationFailed(
                f"{self.shim} needs an object file (dlhub.files.pickle or dlhub.files.model) or "
                f"{field}.class_name (with {field}.module) to construct the object",
                field=f"{field}.class_name",
            )
        if not module_name:
            module_name, _, class_name = class_name.rpartition(".")
        if not isinstance(module_name, str) or not module_name:
            raise ValidationFailed(
                f"{field}.module is required when class_name {class_name!r} is not module-qualified",
                field=f"{field}.module",
            )
        init = settings.get("init") or {}
        if not isinstance(init, dict) or not all(isinstance(k, str) for k in init):
            raise ValidationFailed(
                f"{field}.init must be an object of keyword arguments", field=f"{field}.init"
            )
        module = import_servable_module(module_name, module_roots(self.files_dir, self.metadata, module_name))
        cls = resolve_attribute(module, module_name, class_name)
        try:
            return cls(**init)
        except (Exception, SystemExit) as exc:
            raise ServableLoadError(
                f"cannot construct {module_name}.{class_name}: {type(exc).__name__}: {exc}"
            ) from exc

    def _bound_method(self, method: str, name: str) -> Callable[..., Any]:
        target: Any = self.obj
        for part in name.split("."):
            target = getattr(target, part, None)
            if target is None:
                break
        if not callable(target):
            public = sorted(
                n for n in dir(self.obj) if not n.startswith("_") and callable(getattr(self.obj, n))
            )
            raise ServableLoadError(
                f"method {method!r}: the {type(self.obj).__name__} object has no method {name!r}; "
                f"its methods: {', '.join(public) or 'none'}"
            )
        function: Callable[..., Any] = target
        return function


class _ServableUnpickler(pickle.Unpickler):
    """Resolve classes from modules shipped in the servable's files with the servable's own import."""

    def __init__(self, stream: IO[bytes], files_dir: Path, metadata: dict[str, Any]) -> None:
        super().__init__(stream)
        self._files_dir = files_dir
        self._metadata = metadata

    def find_class(self, module: str, name: str) -> Any:
        roots = module_roots(self._files_dir, self._metadata, module)
        if shipped_root(module, roots) is None:
            return super().find_class(module, name)
        target: Any = import_servable_module(module, roots)
        for part in name.split("."):
            target = getattr(target, part)
        return target
