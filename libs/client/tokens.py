"""Local API tokens for embedded deployments, written straight into the registry's store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from libs.common.config import load_settings


async def _create(data_dir: Path, user: str, config_file: Path | None, reuse: str | None) -> str:
    from services.registry.auth import create_token, hash_token
    from services.registry.backends import make_store

    settings = load_settings(config_file, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = make_store(settings)
    await store.open()
    try:
        if reuse is not None:
            record = await store.get_token(hash_token(reuse))
            if record is not None and record.user == user:
                return reuse
        return await create_token(store, user, label="cli")
    finally:
        await store.close()


def create_local_token(data_dir: Path, user: str, config_file: Path | None = None) -> str:
    """Create a token for ``user`` in the store under ``data_dir`` and return the secret."""
    return asyncio.run(_create(data_dir, user, config_file, None))


def ensure_local_token(data_dir: Path, user: str, *, config_file: Path | None = None) -> str:
    """Reuse the token in ``<data_dir>/client.json`` if it is still valid for ``user``, else create one."""
    saved: str | None = None
    try:
        saved = json.loads((data_dir / "client.json").read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        saved = None
    return asyncio.run(_create(data_dir, user, config_file, saved))
