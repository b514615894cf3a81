"""Identifiers and topic names."""

from __future__ import annotations

import re
import uuid

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

BUILDER_TOPIC = "builder/build"
SEARCH_INDEX_TOPIC = "search/index"
SEARCH_QUERY_TOPIC = "search/query"
SEARCH_REINDEX_TOPIC = "search/reindex"
SERVABLE_PREFIX = "servable/"
ANY_SERVABLE_TOPIC = SERVABLE_PREFIX + "*"


def new_id() -> str:
    """Return a random UUID string, used for task, handler and client IDs."""
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def servable_topic(owner: str, name: str, version: int) -> str:
    return f"{SERVABLE_PREFIX}{owner}/{name}@{version}"


def parse_servable_topic(topic: str) -> tuple[str, str, int]:
    """Split ``servable/<owner>/<name>@<version>``; raise ValueError on anything else."""
    if not topic.startswith(SERVABLE_PREFIX):
        raise ValueError(f"not a servable topic: {topic!r}")
    owner, _, rest = topic[len(SERVABLE_PREFIX) :].partition("/")
    name, _, version = rest.partition("@")
    if not (NAME_RE.match(owner) and NAME_RE.match(name) and version.isdigit()):
        raise ValueError(f"malformed servable topic: {topic!r}")
    return owner, name, int(version)


def topic_matches(pattern: str, topic: str) -> bool:
    """True when ``pattern`` (exact, or a prefix ending in ``*``) covers ``topic``."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic
