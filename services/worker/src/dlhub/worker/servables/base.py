"""The one abstract base every servable loader implements, plus the metadata helpers they share."""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any

from dlhub.common.errors import NotFound, ServableError, ValidationFailed
from dlhub.common.servable_store import FILES_DIRNAME, METADATA_FILENAME


class ServableLoadError(ServableError):
    """The servable could not be loaded (missing file, module that fails to import, unreadable model).

    Raised ``from`` the underlying exception, whose type becomes the error's ``exception_type``.
    """


class Servable(abc.ABC):
    """A loaded servable: ``load`` once per process (expensive), then ``invoke`` many times (cheap)."""

    shim: str = ""

    def __init__(self) -> None:
        self.version_dir = Path()
        self.metadata: dict[str, Any] = {}
        self.methods: dict[str, dict[str, Any]] = {}

    @property
    def files_dir(self) -> Path:
        return self.version_dir / FILES_DIRNAME

    def load(self, version_dir: Path, metadata: dict[str, Any]) -> None:
        """Read the method table, then let the subclass load its model (``_load``)."""
        self.version_dir = version_dir
        self.metadata = metadata
        self.methods = servable_section(metadata).get("methods") or {}
        if not isinstance(self.methods, dict) or not all(isinstance(m, dict) for m in self.methods.values()):
            raise ValidationFailed(
                "servable.methods must map method names to objects", field="servable.methods"
            )
        self._load()

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model from ``files_dir`` using ``metadata``."""

    @abc.abstractmethod
    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        """Run ``method`` on decoded ``inputs`` with the merged keyword ``parameters``."""

    def method_spec(self, method: str) -> dict[str, Any]:
        """The metadata of ``method``; an unknown method is a validation error listing the known ones."""
        spec = self.methods.get(method)
        if spec is None:
            available = ", ".join(sorted(self.methods)) or "none"
            raise ValidationFailed(
                f"servable has no method {method!r}; available methods: {available}", field="method"
            )
        return spec

    def method_details(self, method: str) -> dict[str, Any]:
        details = self.method_spec(method).get("method_details") or {}
        if not isinstance(details, dict):
            raise ValidationFailed(
                f"servable.methods.{method}.method_details must be an object",
                field=f"servable.methods.{method}.method_details",
            )
        return details

    def merged_parameters(self, method: str, request_parameters: Any) -> dict[str, Any]:
        """The method's default ``parameters`` from the metadata, overridden by the request's."""
        defaults = self.method_spec(method).get("parameters") or {}
        if not isinstance(defaults, dict):
            defaults = {}
        if request_parameters is None:
            return dict(defaults)
        if not isinstance(request_parameters, dict) or not all(
            isinstance(k, str) for k in request_parameters
        ):
            raise ValidationFailed("parameters must be an object with string keys", field="parameters")
        return {**defaults, **request_parameters}

    def files_entry(self, role: str) -> Path | None:
        """The path of ``dlhub.files[role]`` inside the files directory, if the metadata names one."""
        files = (self.metadata.get("dlhub") or {}).get("files") or {}
        value = files.get(role) if isinstance(files, dict) else None
        if isinstance(value, str) and value:
            return self.files_dir / value
        return None


def servable_section(metadata: dict[str, Any]) -> dict[str, Any]:
    section = metadata.get("servable")
    if not isinstance(section, dict):
        raise ValidationFailed("metadata has no 'servable' section", field="servable")
    return section


def read_metadata(version_dir: Path) -> dict[str, Any]:
    """Read ``<version_dir>/metadata.json`` (the full publication document)."""
    path = version_dir / METADATA_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"servable metadata {path} does not exist") from exc
    except OSError as exc:
        raise ServableLoadError(f"cannot read servable metadata {path}: {exc}") from exc
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise ServableLoadError(f"servable metadata {path} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ServableLoadError(f"servable metadata {path} is not a JSON object")
    return metadata
