"""Requirements of the DLHub images, from the workspace members' pyproject.toml files (compose/Dockerfile).

    python3 requirements.py core     # all members' dependencies and build backends but the worker-only ones
    python3 requirements.py worker   # the worker's own dependencies that no other member needs (its ML stack)

The dlhub-* members themselves are left out; common's "service" and "environments" extras and the client's
"numpy" extra are included. Only the worker image gets the worker-only packages (scikit-learn and its
SciPy), so the broker, registry, builder and search images stay without them.
"""

from __future__ import annotations

import glob
import sys
import tomllib
from pathlib import Path
from typing import Any

EXTRAS = ("service", "environments", "numpy")
WORKER = "services/worker/pyproject.toml"


def requirements(pyproject: dict[str, Any]) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    found = list(project["dependencies"]) + [d for name in EXTRAS for d in optional.get(name, [])]
    return [d for d in found if not d.startswith("dlhub-")]


def main(argv: list[str]) -> int:
    if argv not in (["core"], ["worker"]):
        print(__doc__, file=sys.stderr)
        return 2
    files = {path: tomllib.loads(Path(path).read_text()) for path in sorted(glob.glob("*/*/pyproject.toml"))}
    others = {d for path, data in files.items() if path != WORKER for d in requirements(data)}
    worker_only = {d for d in requirements(files[WORKER]) if d not in others}
    if argv == ["worker"]:
        chosen = worker_only
    else:
        backends = {d for data in files.values() for d in data["build-system"]["requires"]}
        chosen = others | backends | (set(requirements(files[WORKER])) - worker_only)
    sys.stdout.write("".join(d + "\n" for d in sorted(chosen)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
