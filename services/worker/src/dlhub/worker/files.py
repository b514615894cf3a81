"""Inputs of type ``file``: download each ``{"url": ...}`` into a per-task directory and pass the local path.

Runs inside the executor process, between decoding a request's inputs and invoking the servable. Which
positions are files comes from the method's declared input type (``dlhub.common.filerefs``); the registry
has already replaced uploaded blobs by signed URLs on itself, so only URLs arrive here. Limits
(``worker.file_fetch_*``): http and https only, at most ``max_bytes`` per file (the download is aborted as
soon as it passes the limit), ``timeout_s`` for the whole download of one file, at most ``max_redirects``
redirects. A failure fails the task with ``file_fetch_failed`` naming the input path and the URL's host,
never the full URL (it may carry a signature or credentials). The directory is removed after the call. One
HTTP client per executor process serves every task (its cookies cleared after each).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import unquote, urlsplit

from dlhub.common.errors import DLHubError
from dlhub.common.filerefs import has_files, map_files

if TYPE_CHECKING:
    import httpx

CHUNK_BYTES: Final = 256 * 1024
ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DISPOSITION_NAME = re.compile(r'filename="?([^";]+)"?')


class FileFetchFailed(DLHubError):
    """An input of type file could not be downloaded (bad URL, HTTP error, too large, too slow)."""

    code: ClassVar[str] = "file_fetch_failed"
    http_status: ClassVar[int] = 502


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_bytes: int = 100 * 1024 * 1024
    timeout_s: float = 60.0
    max_redirects: int = 5

    def as_args(self) -> list[str]:
        """The executor command-line options that carry these limits."""
        return [
            "--file-fetch-max-bytes",
            str(self.max_bytes),
            "--file-fetch-timeout-s",
            str(self.timeout_s),
            "--file-fetch-max-redirects",
            str(self.max_redirects),
        ]


_clients: dict[int, httpx.Client] = {}


def _shared_client(max_redirects: int) -> httpx.Client:
    """One client per executor process, reused by every task: building one (its TLS context, the proxy
    settings of the environment) costs tens of milliseconds, which a job of one small file per call paid
    on every call; reuse also keeps connections to the registry alive between tasks."""
    import httpx

    client = _clients.get(max_redirects)
    if client is None:
        client = _clients[max_redirects] = httpx.Client(follow_redirects=True, max_redirects=max_redirects)
    return client


def _local_name(url: httpx.URL, response: httpx.Response, index: int) -> str:
    """``<n>-<name>``: the server's file name (Content-Disposition, else the URL's last segment), sanitised,
    so a model that looks at the extension sees it; the prefix keeps names unique within the task."""
    match = _DISPOSITION_NAME.search(response.headers.get("Content-Disposition", ""))
    name = match.group(1) if match else unquote(url.path.rsplit("/", 1)[-1])
    safe = _UNSAFE.sub("_", name).lstrip(".")[:100] or "file"
    return f"{index}-{safe}"


class TaskFiles:
    """The downloads of one task; use as a context manager so the files are removed after the call."""

    def __init__(self, limits: FileLimits) -> None:
        self.limits = limits
        self._directory: Path | None = None
        self._count = 0

    def __enter__(self) -> TaskFiles:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def localize(self, method_spec: dict[str, Any], inputs: Any) -> Any:
        """``inputs`` with every file position replaced by the path of its downloaded copy."""
        description = method_spec.get("input")
        if not has_files(description):
            return inputs
        try:
            # httpx is imported there: the executor also runs in servables' own environments, which need it
            # only for file inputs.
            client = _shared_client(self.limits.max_redirects)
        except ImportError as exc:
            raise FileFetchFailed("file inputs need httpx in the servable's environment") from exc
        try:
            return map_files(description, inputs, lambda path, value: self._fetch(client, path, value))
        finally:
            client.cookies.clear()  # nothing a server set during one task is sent with another's fetches

    def _target_dir(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="dlhub-files-"))
        return self._directory

    def _fetch(self, client: httpx.Client, path: str, value: Any) -> str:
        import httpx

        url = value.get("url") if isinstance(value, dict) else None
        if not isinstance(url, str):
            raise FileFetchFailed(f'{path}: expected a file reference {{"url": ...}}', field=path)
        try:
            parts = urlsplit(url)
            host = parts.hostname or "?"
        except ValueError:
            raise FileFetchFailed(f"{path}: malformed URL", field=path) from None
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise FileFetchFailed(f"{path}: only http and https URLs can be fetched", field=path)
        headers = value.get("headers")
        headers = {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
        try:
            return str(self._download(client, url, headers, path, host))
        except httpx.TooManyRedirects:
            raise FileFetchFailed(
                f"{path}: more than {self.limits.max_redirects} redirects fetching from {host}", field=path
            ) from None
        except httpx.TimeoutException:
            raise FileFetchFailed(
                f"{path}: fetching from {host} took longer than {self.limits.timeout_s:g} s", field=path
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FileFetchFailed(
                f"{path}: fetching from {host} failed: {type(exc).__name__}", field=path
            ) from None
        except OSError as exc:  # the worker's own disk: full, or the temporary directory unwritable
            raise FileFetchFailed(
                f"{path}: cannot store the file from {host}: {exc.strerror}", field=path
            ) from None

    def _download(
        self, client: httpx.Client, url: str, headers: dict[str, str], path: str, host: str
    ) -> Path:
        import httpx

        limits = self.limits
        deadline = time.monotonic() + limits.timeout_s
        with client.stream("GET", url, headers=headers, timeout=limits.timeout_s) as response:
            final_host = response.url.host or host
            if response.url.scheme not in ALLOWED_SCHEMES:
                raise FileFetchFailed(f"{path}: redirected to a URL that is not http(s)", field=path)
            if response.status_code != 200:
                raise FileFetchFailed(
                    f"{path}: fetching from {final_host} failed with HTTP {response.status_code}", field=path
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise self._too_large(path, final_host)
            self._count += 1
            target = self._target_dir() / _local_name(response.url, response, self._count)
            size = 0
            with target.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise self._too_large(path, final_host)
                    if time.monotonic() > deadline:  # a server trickling bytes never trips the read timeout
                        raise httpx.ReadTimeout("the download passed its deadline")
                    out.write(chunk)
        return target

    def _too_large(self, path: str, host: str) -> FileFetchFailed:
        return FileFetchFailed(
            f"{path}: the file from {host} exceeds {self.limits.max_bytes} bytes", field=path
        )
