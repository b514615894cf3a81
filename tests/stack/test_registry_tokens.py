"""Local API tokens come from the registry's own entry point (``python -m dlhub.registry token create``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dlhub.client.tokens import create_local_token, ensure_local_token
from dlhub.common.config import load_settings
from dlhub.registry.auth import hash_token
from dlhub.registry.store.factory import make_store


def _token_create(data_dir: Path, user: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dlhub.registry", "token", "create", user, "--data-dir", str(data_dir)]
    if stdin is not None:
        command.append("--reuse-stdin")
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)


async def _owner(data_dir: Path, token: str) -> str | None:
    store = make_store(load_settings(data_dir=data_dir))
    await store.open()
    try:
        record = await store.get_token(hash_token(token))
        return None if record is None else record.user
    finally:
        await store.close()


async def test_token_create_stores_only_a_hash_and_reuses_a_live_token(tmp_path: Path) -> None:
    first = _token_create(tmp_path, "bob")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith("dlh_") and await _owner(tmp_path, token) == "bob"
    assert token not in first.stderr  # logs never carry the secret
    again = _token_create(tmp_path, "bob", stdin=token + "\n")
    assert again.stdout.strip() == token
    other_user = _token_create(tmp_path, "carol", stdin=token + "\n")
    assert other_user.stdout.strip() not in {"", token}
    assert await _owner(tmp_path, other_user.stdout.strip()) == "carol"
    unknown = _token_create(tmp_path, "bob", stdin="dlh_not-a-real-token\n")
    assert unknown.stdout.strip() not in {"", token, "dlh_not-a-real-token"}


def test_bad_user_name_is_a_clear_error(tmp_path: Path) -> None:
    done = _token_create(tmp_path, "not a name")
    assert done.returncode == 2
    assert "invalid user name" in done.stderr and "Traceback" not in done.stderr


def test_client_helpers_go_through_the_registry_entry_point(tmp_path: Path) -> None:
    token = create_local_token(tmp_path, "dave")
    (tmp_path / "client.json").write_text(json.dumps({"token": token}))
    assert ensure_local_token(tmp_path, "dave") == token
    assert ensure_local_token(tmp_path, "erin") != token
