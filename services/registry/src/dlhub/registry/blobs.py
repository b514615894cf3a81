"""Uploaded blobs: files a user sends once and then passes to servables as ``{"blob": id}`` inputs.

A blob lives under ``<data_dir>/blobs/`` as ``<id>.bin`` (the bytes) and ``<id>.json`` (owner, size, sha256,
expiry, file name), so every registry instance sharing the data directory sees it and no store schema is
involved. Blobs expire after ``registry.blob_ttl_s`` and a background sweep removes them.

Workers never see blob ids or tokens: before queueing, the registry replaces each ``{"blob": id}`` input
(found through the method's declared input type, ``dlhub.common.filerefs``) with ``{"url": <signed URL>}``
pointing at ``GET /blobs/{id}/content?expires=<epoch s>&sig=<hex>``, where ``sig`` is an HMAC-SHA256 over
the blob id and the expiry with a key kept in ``<data_dir>/blobs/.signing-key``. The worker fetches it like
any other URL. Signatures are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from dlhub.common.config import DLHubSettings
from dlhub.common.errors import Forbidden, NotFound, PayloadTooLarge, Unauthorized, ValidationFailed
from dlhub.common.filerefs import has_files, map_files
from dlhub.common.logging import get_logger
from dlhub.registry.auth import Caller
from dlhub.registry.clock import now_ms
from dlhub.registry.store import VersionRecord
from dlhub.registry.urls import API_PREFIX

log = get_logger(__name__)

KEY_FILENAME: Final = ".signing-key"
STALE_TEMP_S: Final = 3600.0
_BLOB_ID = re.compile(r"\A[0-9a-f]{32}\Z")
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class BlobInfo(msgspec.Struct, kw_only=True):
    blob_id: str
    owner: str
    size: int
    sha256: str
    created_at_ms: int
    expires_at_ms: int
    filename: str = ""
    content_type: str = "application/octet-stream"

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms


def safe_filename(name: str | None) -> str:
    """A plain file name (no directories, no leading dot, at most 100 characters) or ``""``."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return _FILENAME_UNSAFE.sub("_", base).lstrip(".")[:100]


class BlobStore:
    """Blob files and their signing key under one directory."""

    def __init__(self, root: Path, *, max_bytes: int, ttl_s: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._key: bytes | None = None
        self._info = msgspec.json.Decoder(BlobInfo)
        self._json = msgspec.json.Encoder()

    # -- layout ------------------------------------------------------------------------------------------

    @staticmethod
    def valid_id(blob_id: str) -> bool:
        return _BLOB_ID.fullmatch(blob_id) is not None

    def data_path(self, blob_id: str) -> Path:
        return self.root / f"{blob_id}.bin"

    def info_path(self, blob_id: str) -> Path:
        return self.root / f"{blob_id}.json"

    # -- signing -----------------------------------------------------------------------------------------

    def signing_key(self) -> bytes:
        """The HMAC key, created once (0600) and shared by every registry using this data directory."""
        if self._key is None:
            path = self.root / KEY_FILENAME
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(32))
            self._key = bytes.fromhex(path.read_text().strip())
        return self._key

    def signature(self, blob_id: str, expires_s: int) -> str:
        message = f"{blob_id}\n{expires_s}".encode()
        return hmac.new(self.signing_key(), message, hashlib.sha256).hexdigest()

    def check_signature(self, blob_id: str, expires: str | None, sig: str | None) -> None:
        """403 unless ``sig`` signs ``blob_id`` until ``expires`` and that time has not passed."""
        if not expires or not sig or not (expires.isascii() and expires.isdigit()):  # "²".isdigit() is True
            raise Forbidden("a blob download needs the expires and sig query parameters of a signed URL")
        # Bytes, not str: compare_digest raises TypeError on non-ASCII text, and a query string can hold any.
        expected = self.signature(blob_id, int(expires)).encode()
        if not hmac.compare_digest(expected, sig.encode("utf-8", "replace")):
            raise Forbidden("invalid blob URL signature")
        if int(expires) <= time.time():
            raise Forbidden("the signed blob URL has expired")

    def signed_path(self, blob_id: str, ttl_s: float) -> str:
        expires = int(time.time() + ttl_s)
        return (
            f"{API_PREFIX}/blobs/{blob_id}/content?expires={expires}&sig={self.signature(blob_id, expires)}"
        )

    # -- blobs -------------------------------------------------------------------------------------------

    async def save(
        self, owner: str, chunks: AsyncIterator[bytes], *, filename: str | None, content_type: str | None
    ) -> BlobInfo:
        """Stream ``chunks`` into a new blob; 413 (and nothing kept) past ``max_bytes``."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        blob_id = uuid.uuid4().hex
        temp = self.root / f".{blob_id}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PayloadTooLarge(f"the blob exceeds the limit of {self.max_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            created = now_ms()
            info = BlobInfo(
                blob_id=blob_id,
                owner=owner,
                size=size,
                sha256=digest.hexdigest(),
                created_at_ms=created,
                expires_at_ms=created + int(self.ttl_s * 1000),
                filename=safe_filename(filename),
                content_type=content_type or "application/octet-stream",
            )
            await asyncio.to_thread(self._commit, temp, info)
        finally:
            temp.unlink(missing_ok=True)
        log.info("blob stored", blob_id=blob_id, owner=owner, size=size)
        return info

    def _commit(self, temp: Path, info: BlobInfo) -> None:
        os.replace(temp, self.data_path(info.blob_id))
        info_temp = self.root / f".{info.blob_id}.json.tmp"
        info_temp.write_bytes(self._json.encode(info))
        os.replace(info_temp, self.info_path(info.blob_id))  # last: a blob exists once its info does

    def read_info(self, blob_id: str) -> BlobInfo | None:
        """The blob's info, or ``None`` if there is no such (unexpired) blob."""
        if not self.valid_id(blob_id):
            return None
        try:
            info = self._info.decode(self.info_path(blob_id).read_bytes())
        except (OSError, msgspec.DecodeError):
            return None
        return None if info.expired(now_ms()) else info

    async def info(self, blob_id: str) -> BlobInfo | None:
        return await asyncio.to_thread(self.read_info, blob_id)

    async def owned(self, caller: Caller, blob_id: str) -> BlobInfo:
        """The caller's blob; 404 for an unknown, expired or someone else's blob (existence is not leaked)."""
        info = await self.info(blob_id)
        if info is None or info.owner != caller.user:
            raise NotFound(f"blob {blob_id} not found")
        return info

    async def existing(self, blob_id: str) -> BlobInfo:
        """The blob whatever its owner (after a signature check); 404 when unknown or expired."""
        info = await self.info(blob_id)
        if info is None:
            raise NotFound(f"blob {blob_id} not found (expired or deleted)")
        return info

    async def remove(self, blob_id: str) -> None:
        await asyncio.to_thread(self._remove, blob_id)

    def _remove(self, blob_id: str) -> None:
        self.info_path(blob_id).unlink(missing_ok=True)
        self.data_path(blob_id).unlink(missing_ok=True)

    # -- expiry ------------------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove expired blobs (and temp files of uploads that died); return how many blobs went."""
        if not self.root.is_dir():
            return 0
        now = now_ms()
        removed = 0
        for path in self.root.iterdir():
            name = path.name
            if name.endswith(".json") and not name.startswith("."):
                blob_id = name[: -len(".json")]
                try:
                    info = self._info.decode(path.read_bytes())
                except (OSError, msgspec.DecodeError):
                    info = None
                if info is None or info.expired(now):
                    self._remove(blob_id)
                    removed += 1
            elif self._leftover(path):
                path.unlink(missing_ok=True)
        return removed

    def _leftover(self, path: Path) -> bool:
        """An hour-old temp file of an upload that died, or bytes whose commit died between its renames."""
        name = path.name
        if name.endswith(".tmp"):
            return _older_than(path, STALE_TEMP_S)
        if name.endswith(".bin"):
            return not self.info_path(name[: -len(".bin")]).exists() and _older_than(path, STALE_TEMP_S)
        return False

    async def sweep_forever(self, interval_s: float) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep)
            except OSError as exc:
                log.warning("blob sweep failed", error=str(exc))
            else:
                if removed:
                    log.info("expired blobs removed", count=removed)
            await asyncio.sleep(interval_s)


def _older_than(path: Path, age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > age_s
    except OSError:
        return False


_stores: dict[Path, BlobStore] = {}


def blob_store(settings: DLHubSettings) -> BlobStore:
    """The blob store of these settings' data directory (one instance per directory and process)."""
    root = settings.data_dir / "blobs"
    store = _stores.get(root)
    if store is None:
        config = settings.registry
        store = _stores[root] = BlobStore(root, max_bytes=config.max_blob_bytes, ttl_s=config.blob_ttl_s)
    return store


def internal_base_url(settings: DLHubSettings) -> str:
    """Where workers reach this registry: ``internal_url``, ``public_url``, else host and port."""
    config = settings.registry
    base = config.internal_url or config.public_url
    if not base:
        host = "127.0.0.1" if config.host in ("", "0.0.0.0") else config.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        base = f"http://{host}:{config.port}"
    base = base.rstrip("/")
    return base[: -len(API_PREFIX)] if base.endswith(API_PREFIX) else base


# -- the run path ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileInputs:
    """Run inputs ready for the bus: blob references replaced by signed URLs."""

    inputs: Any
    memoizable: bool
    """False when an input is a URL: what it points at may change, so its result must not be memoized."""


_descriptions: dict[tuple[str, str, int, int, str], Any] = {}
_MAX_CACHED: Final = 4096


def _file_description(record: VersionRecord, method: str) -> Any:
    """The method's input type if it declares files anywhere, else ``None`` (cached per version)."""
    key = (record.owner, record.name, record.version, record.published_at_ms, method)
    try:
        return _descriptions[key]
    except KeyError:
        pass
    methods = (record.metadata.get("servable") or {}).get("methods") or {}
    spec = methods.get(method) if isinstance(methods, dict) else None
    description = spec.get("input") if isinstance(spec, dict) else None
    if len(_descriptions) >= _MAX_CACHED:
        _descriptions.clear()
    _descriptions[key] = description if has_files(description) else None
    return _descriptions[key]


async def resolve_file_inputs(
    settings: DLHubSettings, caller: Caller, record: VersionRecord, method: str, inputs: Any
) -> FileInputs:
    """Replace the caller's ``{"blob": id}`` inputs with signed URLs (400 naming the path when a blob is
    unknown, expired or not the caller's). Call after the inputs passed ``argtypes`` validation."""
    description = _file_description(record, method)
    if description is None:
        return FileInputs(inputs=inputs, memoizable=True)
    found: list[tuple[str, str | None]] = []  # (path, blob id or None for a URL)

    def collect(path: str, value: Any) -> Any:
        if isinstance(value, dict):
            blob = value.get("blob")
            found.append((path, blob if "url" not in value and isinstance(blob, str) else None))
        return value

    map_files(description, inputs, collect)
    blob_paths = {path: blob for path, blob in found if blob is not None}
    if not blob_paths:
        return FileInputs(inputs=inputs, memoizable=not found)
    store = blob_store(settings)
    await _check_blobs(store, caller, blob_paths)
    ttl_s = settings.registry.blob_url_ttl_s
    base = internal_base_url(settings)

    def sign(path: str, value: Any) -> Any:
        blob = blob_paths.get(path)
        return value if blob is None else {"url": base + store.signed_path(blob, ttl_s)}

    return FileInputs(inputs=map_files(description, inputs, sign), memoizable=len(blob_paths) == len(found))


async def _check_blobs(store: BlobStore, caller: Caller, blob_paths: dict[str, str]) -> None:
    if caller.user is None:
        path = next(iter(blob_paths))
        raise Unauthorized(
            f"{path}.blob: blob inputs need a token (blobs belong to the user who uploaded them)"
        )
    for path, blob_id in blob_paths.items():
        info = await store.info(blob_id)
        if info is None or info.owner != caller.user:
            raise ValidationFailed(
                f"{path}.blob: no blob {blob_id!r} of yours (unknown, expired or uploaded by someone else)",
                field=f"{path}.blob",
            )
