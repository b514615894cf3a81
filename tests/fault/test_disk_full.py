"""The data directory's disk full: a small tmpfs mounted as the data directory of broker, registry, builder
and worker (separate processes), filled up by the test. Needs root (mount); skipped otherwise."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub.client import DLHubClient
from dlhub.common.errors import DLHubError
from tests.stack.test_e2e import function_doc
from tests.support.separate import SeparateServices
from tests.support.stack import unique

DISK_BYTES = 16 * 1024 * 1024
FILL_CHUNK_BYTES = 64 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def services(tmp_path: Path, small_disk: Path) -> Iterator[SeparateServices]:
    services = SeparateServices(tmp_path)
    assert services.data_dir == small_disk
    try:
        for name in ("broker", "registry", "builder", "worker"):
            services.start(name)
        services.wait_registry()
        services.wait_handlers(builder=1, worker=1)
        yield services
    finally:
        services.stop_all()


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses more."""
    filler = disk / "filler.bin"
    chunk = os.urandom(FILL_CHUNK_BYTES)
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(chunk)
            out.flush()
    return filler


def test_publish_on_a_full_disk_is_507_nothing_is_corrupted_and_it_recovers(
    services: SeparateServices, small_disk: Path, pkg_dir: Path, tmp_path: Path
) -> None:
    """Pass criteria: with the data directory's disk full, a publish fails with the JSON envelope
    ``storage_full`` (HTTP 507), whether the package or the store write is refused, never a 500 or a version
    stuck ``building``, and leaves no partial package file; meanwhile the version published before still
    runs and is listed ``ready``, and every service stays up; the SQLite store passes
    ``PRAGMA integrity_check``; once the space is freed a publish builds to ``ready`` and runs."""
    client = DLHubClient(services.url, services.token("alice"))
    before = unique("before")
    client.publish(function_doc(before, "noop"), base_dir=pkg_dir, timeout_s=60)
    assert client.run(f"alice/{before}", None) == "hello world"

    filler = fill(small_disk)
    # Its own package (the others share theirs): the registry must write it, and cannot.
    own_pkg = tmp_path / "own_pkg"
    own_pkg.mkdir()
    (own_pkg / "e2efns.py").write_text((pkg_dir / "e2efns.py").read_text() + "\n# " + "x" * 65536 + "\n")
    for package in (own_pkg, pkg_dir):  # the package write fails first; then the store's
        with pytest.raises(DLHubError) as caught:
            client.publish(function_doc(unique("full"), "noop"), base_dir=package, timeout_s=60)
        assert caught.value.code == "storage_full", caught.value
    assert not [p for p in (small_disk / "packages").rglob("*") if p.name.endswith(".tmp")]
    assert client.run(f"alice/{before}", None) == "hello world"
    assert [v["status"] for v in client.versions(f"alice/{before}")] == ["ready"]
    assert all(p.poll() is None for p in services.processes.values())
    with sqlite3.connect(services.data_dir / "registry.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    filler.unlink()
    after = unique("after")
    reply = client.publish(function_doc(after, "noop"), base_dir=pkg_dir, timeout_s=60)
    assert reply["status"] == "ready", reply
    assert client.run(f"alice/{after}", None) == "hello world"
    assert "Traceback" not in services.log("registry")
