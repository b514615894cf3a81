"""Warm environment pools are bounded (LRU of ``max_warm_environments``, idle ones stopped after
``environment_idle_s``), Parsl workers refuse per-servable environments with a typed error, and the
operator's ``gc-environments`` removes venvs no version references.

The environments here are stand-in venvs (``bin/python`` runs the test interpreter), so no index is needed:
what is tested is the pool bookkeeping, with real executor processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dlhub.builder.gc import collect, referenced_environments
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings, EnvironmentsConfig, WorkerConfig
from dlhub.common.environments import ENVIRONMENT_FILENAME, EnvironmentRecord, record_json
from dlhub.common.errors import EnvironmentUnavailable
from dlhub.common.ids import new_id
from dlhub.worker.environments import EnvironmentPools, WarmPool
from dlhub.worker.files import FileLimits
from dlhub.worker.pool import ExecutorPool
from tests.support.polling import await_until
from tests.support.worker_servables import function_method, write_function_servable

CODEC = Codec()
ENV_A = "a" * 32
ENV_B = "b" * 32


def fake_venv(envs: Path, env_id: str) -> None:
    python = envs / "venv" / env_id / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)


def isolated_version(root: Path, name: str, env_id: str) -> Path:
    directory = write_function_servable(
        root, name, methods={"run": function_method("whoami"), "sleep": function_method("sleep")}
    )
    record = EnvironmentRecord(kind="isolated", backend="venv", id=env_id, python="3.11", lock="# stand-in")
    (directory / ENVIRONMENT_FILENAME).write_bytes(record_json(record))
    return directory


def settings_for(tmp_path: Path, **environments: Any) -> DLHubSettings:
    settings = DLHubSettings(data_dir=tmp_path, environments=EnvironmentsConfig(**environments))
    for env_id in (ENV_A, ENV_B):
        fake_venv(settings.environments_dir, env_id)
    return settings


async def run(pools: EnvironmentPools, directory: Path, method: str = "run", value: Any = None) -> Any:
    backend = await pools.backend_for(directory)
    reply = await backend.execute(
        task_id=new_id(),
        servable=f"alice/{directory.parent.name}@1",
        version_dir=str(directory),
        method=method,
        inputs=CODEC.encode_value(value),
        parameters=CODEC.encode_value({}),
        timeout_s=60,
    )
    assert reply.ok, reply.error
    return CODEC.decode_value(reply.output)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def warm_pool(pools: EnvironmentPools, env_id: str) -> WarmPool:
    (found,) = [w for w in pools._pools if env_id in w.key]
    return found


async def test_the_least_recently_used_environment_is_evicted_and_starts_again(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_warm_environments=1)
    root = settings.servable_dir
    a, b = isolated_version(root, "on_a", ENV_A), isolated_version(root, "on_b", ENV_B)
    shared = ExecutorPool(processes=1, max_message_bytes=1 << 20)
    pools = EnvironmentPools(settings, shared=shared, file_limits=FileLimits())
    try:
        first = await run(pools, a)
        assert pools.warm == [f"venv:{ENV_A}"]
        pid_a = warm_pool(pools, ENV_A).pool.pids[0]
        assert first["pid"] == pid_a
        assert (await run(pools, b))["pid"] != pid_a
        assert pools.warm == [f"venv:{ENV_B}"] and pools.evictions == 1
        await await_until(
            lambda: not alive(pid_a), timeout_s=15, message="the evicted environment's executor to stop"
        )
        # The evicted environment starts again on its next request (and evicts the other one).
        again = await run(pools, a)
        assert again["pid"] != pid_a
        assert pools.warm == [f"venv:{ENV_A}"] and pools.evictions == 2
    finally:
        await pools.close()


async def test_a_busy_environment_is_not_evicted_and_the_bound_is_restored(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_warm_environments=1, environment_idle_s=0.4)
    root = settings.servable_dir
    a, b = isolated_version(root, "busy_a", ENV_A), isolated_version(root, "busy_b", ENV_B)
    pools = EnvironmentPools(
        settings, shared=ExecutorPool(processes=1, max_message_bytes=1 << 20), file_limits=FileLimits()
    )
    try:
        await run(pools, a)
        slow = asyncio.create_task(run(pools, a, "sleep", 1.0))
        await await_until(
            lambda: warm_pool(pools, ENV_A).active == 1, timeout_s=10, message="the slow task to start"
        )
        await run(pools, b)  # A is busy: both stay warm for now
        assert sorted(pools.warm) == [f"venv:{ENV_A}", f"venv:{ENV_B}"]
        assert await slow == 1.0
        # Idle for longer than environment_idle_s: both are stopped by the sweep.
        await await_until(lambda: pools.warm == [], timeout_s=15, message="idle environments to be stopped")
        assert (await run(pools, b))["tag"] == "A"
        assert pools.warm == [f"venv:{ENV_B}"]
    finally:
        await pools.close()


async def test_a_batched_task_of_an_evicted_environment_starts_it_again(tmp_path: Path) -> None:
    """A backend looked up just before its pool was evicted still runs the task (in the new pool)."""
    settings = settings_for(tmp_path, max_warm_environments=1)
    root = settings.servable_dir
    a, b = isolated_version(root, "late_a", ENV_A), isolated_version(root, "late_b", ENV_B)
    pools = EnvironmentPools(
        settings, shared=ExecutorPool(processes=1, max_message_bytes=1 << 20), file_limits=FileLimits()
    )
    try:
        stale = await pools.backend_for(a)
        await run(pools, b)
        assert isinstance(stale, WarmPool) and stale.evicted
        reply = await stale.execute(
            task_id=new_id(),
            servable="alice/late_a@1",
            version_dir=str(a),
            method="run",
            inputs=CODEC.encode_value(None),
            timeout_s=60,
        )
        assert reply.ok and pools.warm == [f"venv:{ENV_A}"]
    finally:
        await pools.close()


async def test_parsl_workers_fail_isolated_versions_typed_and_serve_shared_ones(tmp_path: Path) -> None:
    settings = settings_for(tmp_path).model_copy(update={"worker": WorkerConfig(backend="parsl")})
    isolated = isolated_version(settings.servable_dir, "iso", ENV_A)
    plain = write_function_servable(settings.servable_dir, "plain")
    shared = ExecutorPool(processes=1, max_message_bytes=1 << 20)
    pools = EnvironmentPools(settings, shared=shared, file_limits=FileLimits())
    try:
        with pytest.raises(EnvironmentUnavailable, match="through Parsl") as failure:
            await pools.backend_for(isolated)
        assert failure.value.code == "environment_unavailable"
        assert await pools.backend_for(plain) is shared
        assert pools.warm == []
    finally:
        await pools.close()


def test_gc_removes_old_unreferenced_venvs_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allowed_backends=["venv"])
    envs = settings.environments_dir / "venv"
    isolated_version(settings.servable_dir, "kept", ENV_A)
    fake_venv(settings.environments_dir, "c" * 32)  # unreferenced but new: kept
    month_ago = time.time() - 30 * 86400
    for env_id in (ENV_A, ENV_B):
        os.utime(envs / env_id, (month_ago, month_ago))
    assert referenced_environments(settings.servable_dir) == {ENV_A}

    env = {
        **os.environ,
        "DLHUB_DATA_DIR": str(tmp_path),
        "DLHUB_ENVIRONMENTS__ALLOWED_BACKENDS": '["venv"]',
    }
    argv = [sys.executable, "-m", "dlhub.builder", "gc-environments", "--older-than-days", "7"]
    dry = subprocess.run([*argv, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove venv {envs / ENV_B}" in dry.stdout
    assert ENV_A not in dry.stdout and "c" * 32 not in dry.stdout
    assert sorted(p.name for p in envs.iterdir()) == [ENV_A, ENV_B, "c" * 32]

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"removed venv {envs / ENV_B}" in done.stdout
    assert sorted(p.name for p in envs.iterdir()) == [ENV_A, "c" * 32]
    assert not collect(settings, older_than_days=7, dry_run=True, say=lambda _: None).venvs
