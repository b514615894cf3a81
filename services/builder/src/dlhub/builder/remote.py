"""Fetch the components a publication names by URL (``dlhub.url_files``) into the package being built.

Each component is streamed to a temporary file beside the package while it is hashed, held to a size limit
(refused from the announced size when there is one, else as soon as the bytes pass it) and to a time limit
for the whole transfer, then compared with its declared SHA-256: a mismatch fails the build with
``ChecksumMismatch`` naming the file and both digests. Only then is it moved to its declared path. HTTP(S)
goes through httpx with a bounded number of redirects (each target must be HTTP(S) again); ``s3://`` through
boto3 with the builder's ``[builder.s3]`` settings. Logs and messages show URLs without their query, so a
presigned URL's signature never reaches a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import httpx

from dlhub.common.config import BuilderConfig, S3Config
from dlhub.common.environments import BuildLog
from dlhub.common.errors import (
    BuildFailed,
    ChecksumMismatch,
    PayloadTooLarge,
    UrlFetchFailed,
    ValidationFailed,
)
from dlhub.common.url_files import UrlFile, url_files

S3_CHUNK_BYTES: Final = 256 * 1024
USER_AGENT: Final = "dlhub-builder"


@dataclass(frozen=True, slots=True)
class FetchSettings:
    max_component_bytes: int = 1024 * 1024 * 1024
    max_components: int = 100
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_redirects: int = 5
    s3: S3Config = field(default_factory=S3Config)

    @classmethod
    def from_config(cls, config: BuilderConfig) -> FetchSettings:
        return cls(
            max_component_bytes=config.max_url_component_bytes,
            max_components=config.max_url_components,
            timeout_s=config.url_fetch_timeout_s,
            connect_timeout_s=config.url_connect_timeout_s,
            max_redirects=config.url_max_redirects,
            s3=config.s3,
        )


def declared_url_files(metadata: dict[str, Any], settings: FetchSettings) -> list[UrlFile]:
    """The document's URL components, checked again here: a bad declaration fails the build."""
    try:
        entries = url_files(metadata)
    except ValidationFailed as exc:
        raise BuildFailed(exc.message, field=exc.field) from exc
    if len(entries) > settings.max_components:
        raise PayloadTooLarge(f"{len(entries)} URL components exceed the limit of {settings.max_components}")
    return entries


class _Deadline:
    def __init__(self, entry: UrlFile, timeout_s: float) -> None:
        self.entry = entry
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> UrlFetchFailed:
        return UrlFetchFailed(
            f"URL component {self.entry.path!r} ({self.entry.display_url}) took longer than the "
            f"{self.timeout_s:g} s limit",
            field=self.entry.path,
        )


@dataclass(frozen=True, slots=True)
class Fetched:
    size_bytes: int
    sha256: str


class UrlFetcher:
    """Fetches URL components with the builder's limits; one per builder, used from build threads."""

    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = settings or FetchSettings()
        self._s3: Any = None

    def fetch_all(self, entries: list[UrlFile], files_dir: Path, budget_bytes: int, log: BuildLog) -> int:
        """Fetch every component under ``files_dir``; return the bytes fetched, at most ``budget_bytes``."""
        total = 0
        for entry in entries:
            target = _target_path(files_dir, entry)
            began = time.monotonic()
            log.line(f"fetching {entry.path} from {entry.display_url}")
            limit = min(self.settings.max_component_bytes, budget_bytes - total)
            fetched = self.fetch(entry, target, limit)
            total += fetched.size_bytes
            log.line(
                f"fetched {entry.path}: {fetched.size_bytes} bytes in {time.monotonic() - began:.1f} s, "
                f"sha256 {fetched.sha256} (as declared)"
            )
        return total

    def fetch(self, entry: UrlFile, target: Path, limit_bytes: int) -> Fetched:
        """Stream one component to a temporary file beside ``target``, check it, then move it into place."""
        if entry.size_bytes is not None and entry.size_bytes > limit_bytes:
            raise _too_large(entry, entry.size_bytes, limit_bytes, "declared")
        partial = target.with_name(f".{target.name}.partial")
        deadline = _Deadline(entry, self.settings.timeout_s)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            # The chunks are closed at once on any failure: the connection goes, an oversize body unread.
            with (
                os.fdopen(fd, "wb") as out,
                contextlib.closing(self._chunks(entry, limit_bytes, deadline)) as chunks,
            ):
                fetched = _write_hashed(chunks, out, entry, limit_bytes)
            _check(entry, fetched)
            os.rename(partial, target)
            return fetched
        finally:
            partial.unlink(missing_ok=True)

    def _chunks(self, entry: UrlFile, limit_bytes: int, deadline: _Deadline) -> Generator[bytes, None, None]:
        if entry.scheme == "s3":
            return self._s3_chunks(entry, limit_bytes, deadline)
        return self._http_chunks(entry, limit_bytes, deadline)

    # --- HTTP(S) ---------------------------------------------------------------------------------------

    def _http_chunks(
        self, entry: UrlFile, limit_bytes: int, deadline: _Deadline
    ) -> Generator[bytes, None, None]:
        settings = self.settings
        timeout = httpx.Timeout(
            min(settings.timeout_s, settings.connect_timeout_s), read=settings.timeout_s, pool=None
        )
        try:
            with (
                httpx.Client(
                    follow_redirects=True,
                    max_redirects=settings.max_redirects,
                    timeout=timeout,
                    headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                    trust_env=False,
                ) as client,
                client.stream("GET", entry.url) as response,
            ):
                if response.status_code != 200:
                    raise UrlFetchFailed(
                        f"URL component {entry.path!r} ({entry.display_url}): HTTP {response.status_code}",
                        field=entry.path,
                    )
                announced = response.headers.get("Content-Length")
                if announced is not None and announced.isdigit() and int(announced) > limit_bytes:
                    raise _too_large(entry, int(announced), limit_bytes, "announced")
                # Unbuffered: a chunk size would make httpx wait for that many bytes before yielding, so a
                # trickling server would never reach the deadline check.
                for chunk in response.iter_raw():
                    deadline.remaining_s()
                    yield chunk
        except httpx.TooManyRedirects as exc:
            raise UrlFetchFailed(
                f"URL component {entry.path!r} ({entry.display_url}): more than {settings.max_redirects} "
                "redirects",
                field=entry.path,
            ) from exc
        except httpx.TimeoutException as exc:
            raise deadline.expired() from exc
        except httpx.HTTPError as exc:
            raise UrlFetchFailed(
                f"URL component {entry.path!r} ({entry.display_url}): {type(exc).__name__}: "
                f"{_redact(str(exc), entry)}",
                field=entry.path,
            ) from exc

    # --- S3 ------------------------------------------------------------------------------------------

    def _s3_client(self) -> Any:
        if self._s3 is None:
            self._s3 = make_s3_client(self.settings)
        return self._s3

    def _s3_chunks(
        self, entry: UrlFile, limit_bytes: int, deadline: _Deadline
    ) -> Generator[bytes, None, None]:
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

        parts = urlsplit(entry.url)
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        try:
            response = self._s3_client().get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength") or 0)
                if size > limit_bytes:
                    raise _too_large(entry, size, limit_bytes, "announced")
                for chunk in body.iter_chunks(S3_CHUNK_BYTES):
                    deadline.remaining_s()
                    yield chunk
            finally:
                body.close()
        except ReadTimeoutError as exc:
            raise deadline.expired() from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise UrlFetchFailed(
                f"URL component {entry.path!r} ({entry.display_url}): S3 {error.get('Code', '?')}: "
                f"{error.get('Message', '')}".rstrip(": "),
                field=entry.path,
            ) from exc
        except BotoCoreError as exc:
            raise UrlFetchFailed(
                f"URL component {entry.path!r} ({entry.display_url}): {type(exc).__name__}: {exc}",
                field=entry.path,
            ) from exc


def make_s3_client(settings: FetchSettings) -> Any:
    """A boto3 S3 client from ``[builder.s3]``; secrets are read from their SecretStr only here."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    s3 = settings.s3
    config = Config(
        signature_version=UNSIGNED if s3.anonymous else None,
        connect_timeout=min(settings.timeout_s, settings.connect_timeout_s),
        read_timeout=settings.timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": s3.addressing_style},
        user_agent_extra=USER_AGENT,
    )
    credentials: dict[str, str] = {}
    if not s3.anonymous and s3.access_key_id:
        credentials["aws_access_key_id"] = s3.access_key_id
        if s3.secret_access_key is not None:
            credentials["aws_secret_access_key"] = s3.secret_access_key.get_secret_value()
        if s3.session_token is not None:
            credentials["aws_session_token"] = s3.session_token.get_secret_value()
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config, **credentials
    )


def _too_large(entry: UrlFile, size: int, limit: int, how: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"URL component {entry.path!r} ({entry.display_url}) is {how} at {size} bytes, over the limit of "
        f"{limit} bytes",
        field=entry.path,
    )


def _write_hashed(chunks: Generator[bytes, None, None], out: Any, entry: UrlFile, limit: int) -> Fetched:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            # Stop reading: the server may have more, but nothing past the limit is taken.
            raise _too_large(entry, size, limit, "received")
        digest.update(chunk)
        out.write(chunk)
    return Fetched(size_bytes=size, sha256=digest.hexdigest())


def _check(entry: UrlFile, fetched: Fetched) -> None:
    if fetched.sha256 != entry.sha256:
        raise ChecksumMismatch(
            f"URL component {entry.path!r} ({entry.display_url}) has sha256 {fetched.sha256}, but the "
            f"publication declares sha256 {entry.sha256}",
            field=entry.path,
        )
    if entry.size_bytes is not None and fetched.size_bytes != entry.size_bytes:
        raise ChecksumMismatch(
            f"URL component {entry.path!r} ({entry.display_url}) is {fetched.size_bytes} bytes, but the "
            f"publication declares {entry.size_bytes} bytes",
            field=entry.path,
        )


def _redact(text: str, entry: UrlFile) -> str:
    return text.replace(entry.url, entry.display_url)


def _target_path(files_dir: Path, entry: UrlFile) -> Path:
    """Where ``entry`` goes: a new file under real folders of the package (never through a link)."""
    folder = files_dir
    for part in entry.path.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise BuildFailed(
                f"URL component {entry.path!r} would be written through {part!r}, which is not a folder",
                field=entry.path,
            )
        folder.mkdir(exist_ok=True)
    target = folder / entry.path.rsplit("/", 1)[-1]
    if target.exists() or target.is_symlink():
        raise BuildFailed(
            f"URL component {entry.path!r} names a path the uploaded package already holds", field=entry.path
        )
    return target
