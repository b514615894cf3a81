"""The DLHub Python SDK: publish, discover and run servables over the REST API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx

from dlhub.client.credentials import load_credentials
from dlhub.client.packaging import build_package, declared_files
from dlhub.common.codec import decode_body, encode_body
from dlhub.common.errors import DLHubError, UnsafePackage, error_class

API_PREFIX = "/api/v1"
TERMINAL_STATES = frozenset({"completed", "failed"})
REFUSED_TYPES = frozenset({"queue_full", "shutting_down", "service_unavailable"})
"""503 error types of a request refused before the server acted on it: retried whatever the method."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_RETRY_WAIT_S = 10.0


def retry_wait_s(response: httpx.Response, method: str, attempt: int) -> float | None:
    """Seconds to wait before retrying a 503 that carries ``Retry-After``, or None to not retry it.

    Retried: a request refused before it was acted on (``REFUSED_TYPES``), and any 503 of an idempotent
    method. The wait is ``Retry-After``, doubled on each further attempt, at most ``MAX_RETRY_WAIT_S``.
    """
    if response.status_code != 503 or "Retry-After" not in response.headers:
        return None
    try:
        after_s = float(response.headers["Retry-After"])
    except ValueError:
        after_s = 1.0
    if method.upper() not in IDEMPOTENT_METHODS:
        try:
            error_type = response.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            return None
        if error_type not in REFUSED_TYPES:
            return None
    return min(max(after_s, 0.0) * 2.0**attempt, MAX_RETRY_WAIT_S)


class TaskFailed(DLHubError):
    """A task ran and failed; ``error_type`` is the DLHub error code, ``exception_type`` the model's own."""

    code = "task_failed"

    def __init__(self, task_id: str, error: Mapping[str, Any]) -> None:
        self.task_id = task_id
        self.error_type = str(error.get("type", "dlhub_error"))
        self.exception_type = str(error.get("exception_type", ""))
        self.traceback = str(error.get("traceback", ""))
        self.step = error.get("step")
        detail = f"{self.exception_type}: " if self.exception_type else ""
        super().__init__(f"task {task_id} failed ({self.error_type}): {detail}{error.get('message', '')}")


class DigestMismatch(DLHubError):
    """A download's bytes do not match the digest the registry sent with them (nothing was kept)."""

    code = "digest_mismatch"


def repr_digest_sha256(header: str) -> bytes | None:
    """The sha-256 of a ``Repr-Digest`` header (RFC 9530: ``sha-256=:<base64>:``, maybe among others)."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        value = value.strip()
        if key.strip().lower() == "sha-256" and len(value) > 2 and value[0] == value[-1] == ":":
            try:
                return base64.b64decode(value[1:-1], validate=True)
            except ValueError:
                return None
    return None


def extract_package(archive: Path, dest: Path) -> None:
    """Extract a downloaded package (tar, compressed or not, or zip) into ``dest``, refusing any member
    that would land outside it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                name = info.filename
                parts = PurePosixPath(name).parts
                if (
                    name.startswith("/")
                    or "\\" in name
                    or ":" in (parts[0] if parts else "")
                    or ".." in parts
                ):
                    raise UnsafePackage(f"the package member {name!r} would land outside {dest}")
            bundle.extractall(dest)
        return
    try:
        with tarfile.open(archive, "r:*") as bundle:
            bundle.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafePackage(f"the package member would land outside {dest}: {exc}") from None


def parse_servable(ref: str) -> tuple[str, str, int | None]:
    """Split ``owner/name`` or ``owner/name@3``."""
    path, _, version = ref.partition("@")
    owner, _, name = path.partition("/")
    if not owner or not name or (version and not (version.isascii() and version.isdigit())):
        raise ValueError(f"expected owner/name or owner/name@version, got {ref!r}")
    return owner, name, int(version) if version else None


def _servable_path(ref: str) -> str:
    owner, name, version = parse_servable(ref)
    base = f"/servables/{owner}/{name}"
    return f"{base}/versions/{version}" if version is not None else base


JobResults = list[dict[str, Any]]
"""A dataset job's results: one ``{"index", "output", "error"}`` per row."""


class TaskHandle:
    """An asynchronous task: poll ``status()`` or block on ``result()``."""

    def __init__(self, client: DLHubClient, task_id: str) -> None:
        self.client = client
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id!r})"

    def status(self) -> dict[str, Any]:
        return self.client.status(self.task_id)

    def wait(self, timeout_s: float = 300.0, poll_interval_s: float = 0.05) -> dict[str, Any]:
        """Poll until the task is completed or failed; return its record."""
        deadline = time.monotonic() + timeout_s
        interval = poll_interval_s
        while True:
            record = self.status()
            if record["state"] in TERMINAL_STATES:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.task_id} still {record['state']} after {timeout_s} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

    def result(self, timeout_s: float = 300.0) -> Any:
        record = self.wait(timeout_s)
        if record["state"] == "failed":
            raise TaskFailed(self.task_id, record.get("error") or {})
        return record.get("output")

    def progress(self) -> dict[str, Any] | None:
        """A dataset job's ``{"done", "total", "failed"}`` rows (``total`` None until counted); None for
        other tasks."""
        progress: dict[str, Any] | None = self.status().get("progress")
        return progress

    def cancel(self) -> dict[str, Any]:
        """Cancel a dataset job: it ends ``failed`` with ``error.type`` ``cancelled``, its results kept."""
        return self.client.cancel(self.task_id)

    def results(self) -> list[dict[str, Any]]:
        """A dataset job's per-row results so far (``{"index", "output", "error"}``, in row order)."""
        return self.client.job_results(self.task_id)


class DLHubClient:
    """Synchronous client for the DLHub REST API."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 330.0,
        max_retries: int = 4,
        anonymous: bool = False,
    ) -> None:
        """``max_retries``: how often a 503 with ``Retry-After`` is retried (``retry_wait_s``); 0: never.
        ``anonymous``: send no token, not even a saved one."""
        self.max_retries = max_retries
        creds = load_credentials(url, token, anonymous=anonymous)
        self.url = creds.url
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DLHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on a 503 that says when (``Retry-After``) and is safe to repeat. A multipart
        upload (``files``) is not retried: its file objects have been read."""
        attempt = 0
        while True:
            response = self._http.request(method, path, **kwargs)
            if response.status_code != 503 or attempt >= self.max_retries or "files" in kwargs:
                return response
            wait_s = retry_wait_s(response, method, attempt)
            if wait_s is None:
                return response
            time.sleep(wait_s)
            attempt += 1

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            self._raise_for(response)
        return response.json()

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
            code, message, field = error["type"], error["message"], error.get("field")
        except (ValueError, KeyError, TypeError):
            code, message, field = "dlhub_error", f"HTTP {response.status_code}: {response.text[:200]}", None
        raise error_class(code)(message, field=field)

    # -- repository ------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    # -- identity and access ---------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The caller as the registry sees it: user, identities, groups, whether an administrator."""
        result: dict[str, Any] = self._request("GET", "/whoami")
        return result

    def auth_info(self) -> dict[str, Any]:
        """How to sign in to this registry: ``provider`` (local or globus), native client id and scope."""
        result: dict[str, Any] = self._request("GET", "/auth")
        return result

    def access(self, servable: str) -> dict[str, Any]:
        """Who may see (``visible_to``) and manage (``maintainers``) ``owner/name``."""
        result: dict[str, Any] = self._request("GET", f"/servables/{servable}/access")
        return result

    def share(
        self,
        servable: str,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        visible_to: Sequence[str] | None = None,
        maintainers: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Change who may see ``owner/name`` (every version, at once): ``add``/``remove`` principals
        (``public``, ``user:<name>``, ``group:<id>``, ``identity:<uuid>``) or replace ``visible_to``; the
        owner may also name ``maintainers``."""
        body: dict[str, Any] = {"add": list(add), "remove": list(remove)}
        if visible_to is not None:
            body["visible_to"] = list(visible_to)
        if maintainers is not None:
            body["maintainers"] = list(maintainers)
        result: dict[str, Any] = self._request("PUT", f"/servables/{servable}/access", json=body)
        return result

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Audit events, newest first (administrators): filters actor, action, target, since, until, limit."""
        params = {k: v for k, v in filters.items() if v is not None}
        events: list[dict[str, Any]] = self._request("GET", "/audit", params=params)["events"]
        return events

    def publish(
        self,
        metadata: Mapping[str, Any],
        *,
        base_dir: str | Path = ".",
        package: bytes | None = None,
        wait: bool = True,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Publish a servable: the document plus the files it names (relative to ``base_dir``).

        With ``wait`` the call returns once the build finished and raises ``TaskFailed`` if it failed.
        """
        return self._send_version("POST", "/servables", metadata, base_dir, package, wait, timeout_s)

    def update(
        self,
        servable: str,
        metadata: Mapping[str, Any],
        *,
        base_dir: str | Path | None = None,
        package: bytes | None = None,
        wait: bool = True,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Publish a new version; without ``base_dir``/``package`` it reuses the previous version's files."""
        owner, name, _ = parse_servable(servable)
        path = f"/servables/{owner}/{name}"
        if base_dir is None and package is None:
            reply: dict[str, Any] = self._request("PUT", path, json=dict(metadata))
            return self._maybe_wait(reply, wait, timeout_s)
        return self._send_version("PUT", path, metadata, base_dir or ".", package, wait, timeout_s)

    def publish_model(
        self,
        model: Any,
        *,
        name: str,
        title: str,
        authors: Sequence[str],
        wait: bool = True,
        timeout_s: float = 300.0,
        training_data: Sequence[str] = (),
        test_data: Sequence[str] = (),
        **describe_options: Any,
    ) -> dict[str, Any]:
        """Describe a live object (a fitted scikit-learn estimator, a Keras model, a PyTorch module, or a
        type-hinted function in a module file) with ``dlhub.client.describe.describe`` and publish it with its
        files.

        ``training_data``/``test_data``: the datasets it was trained and tested on, as
        ``owner/name[@version]`` (a published dataset the caller can see; pinned to a version) or DOIs.
        ``describe_options``: affiliations, description, domains, visible_to, dependencies,
        serialization_method (estimators), autobatch (functions), example / input_shape / input_dtype
        (PyTorch modules).
        """
        from dlhub.client.describe import describe
        from dlhub.client.metadata import add_dataset_links

        described = describe(model, name=name, title=title, authors=authors, **describe_options)
        add_dataset_links(described.metadata, training_data=training_data, test_data=test_data)
        return self.publish(described.metadata, package=described.package(), wait=wait, timeout_s=timeout_s)

    def publish_dataset(
        self,
        name: str,
        files: Sequence[str],
        *,
        title: str,
        authors: Sequence[str],
        base_dir: str | Path = ".",
        wait: bool = True,
        timeout_s: float = 300.0,
        **document_options: Any,
    ) -> dict[str, Any]:
        """Publish ``files`` (paths relative to ``base_dir``) as a dataset, versioned and citable like a
        servable; describe lists each file's size and sha256 and previews its tabular files.
        ``document_options``: affiliations, description, domains, visible_to."""
        from dlhub.client.metadata import dataset_document

        document = dataset_document(name=name, files=files, title=title, authors=authors, **document_options)
        return self.publish(document, base_dir=base_dir, wait=wait, timeout_s=timeout_s)

    def publish_pipeline(
        self,
        name: str,
        steps: Sequence[str | Mapping[str, Any]],
        *,
        title: str,
        authors: Sequence[str],
        wait: bool = True,
        timeout_s: float = 300.0,
        **document_options: Any,
    ) -> dict[str, Any]:
        """Publish servable versions as one pipeline servable, run like any servable (``run("owner/name")``).

        ``steps``: ``"owner/name[@version]"`` or ``{"servable", "method"?, "parameters"?}``; the registry pins
        each to the version it resolves to now. ``document_options``: affiliations, description, domains,
        visible_to (see ``dlhub.client.metadata.pipeline_document``). A pipeline is ready at once.
        """
        from dlhub.client.metadata import pipeline_document

        document = pipeline_document(name=name, steps=steps, title=title, authors=authors, **document_options)
        reply: dict[str, Any] = self._request("POST", "/servables", json=document)
        return self._maybe_wait(reply, wait, timeout_s)

    def _send_version(
        self,
        method: str,
        path: str,
        metadata: Mapping[str, Any],
        base_dir: str | Path,
        package: bytes | None,
        wait: bool,
        timeout_s: float,
    ) -> dict[str, Any]:
        if package is None:
            names = declared_files(metadata)
            package = build_package(Path(base_dir), names) if names else None
        files: dict[str, Any] = {"metadata": (None, json.dumps(dict(metadata)), "application/json")}
        if package is not None:
            files["package"] = ("package.tar.gz", package, "application/gzip")
        reply: dict[str, Any] = self._request(method, path, files=files)
        return self._maybe_wait(reply, wait, timeout_s)

    def _maybe_wait(self, reply: dict[str, Any], wait: bool, timeout_s: float) -> dict[str, Any]:
        if not wait:
            return reply
        record = TaskHandle(self, reply["task_id"]).wait(timeout_s)
        if record["state"] == "failed":
            raise TaskFailed(reply["task_id"], record.get("error") or {})
        reply["status"] = "ready"
        return reply

    def describe(self, servable: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", _servable_path(servable))
        return result

    def citation(self, servable: str, format: str = "bibtex") -> str | dict[str, Any]:
        """The citation of ``owner/name`` (latest visible version) or ``owner/name@3``.

        ``format="bibtex"`` returns the BibTeX entry as text; ``format="datacite"`` the DataCite 4.x JSON.
        """
        response = self._http.get(_servable_path(servable) + "/citation", params={"format": format})
        if response.status_code >= 400:
            self._raise_for(response)
        if format == "datacite":
            result: dict[str, Any] = response.json()
            return result
        return response.text

    def versions(self, servable: str) -> list[dict[str, Any]]:
        owner, name, _ = parse_servable(servable)
        result: list[dict[str, Any]] = self._request("GET", f"/servables/{owner}/{name}/versions")["versions"]
        return result

    def _version_path(self, servable: str) -> str:
        """``/servables/o/n/versions/v`` of ``owner/name@v``, or of the newest version not deleted."""
        owner, name, version = parse_servable(servable)
        if version is None:
            live = [v for v in self.versions(servable) if v["status"] != "deleted"]
            if not live:
                raise error_class("gone")(f"servable {owner}/{name} was deleted")
            version = int(live[-1]["version"])
        return f"/servables/{owner}/{name}/versions/{version}"

    @overload
    def build_log(
        self, servable: str, follow: Literal[False] = False, *, timeout_s: float | None = None
    ) -> dict[str, Any]: ...

    @overload
    def build_log(
        self, servable: str, follow: Literal[True], *, timeout_s: float | None = None
    ) -> Iterator[dict[str, Any]]: ...

    def build_log(
        self, servable: str, follow: bool = False, *, timeout_s: float | None = None
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The build record of ``owner/name@v`` (default: the newest version): states, environment, error and
        log. With ``follow`` an iterator instead: the record so far, then one event per state change
        (``{"state", "at", "error"?}``) or batch of new log lines (``{"lines"}``) until the build ends."""
        path = self._version_path(servable) + "/build"
        if not follow:
            result: dict[str, Any] = self._request("GET", path)
            return result
        return self._follow_build(path, timeout_s)

    def _follow_build(self, path: str, timeout_s: float | None) -> Iterator[dict[str, Any]]:
        timeout = httpx.Timeout(10.0, read=timeout_s or 3600.0)
        with self._http.stream("GET", path, params={"follow": "true"}, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def export(
        self,
        servable: str,
        path: str | Path | None = None,
        *,
        image: bool = False,
        timeout_s: float = 1800.0,
    ) -> Path:
        """Download the export of ``owner/name@v`` (see docs/api.md, "Export") to ``path`` and return
        where it was written: a .tar.gz that runs with a plain Python venv (default name
        ``<owner>-<name>-<version>.tar.gz``), or with ``image`` (docker-environment versions) a
        ``docker save`` tarball of a self-contained image (``<owner>-<name>-<version>.image.tar``;
        ``docker load -i`` it, then ``docker run --rm -i --network none <tag> '<json input>'``, the tag
        from :func:`image_tag`). The body is streamed to a ``.part`` file next to ``path``, renamed when
        complete."""
        url = self._version_path(servable) + "/export"
        params = {"format": "image"} if image else {}
        timeout = httpx.Timeout(30.0, read=timeout_s)
        with self._http.stream("GET", url, params=params, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            disposition = response.headers.get("Content-Disposition", "")
            default = (
                disposition.split('filename="', 1)[1].rstrip('"')
                if 'filename="' in disposition
                else ("export.image.tar" if image else "export.tar.gz")
            )
            target = Path(path) if path is not None else Path(default)
            partial = target.with_name(target.name + ".part")
            try:
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return target

    def files(self, servable: str) -> dict[str, Any]:
        """The files of ``owner/name[@v]`` (default: the version describe shows): ``files`` (path, size,
        sha256 each), ``total_bytes`` and ``package`` (the archive as uploaded; None without files)."""
        result: dict[str, Any] = self._request("GET", _servable_path(servable) + "/files")
        return result

    def download(
        self, servable: str, dest: str | Path = ".", path: str | None = None, *, timeout_s: float = 1800.0
    ) -> Path:
        """Download ``owner/name[@v]`` (default: the version describe shows) and return what was written.

        Without ``path``: the whole package, extracted into the folder ``dest`` (created if missing); a
        member that would land outside it (absolute, ``..``, a link leaving it, a device file) refuses the
        whole package (``UnsafePackage``). With ``path``: that one file, written to ``dest`` (into it when
        ``dest`` is a folder). Each download is checked against its ``Repr-Digest`` header before anything is
        kept (``DigestMismatch``); bytes are streamed to a ``.part`` file, never held in memory."""
        base = _servable_path(servable)
        target = Path(dest)
        if path is not None:
            if target.is_dir():
                target = target / PurePosixPath(path).name
            url = base + "/files/" + quote(path.lstrip("/"), safe="/")
            self._fetch_verified(url, target, timeout_s)
            return target
        target.mkdir(parents=True, exist_ok=True)
        archive = target / f".dlhub-package-{os.getpid()}.part"
        try:
            self._fetch_verified(base + "/package", archive, timeout_s)
            extract_package(archive, target)
        finally:
            archive.unlink(missing_ok=True)
        return target

    def _fetch_verified(self, url: str, target: Path, timeout_s: float) -> None:
        """Stream ``url`` to ``target`` (through ``<target>.part``), checking its ``Repr-Digest``."""
        timeout = httpx.Timeout(30.0, read=timeout_s)
        partial = target.with_name(target.name + ".part")
        with self._http.stream("GET", url, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            expected = repr_digest_sha256(response.headers.get("Repr-Digest", ""))
            if expected is None:
                raise DigestMismatch(f"{url}: the registry sent no sha-256 Repr-Digest to check the download")
            digest = hashlib.sha256()
            try:
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        handle.write(chunk)
                if digest.digest() != expected:
                    raise DigestMismatch(
                        f"{url}: sha256 {digest.hexdigest()} does not match the Repr-Digest {expected.hex()}"
                    )
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)

    def list(self, owner: str | None = None, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if owner:
            params["owner"] = owner
        result: list[dict[str, Any]] = self._request("GET", "/servables", params=params)["servables"]
        return result

    def delete(self, servable: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("DELETE", _servable_path(servable))
        return result

    def search(self, q: str = "", *, limit: int = 20, offset: int = 0, **filters: Any) -> dict[str, Any]:
        """Free text (prefix-matched) plus query parameters of ``GET /search``, passed through.

        Filters: owner, name, domain, author, model_type, servable_type, kind (servable, pipeline or
        dataset), doi (the servable's DOI or a
        related identifier such as its paper's DOI, case-insensitive); trained_on / tested_on (a dataset:
        ``owner/name``, ``owner/name@version`` or a DOI); ``published_from`` /
        ``published_to`` (ISO 8601 string, ``date``/``datetime``, or epoch seconds); ``facets`` (a list or a
        comma-separated string of domain, model_type, servable_type, owner, kind); ``sort`` (relevance,
        publication_date, name) and ``order`` (asc, desc). The reply carries ``facets`` when asked for.

        Argument types: ``input_type`` / ``output_type`` (``"ndarray"``, ``"list"`` ...), ``input_item_type``
        / ``output_item_type`` (``"float"``), ``input_shape`` / ``output_shape`` as a list (``[None, 4]``: any
        number of rows of 4) or its JSON text; see docs/api.md for how shapes match.
        """
        params: dict[str, Any] = {"q": q, "limit": limit, "offset": offset}
        for key, value in filters.items():
            if value is None:
                continue
            if key.endswith("_shape") and isinstance(value, (list, tuple)):
                value = json.dumps(list(value))
            elif isinstance(value, (list, tuple, set)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, (date, datetime)):
                value = value.isoformat()
            params[key] = value
        result: dict[str, Any] = self._request("GET", "/search", params=params)
        return result

    def reindex_search(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Rebuild the search index from the registry (administrators only): ``{"documents", "index"}``."""
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        result: dict[str, Any] = self._request("POST", "/search/reindex", **kwargs)
        return result

    # -- file inputs -----------------------------------------------------------------------------------------

    def upload_blob(self, source: str | Path | bytes, *, filename: str | None = None) -> str:
        """Upload a file (a path, or the bytes themselves) for inputs of type file; returns the blob id.

        Pass it as ``{"blob": id}``; the blob is yours alone and expires after the registry's
        ``blob_ttl_s``. ``run`` does this by itself for ``pathlib.Path`` values in the inputs.
        """
        return str(self.upload_blob_info(source, filename=filename)["blob_id"])

    def upload_blob_info(self, source: str | Path | bytes, *, filename: str | None = None) -> dict[str, Any]:
        """Like ``upload_blob``; returns ``{"blob_id", "size", "sha256", "filename", "expires_at", ...}``."""
        if isinstance(source, bytes):
            result: dict[str, Any] = self._request(
                "POST", "/blobs", files={"file": (filename or "blob", source, "application/octet-stream")}
            )
            return result
        path = Path(source)
        with path.open("rb") as stream:
            result = self._request(
                "POST", "/blobs", files={"file": (filename or path.name, stream, "application/octet-stream")}
            )
        return result

    def with_uploaded_files(self, inputs: Any) -> Any:
        """``inputs`` with every ``pathlib.Path`` (in lists, tuples and dicts) uploaded and replaced by
        ``{"blob": id}``; a ``str`` is always data, never a path."""
        if isinstance(inputs, Path):
            return {"blob": self.upload_blob(inputs)}
        if isinstance(inputs, (list, tuple)):
            return [self.with_uploaded_files(item) for item in inputs]
        if isinstance(inputs, dict):
            return {key: self.with_uploaded_files(value) for key, value in inputs.items()}
        return inputs

    # -- invocation ------------------------------------------------------------------------------------------

    def run(
        self,
        servable: str,
        inputs: Any,
        *,
        parameters: Mapping[str, Any] | None = None,
        method: str = "run",
        timeout_s: float | None = None,
    ) -> Any:
        """Run synchronously and return the output; a failed task raises ``TaskFailed``.

        Inputs of type file: pass ``{"url": "https://..."}``, ``{"blob": id}`` (``upload_blob``) or a
        ``pathlib.Path``, which is uploaded first (``with_uploaded_files``); the model receives a local path.
        """
        record = self.run_detailed(
            servable, inputs, parameters=parameters, method=method, timeout_s=timeout_s
        )
        if record["state"] == "failed":
            raise TaskFailed(record["task_id"], record.get("error") or {})
        return record["output"]

    def run_detailed(
        self,
        servable: str,
        inputs: Any,
        *,
        parameters: Mapping[str, Any] | None = None,
        method: str = "run",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Run synchronously and return the whole record (output or error, and the timings).

        Inputs holding NumPy arrays travel as msgpack with the arrays as raw buffers (dtype, shape, bytes)
        instead of JSON text, and array outputs come back as NumPy arrays.
        """
        body = self._run_body(inputs, parameters, method, timeout_s, asynchronous=False)
        path = _servable_path(servable) + "/run"
        if not _holds_ndarray(body["inputs"]):
            result: dict[str, Any] = self._request("POST", path, json=body)
            return result
        return self._request_msgpack(path, body)

    def _request_msgpack(self, path: str, body: Any) -> dict[str, Any]:
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        response = self._send("POST", path, content=encode_body(body), headers=headers)
        if response.status_code >= 400:
            self._raise_for(response)  # errors are JSON whatever the request's format
        result: dict[str, Any] = decode_body(response.content, dict[str, Any])
        return result

    def run_async(
        self,
        servable: str,
        inputs: Any,
        *,
        parameters: Mapping[str, Any] | None = None,
        method: str = "run",
        timeout_s: float | None = None,
    ) -> TaskHandle:
        body = self._run_body(inputs, parameters, method, timeout_s, asynchronous=True)
        reply = self._request("POST", _servable_path(servable) + "/run", json=body)
        return TaskHandle(self, reply["task_id"])

    def run_pipeline(
        self, steps: Sequence[str | Mapping[str, Any]], inputs: Any, *, asynchronous: bool = False
    ) -> Any:
        """Run servables as one server-side pipeline; returns the final output (or a TaskHandle)."""
        body = {
            "steps": [{"servable": s} if isinstance(s, str) else dict(s) for s in steps],
            "inputs": self.with_uploaded_files(inputs),
            "asynchronous": asynchronous,
        }
        reply = self._request("POST", "/pipelines/run", json=body)
        if asynchronous:
            return TaskHandle(self, reply["task_id"])
        if reply["state"] == "failed":
            raise TaskFailed(reply["task_id"], reply.get("error") or {})
        return reply["output"]

    def run_local(
        self,
        document_or_path: Mapping[str, Any] | str | Path,
        inputs: Any,
        *,
        parameters: Mapping[str, Any] | None = None,
        method: str = "run",
        base_dir: str | Path | None = None,
    ) -> Any:
        """Run a servable on this machine from its publication document (a dict, or the path of its
        ``dlhub.json``) and the files it names, before publishing it; returns the output as ``run`` would.

        The worker's own executor loads and calls it (the ``dlhub-worker`` distribution must be installed:
        ``ServerNotInstalled`` otherwise), after the registry's input validation (``ValidationFailed``); a
        failed run raises ``TaskFailed`` as a served one does. Files are relative to the document's folder
        (``base_dir`` for a dict; default: the current directory). No server is contacted.
        """
        from dlhub.client.local import run_local

        record = run_local(document_or_path, inputs, parameters=parameters, method=method, base_dir=base_dir)
        if record["state"] == "failed":
            raise TaskFailed(record["task_id"], record.get("error") or {})
        return record["output"]

    def verify_local(
        self, document_or_path: Mapping[str, Any] | str | Path, *, base_dir: str | Path | None = None
    ) -> dict[str, Any]:
        """Run the test vectors of an unpublished document on this machine (see ``run_local``); the report
        has the shape ``verify`` returns for a published version."""
        from dlhub.client.local import verify_local

        return verify_local(document_or_path, base_dir=base_dir)

    def verify(self, servable: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Re-run the published test vectors of ``owner/name`` (newest ready version) or ``owner/name@3``.

        Returns ``{"servable", "passed", "vectors": [{"index", "passed", "message"?, "timings"}], "note"?}``;
        a version that is not ready raises ``ServableNotReady``.
        """
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        result: dict[str, Any] = self._request("POST", _servable_path(servable) + "/verify", **kwargs)
        return result

    def status(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/tasks/{task_id}")
        return result

    def apply(
        self,
        dataset: str,
        servable: str,
        *,
        method: str = "run",
        parameters: Mapping[str, Any] | None = None,
        file: str | None = None,
        columns: Sequence[str] | None = None,
        mode: str | None = None,
        batch_rows: int = 500,
        output_name: str | None = None,
        visible_to: Sequence[str] | None = None,
    ) -> TaskHandle:
        """Run ``servable`` (``owner/name[@version]``, a pipeline too) over every row of ``dataset``'s
        tabular ``file`` (default: its only one) as an asynchronous job; ``handle.progress()`` counts the
        rows, ``handle.result()`` is ``{"dataset": "<you>/<output>@<v>", "failed", "failures", ...}``: the
        results, published as your dataset linked to both inputs (docs/api.md, Dataset jobs)."""
        body: dict[str, Any] = {"servable": servable, "method": method, "batch_rows": batch_rows}
        optional = {
            "parameters": dict(parameters) if parameters is not None else None,
            "file": file,
            "columns": list(columns) if columns is not None else None,
            "mode": mode,
            "output_name": output_name,
            "visible_to": list(visible_to) if visible_to is not None else None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        reply = self._request("POST", _servable_path(dataset) + "/apply", json=body)
        return TaskHandle(self, reply["task_id"])

    def cancel(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", f"/tasks/{task_id}/cancel")
        return result

    def job_results(self, task_id: str) -> JobResults:
        response = self._send("GET", f"/tasks/{task_id}/results")
        if response.status_code >= 400:
            self._raise_for(response)
        return [json.loads(line) for line in response.text.splitlines() if line]

    def _run_body(
        self,
        inputs: Any,
        parameters: Mapping[str, Any] | None,
        method: str,
        timeout_s: float | None,
        *,
        asynchronous: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inputs": self.with_uploaded_files(inputs),
            "parameters": dict(parameters or {}),
            "method": method,
            "asynchronous": asynchronous,
        }
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return body

    def deprecate(self, servable: str, reason: str = "", *, replacement: str | None = None) -> dict[str, Any]:
        """Deprecate ``owner/name@version`` (owner only): it still runs, with a warning, and "latest" skips
        it while a ready version that is not deprecated exists. ``replacement``: ``owner/name@version``."""
        body: dict[str, Any] = {"reason": reason}
        if replacement is not None:
            body["replacement"] = replacement
        result: dict[str, Any] = self._request("POST", self._pinned_path(servable) + "/deprecate", json=body)
        return result

    def undeprecate(self, servable: str) -> dict[str, Any]:
        """Clear the deprecation of ``owner/name@version`` (owner only)."""
        result: dict[str, Any] = self._request("POST", self._pinned_path(servable) + "/undeprecate")
        return result

    @staticmethod
    def _pinned_path(servable: str) -> str:
        if parse_servable(servable)[2] is None:
            raise ValueError(f"expected owner/name@version, got {servable!r}")
        return _servable_path(servable)


MSGPACK = "application/msgpack"
MAX_NDARRAY_PROBE_ITEMS = 64


def _holds_ndarray(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is, or directly nests, a NumPy array (probing only a bounded part of it)."""
    if type(value).__name__ == "ndarray" and type(value).__module__ == "numpy":
        return True
    if depth >= 3:
        return False
    if isinstance(value, (list, tuple)):
        return any(_holds_ndarray(v, depth + 1) for v in value[:MAX_NDARRAY_PROBE_ITEMS])
    if isinstance(value, dict):
        items = list(value.values())[:MAX_NDARRAY_PROBE_ITEMS]
        return any(_holds_ndarray(v, depth + 1) for v in items)
    return False


def image_tag(path: str | Path) -> str:
    """The tag ``docker load -i path`` gives the image of an image export (from the tarball's manifest)."""
    import tarfile

    with tarfile.open(path, "r:") as archive:
        member = archive.extractfile("manifest.json")
        if member is None:
            raise ValueError(f"{path} is not a docker save tarball (no manifest.json)")
        manifest = json.loads(member.read())
    tags = [t for entry in manifest for t in entry.get("RepoTags") or []]
    if not tags:
        raise ValueError(f"{path} holds no tagged image")
    return str(tags[0])
