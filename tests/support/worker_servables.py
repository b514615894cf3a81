"""Servable directories for the worker tests, built by hand the way the builder lays them out.

``<root>/<owner>/<name>/<version>/metadata.json`` (the publication document) and ``files/`` (the package).
"""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

from dlhub.common.servable_store import FILES_DIRNAME, METADATA_FILENAME, version_dir

# The message limit of the executor pools the tests start (tests/conftest.py `pool` and the pool tests).
EXECUTOR_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

PYTHON_SHIM = "python.PythonStaticMethodServable"
SKLEARN_SHIM = "sklearn.ScikitLearnServable"

MYMOD = textwrap.dedent(
    """
    import os
    import pathlib
    import signal
    import time

    TAG = {tag!r}

    # Every import of this module appends the importing pid: the tests count loads with it.
    with (pathlib.Path(__file__).parent / "loads.log").open("a") as _log:
        _log.write(f"{{os.getpid()}}\\n")


    def add(x, y=1):
        return x + y


    def noop(x):
        return "hello world"


    def mul(a, b, scale=1):
        return a * b * scale


    def fail(x):
        raise ValueError(f"bad input {{x!r}}")


    def _inner_check(x):
        raise KeyError(f"no entry {{x!r}}")


    def nested_fail(x):
        return _inner_check(x)


    def deep_output(depth):
        value = 1
        for _ in range(depth):
            value = [value]
        return value


    def exit_hard(x):
        os._exit(3)


    def sigkill(x):
        os.kill(os.getpid(), signal.SIGKILL)


    def whoami(x):
        return {{"pid": os.getpid(), "module": __name__, "tag": TAG}}


    def echo(x, **kwargs):
        return {{"x": x, "kwargs": kwargs}}


    def double(x):
        import numpy as np

        return np.asarray(x) * 2


    def sleep(seconds):
        time.sleep(seconds)  # a slow servable (timeouts, pipelining: under test)
        return seconds


    def sleep_with_pidfile(spec):
        pathlib.Path(spec["pidfile"]).write_text(str(os.getpid()))
        time.sleep(spec["seconds"])  # still running when the test kills or times it out
        return "finished"


    def sleep_then_exit(seconds):
        time.sleep(seconds)  # runs a while, then exits the executor process (under test)
        os._exit(3)


    def touch(path):
        pathlib.Path(path).write_text("ran")
        return "touched"


    def noisy(x):
        print("a model printing to stdout")
        os.write(1, b"a model writing to fd 1 directly\\n")
        return x


    def unencodable(x):
        return object()
    """
)


def write_servable(
    root: Path,
    owner: str,
    name: str,
    version: int,
    *,
    shim: str,
    methods: dict[str, dict[str, Any]],
    files: dict[str, str | bytes] | None = None,
    dlhub_files: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write ``metadata.json`` and ``files/`` for one servable version; return the version directory."""
    directory = version_dir(root, owner, name, version)
    files_dir = directory / FILES_DIRNAME
    files_dir.mkdir(parents=True)
    for relative, content in (files or {}).items():
        path = files_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    metadata = {
        "dlhub": {
            "version": "2.1.0",
            "name": name,
            "domains": [],
            "visible_to": ["public"],
            "files": dlhub_files if dlhub_files is not None else {"other": sorted(files or {})},
            "dependencies": {"python": {}},
            "type": "servable",
        },
        "datacite": {"titles": [{"title": name}], "creators": [], "publisher": "DLHub"},
        "servable": {
            "type": "Python static method" if shim == PYTHON_SHIM else "Scikit-learn estimator",
            "shim": shim,
            "methods": methods,
            "options": options or {},
        },
    }
    (directory / METADATA_FILENAME).write_text(json.dumps(metadata))
    return directory


def function_method(
    function: str,
    *,
    module: str = "mymod",
    autobatch: bool = False,
    unpack: bool = False,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "input": {"type": "python object", "python_type": "object"},
        "output": {"type": "python object", "python_type": "object"},
        "parameters": parameters or {},
        "method_details": {
            "module": module,
            "method_name": function,
            "autobatch": autobatch,
            "unpack": unpack,
        },
    }


def write_function_servable(
    root: Path,
    name: str,
    *,
    version: int = 1,
    owner: str = "alice",
    tag: str = "A",
    methods: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A servable whose methods are the functions of ``mymod.py`` (method ``run`` = ``add`` by default)."""
    methods = methods or {"run": function_method("add")}
    return write_servable(
        root,
        owner,
        name,
        version,
        shim=PYTHON_SHIM,
        methods=methods,
        files={"mymod.py": MYMOD.format(tag=tag)},
    )


def load_count(directory: Path) -> int:
    """How many times a process imported this servable's ``mymod.py``."""
    log = directory / FILES_DIRNAME / "loads.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def train_iris_forest() -> Any:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    model = RandomForestClassifier(n_estimators=10, random_state=0)
    model.fit(data.data, data.target)
    return model


def write_sklearn_servable(root: Path, name: str, model: Any, *, serialization: str = "pickle") -> Path:
    """The SDK's iris example: ``run`` -> predict, ``predict_proba`` -> predict_proba."""
    if serialization == "joblib":
        import io

        import joblib

        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        filename, content = "model.joblib", buffer.getvalue()
    else:
        filename, content = "model.pkl", pickle.dumps(model)
    ndarray = {"type": "ndarray", "shape": [None, 4], "item_type": {"type": "float"}}
    return write_servable(
        root,
        "alice",
        name,
        1,
        shim=SKLEARN_SHIM,
        methods={
            "run": {
                "input": ndarray,
                "output": ndarray,
                "parameters": {},
                "method_details": {"method_name": "predict"},
            },
            "predict_proba": {
                "input": ndarray,
                "output": ndarray,
                "parameters": {},
                "method_details": {"method_name": "predict_proba"},
            },
        },
        files={filename: content},
        dlhub_files={"model": filename},
        options={"serialization_method": serialization, "is_classifier": True},
    )
