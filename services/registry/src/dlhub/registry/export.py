"""Exports: one version as a .tar.gz that runs with a plain Python venv, no DLHub server.

The archive (one top folder ``<owner>-<name>-<version>/``) holds:

- ``files/``: the package files, as the builder extracted them (regular files only);
- ``dlhub.json``: the version's metadata (the publication document as stored);
- ``requirements.lock`` for a version with its own environment: the very lock the builder installed
  (``uv pip compile --generate-hashes``: every package, exact versions and hashes), installed with
  ``pip install --require-hashes --no-deps``; for a shared-environment version ``requirements.txt`` instead:
  the packages it declared and the framework its loader needs, pinned to the versions installed alongside
  this registry (the deployment's worker environment in the single-image deployments), without hashes;
- ``runtime/dlhub/{common,worker}``: a copy of the executor's own sources. This is what every isolated
  environment runs with already (the worker puts the same copy on ``PYTHONPATH``; its only dependency is
  ``msgspec``, which every lock contains), so ``run.py`` loads the servable with the exact loader the server
  uses, for every servable type, instead of a re-implementation that could drift;
- ``run.py``: loads the servable with that runtime and prints the JSON output of one call;
- ``README.txt``: the commands (``export.json`` lists them for tools: ``dlhub export --run``);
- for a docker-backend version a ``Dockerfile`` rebuilding the image from the lock (the builder's recipe).

A docker-backend version also exports as an image (``dlhub.registry.image_export``): the built environment
image plus ``servable_members``, as a ``docker save`` tarball.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from typing import Any, Final

from dlhub.common.environments import (
    RUNTIME_PACKAGE,
    declaration,
    normalize_name,
    runtime_sources,
)
from dlhub.common.errors import BuildFailed, DLHubError, EnvironmentUnavailable
from dlhub.registry.store import StoredBuild, VersionRecord

LOCK_NAME: Final = "requirements.lock"
REQUIREMENTS_NAME: Final = "requirements.txt"
MANIFEST_NAME: Final = "export.json"
ENV_PREFIX: Final = "/opt/env"

_SHIM_PACKAGES: Final[dict[str, tuple[str, ...]]] = {
    "sklearn": ("scikit-learn", "numpy", "scipy", "joblib"),
    "keras": ("keras", "tensorflow", "numpy"),
    "tensorflow": ("tensorflow", "numpy"),
    "torch": ("torch", "numpy"),
    "onnx": ("onnxruntime", "numpy"),
}

RUN_PY: Final = '''#!/usr/bin/env python3
"""Run {label} without a DLHub server: python run.py '<json input>' [--method M] [--parameters JSON].

Loads the servable from files/ and dlhub.json with the DLHub executor's own loader (runtime/) and prints
the output as JSON, as the registry's run endpoint answers it.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "runtime"))

from dlhub.common.codec import to_json  # noqa: E402
from dlhub.worker.servables import SHIMS  # noqa: E402
from dlhub.worker.servables.base import servable_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", help="the input as JSON (use - to read it from stdin)")
    parser.add_argument("--method", default="run")
    parser.add_argument("--parameters", default="{{}}", help="method parameters as a JSON object")
    args = parser.parse_args()
    text = sys.stdin.read() if args.inputs == "-" else args.inputs
    metadata = json.loads((HERE / "dlhub.json").read_text())
    shim = servable_section(metadata).get("shim")
    servable = SHIMS[shim]()
    servable.load(HERE, metadata)
    parameters = servable.merged_parameters(args.method, json.loads(args.parameters))
    output = servable.invoke(args.method, json.loads(text), parameters)
    sys.stdout.write(to_json(output).decode() + "\\n")


if __name__ == "__main__":
    main()
'''


def export_filename(record: VersionRecord) -> str:
    return f"{record.owner}-{record.name}-{record.version}.tar.gz"


def export_folder(record: VersionRecord) -> str:
    return f"{record.owner}-{record.name}-{record.version}"


def run_commands(record: VersionRecord, build: StoredBuild, example: str = "<json input>") -> list[str]:
    """The shell commands that run the unpacked export (README.txt and ``dlhub export --run``)."""
    folder = export_folder(record)
    quoted = "'" + example.replace("'", "'\\''") + "'"
    commands = [f"tar xzf {export_filename(record)}", f"cd {folder}"]
    python = f"python{build.python}" if build.python else "python3"
    commands.append(f"{python} -m venv env")
    if build.lock:
        commands.append(f"env/bin/pip install --require-hashes --no-deps -r {LOCK_NAME}")
    else:
        commands.append(f"env/bin/pip install -r {REQUIREMENTS_NAME}")
    commands.append(f"env/bin/python run.py {quoted}")
    return commands


def shared_requirements(metadata: dict[str, Any]) -> list[str]:
    """A shared-environment version's requirements: what it declared and its loader's framework, pinned to
    the versions installed here, and the runtime's ``msgspec``."""
    try:
        declared = declaration(metadata, None).pins
    except BuildFailed:
        declared = {}
    servable = metadata.get("servable")
    shim = str(servable.get("shim") or "") if isinstance(servable, dict) else ""
    names = [*declared, *_SHIM_PACKAGES.get(shim.split(".")[0], ()), RUNTIME_PACKAGE]
    out: dict[str, str] = {}
    for name in names:
        key = normalize_name(name)
        if key in out:
            continue
        try:
            out[key] = f"{name}=={importlib_metadata.version(name)}"
        except importlib_metadata.PackageNotFoundError:
            spec = declared.get(name, "")
            out[key] = name + (spec if spec[:1] in "<>=!~" else f"=={spec}" if spec and spec != "*" else "")
    return list(out.values())


def dockerfile(build: StoredBuild) -> str:
    return (
        f"# Rebuilds the image of {build.servable} (environment {build.environment}) from its lock.\n"
        f"FROM {build.base_image}\n"
        f"COPY {LOCK_NAME} /tmp/{LOCK_NAME}\n"
        f"RUN python3 -m venv {ENV_PREFIX} \\\n"
        f" && {ENV_PREFIX}/bin/python -m pip install --no-cache-dir --no-input --disable-pip-version-check"
        f" --require-hashes --no-deps -r /tmp/{LOCK_NAME} \\\n"
        f" && rm /tmp/{LOCK_NAME}\n"
        "COPY . /servable\n"
        "WORKDIR /servable\n"
        f'ENTRYPOINT ["{ENV_PREFIX}/bin/python", "/servable/run.py"]\n'
    )


def readme(record: VersionRecord, build: StoredBuild) -> str:
    lines = [
        f"{record.label}, exported from DLHub on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "Run it with a plain Python venv (no DLHub server):",
        "",
        *(f"    {c}" for c in run_commands(record, build)),
        "",
        "run.py prints the output as JSON; --method and --parameters '<json object>' pick another method.",
        "",
    ]
    if build.lock:
        lines += [
            f"{LOCK_NAME} is the environment DLHub built for this version",
            f"({build.backend} {build.environment}, Python {build.python}): every package with its exact",
            "version and hashes.",
        ]
    else:
        lines += [
            "This version ran in the deployment's shared worker environment; requirements.txt pins what it",
            "declared and its framework to the versions installed next to the registry that exported it.",
        ]
    if build.backend == "docker":
        lines += [
            "",
            f"Dockerfile rebuilds its image: docker build -t {record.name}:{record.version} .",
            f"The built image itself: dlhub export {record.label} --image --run (docker load, docker run).",
        ]
    lines += ["", "files/ holds the package, dlhub.json the metadata, runtime/ the DLHub executor's loader."]
    return "\n".join(lines) + "\n"


def _package_members(package: bytes, package_format: str) -> Iterator[tuple[str, bytes]]:
    """(safe relative path, content) of every regular file of the package archive."""
    if not package:
        return
    if package_format == "zip" or package[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            for info in archive.infolist():
                name = _safe(info.filename)
                if name and not info.is_dir():
                    yield name, archive.read(info)
        return
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:*") as archive:
        for member in archive:
            name = _safe(member.name)
            if name and member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    yield name, handle.read()


def _safe(name: str) -> str:
    path = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    if path in ("", ".") or path == ".." or path.startswith("../"):
        return ""
    return path


def runtime_members() -> list[tuple[str, bytes]]:
    """``runtime/dlhub/{common,worker}/...``: the executor's sources, as every export carries them."""
    sources = runtime_sources()
    if len(sources) < 2:
        raise EnvironmentUnavailable("exports need the DLHub worker package installed next to the registry")
    out: list[tuple[str, bytes]] = []
    for source in sources:
        for path in sorted(source.rglob("*.py")):
            out.append(
                (f"runtime/dlhub/{source.name}/{path.relative_to(source).as_posix()}", path.read_bytes())
            )
    return out


def servable_members(
    record: VersionRecord, build: StoredBuild, package: bytes
) -> list[tuple[str, bytes, int]]:
    """(relative path, content, mode) of what runs the version: ``files/``, ``dlhub.json``, the lock (or
    pinned requirements), ``run.py`` and ``runtime/``; the same bytes for the same version (image exports
    digest them)."""
    runtime = runtime_members()
    members: list[tuple[str, bytes, int]] = []
    try:
        for name, data in _package_members(package, record.package_format):
            members.append((f"files/{name}", data, 0o644))
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise DLHubError(f"the stored package of {record.label} cannot be read: {exc}") from exc
    members.append(
        ("dlhub.json", json.dumps(record.metadata, indent=2, sort_keys=True).encode() + b"\n", 0o644)
    )
    if build.lock:
        members.append(
            (LOCK_NAME, build.lock.encode() + (b"" if build.lock.endswith("\n") else b"\n"), 0o644)
        )
    else:
        members.append(
            (REQUIREMENTS_NAME, ("\n".join(shared_requirements(record.metadata)) + "\n").encode(), 0o644)
        )
    members.append(("run.py", RUN_PY.format(label=record.label).encode(), 0o755))
    members.extend((name, data, 0o644) for name, data in runtime)
    return members


def export_archive(record: VersionRecord, build: StoredBuild, package: bytes) -> bytes:
    """The .tar.gz of one version (blocking: run it off the event loop)."""
    members = servable_members(record, build, package)
    folder = export_folder(record)
    buffer = io.BytesIO()
    now = int(time.time())

    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:

        def add(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(f"{folder}/{path}")
            info.size, info.mode, info.mtime = len(data), mode, now
            archive.addfile(info, io.BytesIO(data))

        for path, data, mode in members:
            add(path, data, mode)
        manifest = {
            "servable": record.label,
            "environment": build.environment,
            "backend": build.backend,
            "python": build.python,
            "requirements": LOCK_NAME if build.lock else REQUIREMENTS_NAME,
            "commands": run_commands(record, build),
        }
        add(MANIFEST_NAME, json.dumps(manifest, indent=2).encode() + b"\n")
        add("README.txt", readme(record, build).encode())
        if build.backend == "docker" and build.base_image:
            add("Dockerfile", dockerfile(build).encode())
    return buffer.getvalue()
