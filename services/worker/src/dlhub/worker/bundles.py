"""A Task Manager's cache of version bundles fetched from the registry by digest (``dlhub.common.bundles``).

A dispatch names the digest of its version's bundle. A worker that has neither the version's folder in its
``servable_dir`` (the builder's disk) nor the bundle in its cache downloads it once from
``worker.registry_url``, checks the sha256, unpacks it under ``<bundle_dir>/<digest>`` and runs the version
from there; concurrent tasks of the same version wait for the one download.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from dlhub.common.bundles import cached_bundle, check_digest, install_bundle
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import DLHubError, PackageUnavailable, PayloadTooLarge
from dlhub.common.logging import get_logger
from dlhub.common.package import ExtractLimits

log = get_logger(__name__)

BUNDLE_PATH = "/internal/v1/bundles/"
CHUNK_BYTES = 1024 * 1024


class BundleCache:
    def __init__(self, settings: DLHubSettings) -> None:
        config = settings.worker
        self.root = settings.worker_bundle_dir
        self.registry_url = (config.registry_url or "").rstrip("/")
        self.max_bytes = config.bundle_max_bytes
        self.timeout_s = config.bundle_fetch_timeout_s
        self.limits = ExtractLimits(
            max_extracted_bytes=config.bundle_max_bytes, max_files=config.bundle_max_files
        )
        self._known: dict[str, Path] = {}
        self._fetching: dict[str, asyncio.Task[Path]] = {}
        self._client: httpx.AsyncClient | None = None
        """Made on the first fetch and kept: a new client costs tens of ms (its TLS context), per bundle."""

    async def prepare(self) -> None:
        """Make the HTTP client before the first task needs it: building one (its TLS context) took ~150 ms
        on the test machine, most of a fresh Task Manager's first-call cost. Built in a thread, so the loop
        keeps serving meanwhile; a no-op without ``worker.registry_url``."""
        if self.registry_url and self._client is None:
            client = await asyncio.to_thread(self._new_client)
            if self._client is None:  # a first fetch may have made one meanwhile
                self._client = client
            else:
                await client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def cached(self, digest: str) -> Path | None:
        """The unpacked folder of ``digest`` if this process has seen it (a dict lookup: the hot path)."""
        return self._known.get(digest)

    async def ensure(self, digest: str, servable: str) -> Path:
        """The unpacked folder of bundle ``digest``: from the cache on disk, else fetched and checked."""
        known = self._known.get(digest)
        if known is not None:
            return known
        on_disk = cached_bundle(self.root, digest)
        if on_disk is not None:
            self._known[digest] = on_disk
            return on_disk
        task = self._fetching.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch_and_install(digest, servable))
            self._fetching[digest] = task
            task.add_done_callback(lambda _t: self._fetching.pop(digest, None))
        # Shielded: one waiting task that is cancelled must not abort the download the others wait for.
        path = await asyncio.shield(task)
        self._known[digest] = path
        return path

    async def _fetch_and_install(self, digest: str, servable: str) -> Path:
        check_digest(digest)
        if not self.registry_url:
            raise PackageUnavailable(
                f"servable {servable} is not installed on this worker and worker.registry_url is not set"
            )
        started = time.perf_counter()
        data = await self._download(digest, servable)
        fetched = time.perf_counter()
        try:
            path = await asyncio.to_thread(install_bundle, data, digest, self.root, self.limits)
        except DLHubError as exc:
            log.warning("bundle refused", servable=servable, digest=digest, code=exc.code, error=exc.message)
            raise
        log.info(
            "bundle installed",
            servable=servable,
            digest=digest,
            size_bytes=len(data),
            fetch_ms=round((fetched - started) * 1000.0, 3),
            unpack_ms=round((time.perf_counter() - fetched) * 1000.0, 3),
        )
        return path

    async def _download(self, digest: str, servable: str) -> bytes:
        url = self.registry_url + BUNDLE_PATH + digest
        if self._client is None:
            self._client = self._new_client()
        try:
            async with asyncio.timeout(self.timeout_s), self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise PackageUnavailable(
                        f"the registry answered {response.status_code} for the bundle of {servable}"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PayloadTooLarge(
                            f"the bundle of {servable} is over worker.bundle_max_bytes ({self.max_bytes})"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise PackageUnavailable(
                f"the bundle of {servable} was not fetched within "
                f"worker.bundle_fetch_timeout_s ({self.timeout_s} s)"
            ) from None
        except httpx.HTTPError as exc:
            raise PackageUnavailable(
                f"could not fetch the bundle of {servable} from the registry: {type(exc).__name__}: {exc}"
            ) from None
        return b"".join(chunks)
