"""``python -m dlhub.builder gc-environments --older-than-days N [--dry-run] [--config FILE]``.

Removes environments no published version references any more: venv folders ``<envs>/venv/<id>`` and docker
images of the deployment's repository (``dlhub-env``, or ``<docker_registry>/dlhub-env``) tagged with an
environment id. References are the ``environment.json`` files anywhere under the servable store (staging
folders of builds in progress included). Only environments built (venv folder changed, image created) more
than N days ago are removed, which also leaves alone an environment whose version is still being built. An
image used by a container is kept (the engine refuses to untag it). Every removal (or, with ``--dry-run``,
every candidate) is printed, one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.environments import ENVIRONMENT_FILENAME, dir_size, read_environment
from dlhub.common.errors import DLHubError

DAY_S = 86400.0


@dataclass(slots=True)
class GcReport:
    referenced: set[str] = field(default_factory=set)
    venvs: list[Path] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Candidates that could not be removed, with the reason."""
    skipped: list[str] = field(default_factory=list)
    """Whole parts not looked at (no Docker engine), with the reason."""


def referenced_environments(servable_dir: Path) -> set[str]:
    """Ids of the isolated environments named by an ``environment.json`` under the servable store."""
    found: set[str] = set()
    for folder, _dirs, files in os.walk(servable_dir):
        if ENVIRONMENT_FILENAME not in files:
            continue
        with contextlib.suppress(DLHubError, OSError):
            record = read_environment(Path(folder))
            if record is not None and record.kind == "isolated" and record.id:
                found.add(record.id)
    return found


def _created_unix_s(text: str) -> float:
    """The engine's RFC 3339 ``Created`` (nanoseconds, ``Z``) as a Unix time."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if match is None:
        return time.time()  # unknown: treat as new, never removed
    zone = match.group(3) or "Z"
    stamp = datetime.datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp()


def collect(
    settings: DLHubSettings,
    *,
    older_than_days: float,
    dry_run: bool,
    say: Callable[[str], None] = print,
) -> GcReport:
    report = GcReport(referenced=referenced_environments(settings.servable_dir))
    cutoff = time.time() - older_than_days * DAY_S
    verb = "would remove" if dry_run else "removed"
    venv_root = settings.environments_dir / "venv"
    if venv_root.is_dir():
        for path in sorted(venv_root.iterdir()):
            if not path.is_dir() or path.name in report.referenced or path.stat().st_mtime > cutoff:
                continue
            size = dir_size(path)
            if not dry_run:
                shutil.rmtree(path)
            report.venvs.append(path)
            say(f"{verb} venv {path} ({size} bytes)")
    if "docker" in settings.environments.allowed_backends:
        _collect_images(settings, report, cutoff, dry_run, say)
    return report


def _collect_images(
    settings: DLHubSettings, report: GcReport, cutoff: float, dry_run: bool, say: Callable[[str], None]
) -> None:
    from dlhub.common.docker_environments import IMAGE_REPOSITORY, DockerBackend
    from dlhub.common.errors import EnvironmentUnavailable

    config = settings.environments
    repository = IMAGE_REPOSITORY
    if config.docker_registry:
        repository = f"{config.docker_registry.rstrip('/')}/{IMAGE_REPOSITORY}"
    try:
        client = DockerBackend(config).client()
    except EnvironmentUnavailable as exc:
        report.skipped.append(f"docker images: {exc.message}")
        say(f"skipped docker images: {exc.message}")
        return
    import docker.errors

    verb = "would remove" if dry_run else "removed"
    for image in client.images.list(name=repository):
        created = _created_unix_s(str(image.attrs.get("Created", "")))
        for tag in image.tags:
            repo, _, env_id = tag.rpartition(":")
            if repo != repository or env_id in report.referenced or created > cutoff:
                continue
            if not dry_run:
                try:
                    client.images.remove(tag)
                except docker.errors.APIError as exc:
                    report.kept.append(f"{tag}: {exc.explanation or exc}")
                    say(f"kept image {tag}: {exc.explanation or exc}")
                    continue
            report.images.append(tag)
            say(f"{verb} image {tag} ({int(image.attrs.get('Size') or 0)} bytes)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dlhub.builder gc-environments",
        description="Remove environments (venvs, dlhub-env images) that no version references.",
    )
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    parser.add_argument(
        "--older-than-days",
        type=float,
        required=True,
        help="only environments built more than this many days ago",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    args = parser.parse_args(argv)
    if args.older_than_days < 0:
        parser.error("--older-than-days must be 0 or more")
    settings = load_settings(args.config)
    report = collect(settings, older_than_days=args.older_than_days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {len(report.venvs)} venv(s) and {len(report.images)} image(s); "
        f"{len(report.referenced)} environment(s) referenced"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
