"""The files of a dataset version a per-file job runs over, and the signed URLs workers fetch them by.

Selection (``select_files``) reads the package's index only (``package_files``): the regular files of the
version (links left out, as in its manifest), sorted by path, optionally narrowed by a glob. A glob without
``/`` matches a file's name in any folder (``*.png``); one with ``/`` matches the whole path
(``images/*.png``). ``*`` and ``?`` stay within one path segment, ``**`` spans any number of them
(``images/**/*.png``), ``[abc]`` and ``[!abc]`` are character classes.

A selected file reaches a worker as any file input does (docs/api.md, File inputs): a ``{"url": ...}`` the
worker downloads. The URL points at ``GET /packages/{sha256}/files/{path}?expires=&sig=`` on this registry,
signed like a blob URL (HMAC-SHA256 with the blob store's key, over a message that cannot be mistaken for a
blob's), and that handler streams the file straight out of the stored package: nothing is copied or
extracted for a job, and the worker needs no token. Signatures are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Final
from urllib.parse import quote

from dlhub.common.errors import Forbidden, ValidationFailed
from dlhub.registry.blobs import BlobStore
from dlhub.registry.package_files import FileEntry, IndexedPackage
from dlhub.registry.urls import API_PREFIX

MAX_GLOB_CHARS: Final = 1024
PACKAGE_FILE: Final = API_PREFIX + "/packages/{sha256:[0-9a-f]{64}}/files/{path:.+}"
_SIGNED_KIND: Final = "package-file"


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a path glob (see the module docstring); 400 ``files`` when malformed."""
    if not pattern or len(pattern) > MAX_GLOB_CHARS or pattern.startswith("/"):
        raise ValidationFailed(
            f"files: a non-empty relative glob of at most {MAX_GLOB_CHARS} characters", field="files"
        )
    out: list[str] = [] if "/" in pattern else ["(?:.*/)?"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValidationFailed(f"files: unclosed '[' in {pattern!r}", field="files")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace(r"\-", "-")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise ValidationFailed(f"files: invalid glob {pattern!r}: {exc}", field="files") from None


def select_files(package: IndexedPackage, pattern: str | None) -> list[FileEntry]:
    """The regular files of the package matching ``pattern`` (all without one), sorted by path; 400
    ``files`` when none does."""
    regular = [entry for entry in package.index.files if entry.size >= 0 and not entry.link]
    if pattern is None:
        selected = regular
    else:
        matcher = glob_regex(pattern)
        selected = [entry for entry in regular if matcher.fullmatch(entry.path)]
    if not selected:
        what = f"matching {pattern!r}" if pattern is not None else "at all"
        raise ValidationFailed(f"the dataset has no files {what} ({len(regular)} files)", field="files")
    return sorted(selected, key=lambda entry: entry.path)


class PackageFileSigner:
    """Signs and checks ``/packages/{sha256}/files/{path}`` URLs with the blob store's key."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    def signature(self, sha256: str, path: str, expires_s: int) -> str:
        message = f"{_SIGNED_KIND}\n{sha256}\n{path}\n{expires_s}".encode()
        return hmac.new(self._store.signing_key(), message, hashlib.sha256).hexdigest()

    def signed_path(self, sha256: str, path: str, ttl_s: float) -> str:
        expires = int(time.time() + ttl_s)
        signature = self.signature(sha256, path, expires)
        where = f"{API_PREFIX}/packages/{sha256}/files/{quote(path, safe='/')}"
        return f"{where}?expires={expires}&sig={signature}"

    def check(self, sha256: str, path: str, expires: str | None, sig: str | None) -> None:
        """403 unless ``sig`` signs this file until ``expires`` and that time has not passed."""
        if not expires or not sig or not (expires.isascii() and expires.isdigit()):
            raise Forbidden(
                "a package file download needs the expires and sig query parameters of a signed URL"
            )
        expected = self.signature(sha256, path, int(expires)).encode()
        if not hmac.compare_digest(expected, sig.encode("utf-8", "replace")):
            raise Forbidden("invalid package file URL signature")
        if int(expires) <= time.time():
            raise Forbidden("the signed package file URL has expired")
