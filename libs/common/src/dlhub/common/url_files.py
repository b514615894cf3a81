"""Components named by URL in a publication (``dlhub.url_files``): their declaration and its checks.

A publication may name files by URL instead of uploading them::

    "url_files": [{"path": "weights/model.bin", "url": "s3://bucket/key", "sha256": "<64 hex>",
                   "size_bytes": 1234}]

The registry checks the declaration at publish (a typed 400 naming the field) and the builder checks it again
before fetching: the builder never trusts what reached it. Only ``https``, ``http`` and ``s3`` URLs are
accepted; URLs carrying credentials (``user:password@``) are refused, since the document is readable by
whoever may see the servable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

from dlhub.common.errors import ValidationFailed

FIELD: Final = "dlhub.url_files"
SCHEMES: Final = ("https", "http", "s3")
SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
# S3 bucket names: 3-63 of lowercase letters, digits, '.', '-', starting and ending alphanumeric.
BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
MAX_URL_CHARS: Final = 4096
MAX_PATH_CHARS: Final = 1024
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class UrlFile:
    """One declared URL component: where it goes in the package, where it comes from, what it must be."""

    path: str
    """Normalised relative POSIX path inside the package."""
    url: str
    sha256: str
    """Lowercase hex digest."""
    size_bytes: int | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def display_url(self) -> str:
        """The URL without its query and fragment, safe for logs (a presigned URL's signature is dropped)."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def normalize_path(raw: str, field: str) -> str:
    """A safe relative package path, or ``ValidationFailed`` naming ``field``."""
    if not raw or len(raw) > MAX_PATH_CHARS:
        raise ValidationFailed(
            f"{field} must be a relative path of 1-{MAX_PATH_CHARS} characters", field=field
        )
    if "\x00" in raw or "\\" in raw:
        raise ValidationFailed(f"{field} {raw!r} has a NUL byte or a backslash", field=field)
    if raw.startswith("/") or _DRIVE_RE.match(raw):
        raise ValidationFailed(f"{field} {raw!r} is an absolute path", field=field)
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValidationFailed(f"{field} {raw!r} has a '..' component", field=field)
    if not parts:
        raise ValidationFailed(f"{field} {raw!r} names no file", field=field)
    return "/".join(parts)


def _check_url(raw: str, field: str) -> SplitResult:
    if not raw or len(raw) > MAX_URL_CHARS or any(ch.isspace() or ord(ch) < 0x20 for ch in raw):
        raise ValidationFailed(f"{field} must be a URL of at most {MAX_URL_CHARS} characters", field=field)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed(f"{field} is not a valid URL: {exc}", field=field) from exc
    if parts.scheme not in SCHEMES:
        raise ValidationFailed(
            f"{field}: unsupported URL scheme {parts.scheme!r}; use one of {', '.join(SCHEMES)}", field=field
        )
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed(f"{field}: credentials in the URL are not allowed", field=field)
    if not parts.hostname:
        raise ValidationFailed(f"{field}: the URL names no host (or bucket)", field=field)
    if parts.scheme == "s3":
        if not BUCKET_RE.fullmatch(parts.netloc) or port is not None:
            raise ValidationFailed(f"{field}: {parts.netloc!r} is not a valid S3 bucket name", field=field)
        if not parts.path.lstrip("/") or parts.query or parts.fragment:
            raise ValidationFailed(f"{field}: an S3 URL is s3://bucket/key", field=field)
    return parts


def _check_entry(entry: Any, field: str) -> UrlFile:
    if not isinstance(entry, Mapping):
        raise ValidationFailed(f"{field} must be an object with path, url and sha256", field=field)
    unknown = sorted(set(entry) - {"path", "url", "sha256", "size_bytes"})
    if unknown:
        raise ValidationFailed(f"{field}: unknown field {unknown[0]!r}", field=f"{field}.{unknown[0]}")
    for key in ("path", "url", "sha256"):
        if key not in entry:
            raise ValidationFailed(f"{field}.{key} is required", field=f"{field}.{key}")
        if not isinstance(entry[key], str):
            raise ValidationFailed(f"{field}.{key} must be a string", field=f"{field}.{key}")
    sha256 = entry["sha256"].lower()
    if not SHA256_RE.fullmatch(sha256):
        raise ValidationFailed(
            f"{field}.sha256 must be the file's SHA-256 as 64 hexadecimal digits", field=f"{field}.sha256"
        )
    size = entry.get("size_bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValidationFailed(f"{field}.size_bytes must be a whole number >= 0", field=f"{field}.size_bytes")
    _check_url(entry["url"], f"{field}.url")
    path = normalize_path(entry["path"], f"{field}.path")
    return UrlFile(path=path, url=entry["url"], sha256=sha256, size_bytes=size)


def url_files(metadata: Mapping[str, Any]) -> list[UrlFile]:
    """The declared URL components of a publication document, checked; ``ValidationFailed`` names the field.

    Two components may not share a path, nor may one sit inside another."""
    dlhub = metadata.get("dlhub")
    raw = dlhub.get("url_files") if isinstance(dlhub, Mapping) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValidationFailed(f"{FIELD} must be a list", field=FIELD)
    entries = [_check_entry(entry, f"{FIELD}[{i}]") for i, entry in enumerate(raw)]
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        prefixes = {"/".join(entry.path.split("/")[:n]) for n in range(1, entry.path.count("/") + 1)}
        if entry.path in seen or prefixes & seen:
            raise ValidationFailed(
                f"{FIELD}[{i}].path {entry.path!r} collides with another URL component",
                field=f"{FIELD}[{i}].path",
            )
        seen.add(entry.path)
    # A later entry that is a parent of an earlier one: check the reverse direction too.
    for i, entry in enumerate(entries):
        if any(other.startswith(entry.path + "/") for other in seen):
            raise ValidationFailed(
                f"{FIELD}[{i}].path {entry.path!r} collides with another URL component",
                field=f"{FIELD}[{i}].path",
            )
    return entries
