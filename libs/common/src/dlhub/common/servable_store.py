"""Layout of the servable store shared by the builder (writes) and workers (read).

``<root>/<owner>/<name>/<version>/metadata.json`` holds the published document and ``files/`` the package.
A version directory appears atomically (renamed from ``<root>/.staging``) so a worker never sees half of it.
A version with its own environment also holds ``environment.json`` (``dlhub.common.environments``) and
``build.json``; ``<root>/.builds/<owner>/<name>/<version>.json`` is the build record while it builds and
after it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

METADATA_FILENAME: Final = "metadata.json"
FILES_DIRNAME: Final = "files"
STAGING_DIRNAME: Final = ".staging"
BUILDS_DIRNAME: Final = ".builds"


def version_dir(root: Path, owner: str, name: str, version: int) -> Path:
    return root / owner / name / str(version)


def staging_dir(root: Path) -> Path:
    return root / STAGING_DIRNAME


def build_record_path(root: Path, owner: str, name: str, version: int) -> Path:
    """The build record of a version (states, timestamps, log), kept for failed builds too."""
    return root / BUILDS_DIRNAME / owner / name / f"{version}.json"
