"""``sklearn.ScikitLearnServable``: a pickled or joblib-dumped scikit-learn estimator.

The model file is ``dlhub.files.model`` (default ``model.pkl``), read with ``servable.options
.serialization_method`` (``pickle`` or ``joblib``). Each method calls the estimator attribute named by its
``method_details.method_name`` (``run`` defaults to ``predict``) on ``numpy.asarray(inputs)``.

Unpickling runs code from the model file; that is why it happens only here, inside the executor process.
"""

from __future__ import annotations

import pickle
from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.worker.servables.base import Servable, ServableLoadError, servable_section

SERIALIZATION_METHODS = ("pickle", "joblib")


class ScikitLearnServable(Servable):
    shim = "sklearn.ScikitLearnServable"

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self._method_names: dict[str, str] = {}

    def _load(self) -> None:
        options = servable_section(self.metadata).get("options") or {}
        serialization = (
            options.get("serialization_method", "pickle") if isinstance(options, dict) else "pickle"
        )
        if serialization not in SERIALIZATION_METHODS:
            raise ValidationFailed(
                f"unsupported serialization_method {serialization!r}; expected one of "
                f"{', '.join(SERIALIZATION_METHODS)}",
                field="servable.options.serialization_method",
            )
        path = self.files_entry("model") or self.files_dir / "model.pkl"
        try:
            if serialization == "joblib":
                import joblib

                self.model = joblib.load(path)
            else:
                with path.open("rb") as stream:
                    self.model = pickle.load(stream)
        except FileNotFoundError as exc:
            raise ServableLoadError(f"model file {path.name!r} not found in the servable's files") from exc
        except Exception as exc:
            raise ServableLoadError(
                f"cannot load model file {path.name!r} with {serialization}: {type(exc).__name__}: {exc}"
            ) from exc
        for method in self.methods:
            name = self.method_details(method).get("method_name") or (
                "predict" if method == "run" else method
            )
            if not isinstance(name, str) or not callable(getattr(self.model, name, None)):
                raise ServableLoadError(
                    f"method {method!r}: the {type(self.model).__name__} model has no method {name!r}"
                )
            self._method_names[method] = name

    def invoke(self, method: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        import numpy as np

        return getattr(self.model, self._method_names[method])(np.asarray(inputs), **parameters)
