"""Blob expiry and file positions, in-process (split from tests/stack/test_file_inputs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dlhub.common.errors import Forbidden
from dlhub.registry.blobs import BlobStore
from tests.support.polling import wait_until


def test_blob_store_expiry_and_sweep(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", max_bytes=1024, ttl_s=0.05)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    info = asyncio.run(store.save("alice", body(), filename="../../etc/x.txt", content_type=None))
    assert info.filename == "x.txt" and store.data_path(info.blob_id).read_bytes() == b"abc"
    wait_until(lambda: store.read_info(info.blob_id) is None, timeout_s=5, message="the blob to expire")
    assert store.sweep() == 1
    assert not store.data_path(info.blob_id).exists() and not store.info_path(info.blob_id).exists()
    assert store.read_info("../../etc/passwd") is None
    with pytest.raises(Forbidden):
        store.check_signature(info.blob_id, "not-a-number", "x")


def test_file_positions_follow_the_declared_type() -> None:
    from dlhub.common.filerefs import has_files, map_files

    file = {"type": "file"}
    description = {
        "type": "tuple",
        "element_types": [
            {"type": "ndarray", "shape": [2, None], "item_type": file},
            {"type": "dict", "properties": {"odd key": file, "n": {"type": "integer"}}},
            {"type": "string"},
        ],
    }
    value = [[[{"url": "a"}], [{"url": "b"}, {"url": "c"}]], {"odd key": {"url": "d"}, "n": 1}, "text"]
    seen: list[str] = []

    def visit(path: str, ref: Any) -> str:
        seen.append(path)
        return str(ref["url"]).upper()

    assert map_files(description, value, visit) == [[["A"], ["B", "C"]], {"odd key": "D", "n": 1}, "text"]
    assert seen == ["inputs[0][0][0]", "inputs[0][1][0]", "inputs[0][1][1]", "inputs[1]['odd key']"]
    assert has_files(description) and not has_files({"type": "list", "item_type": {"type": "float"}})
    assert map_files({"type": "list", "item_type": file}, "not a list", visit) == "not a list"
