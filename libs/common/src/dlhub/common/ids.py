"""Identifiers and topic names."""

from __future__ import annotations

import os
import re
import uuid

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

BUILDER_TOPIC = "builder/build"
SEARCH_INDEX_TOPIC = "search/index"
SEARCH_QUERY_TOPIC = "search/query"
SEARCH_REINDEX_TOPIC = "search/reindex"
SERVABLE_PREFIX = "servable/"
ANY_SERVABLE_TOPIC = SERVABLE_PREFIX + "*"
DEVICE_KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
"""A kind of device a servable's placement may need (``gpu``); the publication schema says the same."""
DEVICE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}(:[A-Za-z0-9_.-]{1,64})?$"
"""A device a Task Manager offers: its kind, then optionally ``:`` and its id (``gpu:0``, ``gpu:GPU-8a``)."""


class _RandomPool:
    """Kernel randomness fetched 4 KiB at a time: the same bytes ``uuid.uuid4`` reads, but one ``getrandom``
    call per 256 IDs instead of one per ID on the request path. A forked child starts with a fresh pool."""

    CHUNK_BYTES = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def reset(self) -> None:
        self._buffer, self._offset = b"", 0

    def take16(self) -> bytearray:
        start = self._offset
        if start + 16 > len(self._buffer):
            self._buffer, start = os.urandom(self.CHUNK_BYTES), 0
        self._offset = start + 16
        return bytearray(self._buffer[start : start + 16])


_pool = _RandomPool()
os.register_at_fork(after_in_child=_pool.reset)


def new_id() -> str:
    """Return a random (version 4, RFC 4122 variant) UUID string, used for task, handler and client IDs."""
    raw = _pool.take16()
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def servable_topic(owner: str, name: str, version: int) -> str:
    return f"{SERVABLE_PREFIX}{owner}/{name}@{version}"


def serves_topics(patterns: list[str]) -> list[str]:
    """The broker topics of servable name patterns (``worker.serves``): ``*`` every servable, ``alice/*``
    every servable of alice, ``alice/model`` every version of it, ``alice/model@3`` one version, other
    shell-style globs (``*/resnet*``) as written, every version. ValueError on an empty or spaced pattern."""
    topics = []
    for pattern in patterns:
        if not pattern or any(c.isspace() for c in pattern) or pattern.startswith("/"):
            raise ValueError(f"not a servable name pattern: {pattern!r}")
        if not pattern.endswith("*") and "@" not in pattern:
            pattern += "@*"
        topics.append(SERVABLE_PREFIX + pattern)
    return topics


def parse_servable_topic(topic: str) -> tuple[str, str, int]:
    """Split ``servable/<owner>/<name>@<version>``; raise ValueError on anything else."""
    if not topic.startswith(SERVABLE_PREFIX):
        raise ValueError(f"not a servable topic: {topic!r}")
    owner, _, rest = topic[len(SERVABLE_PREFIX) :].partition("/")
    name, _, version = rest.partition("@")
    if not (NAME_RE.match(owner) and NAME_RE.match(name) and version.isascii() and version.isdigit()):
        raise ValueError(f"malformed servable topic: {topic!r}")
    return owner, name, int(version)


def topic_matches(pattern: str, topic: str) -> bool:
    """True when ``pattern`` (exact, or a prefix ending in ``*``) covers ``topic``."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic
