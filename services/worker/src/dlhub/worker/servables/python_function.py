"""``python.PythonStaticMethodServable``: a plain Python function from a module shipped in ``files/``.

``method_details``: ``module`` (dotted; a ``.py`` file or package inside the files directory, or an installed
module), ``method_name`` (attribute path inside it), ``autobatch`` (call once per element of the input list)
and ``unpack`` (spread the inputs as positional arguments).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError


class PythonStaticMethodServable(Servable):
    shim = "python.PythonStaticMethodServable"

    def __init__(self) -> None:
        super().__init__()
        self._functions: dict[str, tuple[Callable[..., Any], bool, bool]] = {}

    def _load(self) -> None:
        for method in self.methods:
            details = self.method_details(method)
            module_name = details.get("module")
            function_name = details.get("method_name")
            field = f"servable.methods.{method}.method_details"
            if not isinstance(module_name, str) or not module_name:
                raise ValidationFailed(f"{field}.module is required for {self.shim}", field=f"{field}.module")
            if not isinstance(function_name, str) or not function_name:
                raise ValidationFailed(
                    f"{field}.method_name is required for {self.shim}", field=f"{field}.method_name"
                )
            module = import_servable_module(module_name, self._module_roots(module_name))
            function = resolve_attribute(module, module_name, function_name)
            self._functions[method] = (function, bool(details.get("autobatch")), bool(details.get("unpack")))

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        function, autobatch, unpack = self._functions[method]
        return call_python(function, method, inputs, parameters, autobatch=autobatch, unpack=unpack)

    def _module_roots(self, module_name: str) -> list[Path]:
        return module_roots(self.files_dir, self.metadata, module_name)


def call_python(
    function: Callable[..., Any],
    method: str,
    inputs: Any,
    parameters: dict[str, Any],
    *,
    autobatch: bool,
    unpack: bool,
) -> Any:
    """Call ``function`` with the DLHub conventions: ``autobatch`` maps it over a list of inputs and
    ``unpack`` spreads each input as positional arguments; ``parameters`` are keyword arguments."""
    if autobatch:
        if not isinstance(inputs, list | tuple):
            raise ValidationFailed(
                f"method {method!r} is autobatched and expects a list of inputs, got {type(inputs).__name__}",
                field="inputs",
            )
        if unpack:
            return [function(*_as_args(x, method), **parameters) for x in inputs]
        return [function(x, **parameters) for x in inputs]
    if unpack:
        return function(*_as_args(inputs, method), **parameters)
    return function(inputs, **parameters)


def module_roots(files_dir: Path, metadata: dict[str, Any], module_name: str) -> list[Path]:
    """Directories (inside ``files/``) that may hold ``module_name``, most likely first.

    The files directory itself, then the directory of any ``dlhub.files`` entry that is the module's file
    (a package may keep its code in a sub-directory, e.g. ``other: ["src/mymod.py"]``).
    """
    roots = [files_dir]
    relative = Path(*module_name.split("."))
    files = (metadata.get("dlhub") or {}).get("files") or {}
    entries: list[str] = []
    if isinstance(files, dict):
        for value in files.values():
            if isinstance(value, str):
                entries.append(value)
            elif isinstance(value, list):
                entries.extend(v for v in value if isinstance(v, str))
    for entry in entries:
        path = Path(entry)
        for candidate in (relative.with_suffix(".py"), relative / "__init__.py"):
            n = len(candidate.parts)
            if len(path.parts) > n and path.parts[-n:] == candidate.parts:
                root = files_dir.joinpath(*path.parts[:-n])
                if root not in roots:
                    roots.append(root)
    return roots


def _as_args(value: Any, method: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValidationFailed(
            f"method {method!r} unpacks its inputs and expects a list of arguments, "
            f"got {type(value).__name__}",
            field="inputs",
        )
    return value


def resolve_attribute(module: ModuleType, module_name: str, path: str) -> Callable[..., Any]:
    target: Any = module
    for part in path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ServableLoadError(f"module {module_name!r} has no attribute {path!r}") from exc
    if not callable(target):
        raise ServableLoadError(f"{module_name}.{path} is not callable")
    function: Callable[..., Any] = target
    return function


def shipped_root(module_name: str, roots: list[Path]) -> Path | None:
    """The first of ``roots`` that holds the top-level package of ``module_name``, if any does."""
    top = module_name.partition(".")[0]
    return next((root for root in roots if _module_location(root, top) is not None), None)


def _module_location(root: Path, top: str) -> tuple[Path, bool] | None:
    """``(file, is_package)`` of top-level module ``top`` inside ``root``, if it is there."""
    package_init = root / top / "__init__.py"
    if package_init.is_file():
        return package_init, True
    module_file = root / f"{top}.py"
    if module_file.is_file():
        return module_file, False
    return None


def _belongs_to(module: ModuleType, root: Path) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    try:
        return Path(file).resolve().is_relative_to(root.resolve())
    except OSError:
        return False


@contextlib.contextmanager
def first_on_sys_path(root: Path) -> Iterator[None]:
    """Put ``root`` first on ``sys.path`` while importing, then last (for imports made at call time)."""
    entry = str(root)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)
        if entry not in sys.path:
            sys.path.append(entry)


def import_servable_module(module_name: str, roots: list[Path]) -> ModuleType:
    """Import ``module_name`` from the first of ``roots`` holding it, else as an installed module.

    When the top-level name is already taken by a different module (another servable shipped its own
    ``model.py``), this servable's copy is imported under a unique name derived from its directory, so two
    servables never share, or clobber, each other's module.
    """
    top, _, rest = module_name.partition(".")
    found = next(((root, loc) for root in roots if (loc := _module_location(root, top)) is not None), None)
    try:
        if found is None:
            return importlib.import_module(module_name)
        root, (file, is_package) = found
        existing = sys.modules.get(top)
        if existing is None or _belongs_to(existing, root):
            with first_on_sys_path(root):
                return importlib.import_module(module_name)
        unique = f"_dlhub_{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}_{top}"
        with first_on_sys_path(root):
            if unique not in sys.modules:
                _exec_as(unique, file, is_package)
            return importlib.import_module(f"{unique}.{rest}") if rest else sys.modules[unique]
    except ServableLoadError:
        raise
    except (Exception, SystemExit) as exc:
        raise ServableLoadError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def _exec_as(name: str, file: Path, is_package: bool) -> None:
    locations = [str(file.parent)] if is_package else None
    spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ServableLoadError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
