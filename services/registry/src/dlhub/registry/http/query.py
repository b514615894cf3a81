"""Query strings into typed structs: one parser for every endpoint, one 400 shape naming the parameter.

Each endpoint declares its parameters as a ``contract`` struct: bounds as ``msgspec.Meta(ge=, le=)``,
choices as ``Literal``, comma-separated lists as ``list[...]``. The same struct generates the parameters
of the OpenAPI document, so what is documented is what is enforced.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import msgspec
import msgspec.inspect as mi
from aiohttp import web
from msgspec import UNSET

from dlhub.common.errors import ValidationFailed
from dlhub.registry.http.contract import PAGE_SIZE_CAP
from dlhub.registry.http.keys import SETTINGS
from dlhub.registry.http.request import field_of

Q = TypeVar("Q", bound=msgspec.Struct)


@functools.cache
def _field_kinds(type_: type[msgspec.Struct]) -> dict[str, str]:
    """``enum``, ``list`` or ``plain`` for each field, by its encoded (query) name."""
    info = mi.type_info(type_)
    assert isinstance(info, mi.StructType)
    kinds: dict[str, str] = {}
    for field in info.fields:
        inner = field.type
        if isinstance(inner, mi.Metadata):  # a description or extra schema around the type
            inner = inner.type
        if isinstance(inner, mi.UnionType):  # X | None: what matters is X (UnsetType is already left out)
            inner = next(t for t in inner.types if not isinstance(t, mi.NoneType))
        if isinstance(inner, mi.Metadata):
            inner = inner.type
        if isinstance(inner, mi.LiteralType):
            kinds[field.encode_name] = "enum"
        elif isinstance(inner, mi.ListType):
            kinds[field.encode_name] = "list"
        else:
            kinds[field.encode_name] = "plain"
    return kinds


def parse_query(request: web.Request, type_: type[Q]) -> Q:
    """The request's query as ``type_``; unknown parameters are ignored.

    An empty value counts as absent (``?owner=`` lists everyone's), except for a parameter with fixed
    choices, where empty is not one of them (400, as documented).
    """
    values: dict[str, object] = {}
    for name, kind in _field_kinds(type_).items():
        text = request.query.get(name)
        if text is None or (text == "" and kind != "enum"):
            continue
        if kind == "list":
            values[name] = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        else:
            values[name] = text
    try:
        return msgspec.convert(values, type_, strict=False)
    except msgspec.ValidationError as exc:
        parameter = (field_of(exc) or "").split("[")[0].split(".")[0] or None
        raise ValidationFailed(f"invalid query parameter {parameter}: {exc}", field=parameter) from None


def epoch_seconds(name: str, text: str | None, *, end_of_day: bool = False) -> float | None:
    """Epoch seconds from an ISO 8601 date or date-time (UTC unless it has an offset) or a number.

    A date without a time means the start of that day (UTC), or its last millisecond with ``end_of_day``,
    so ``published_to=2024-05-31`` includes the whole of May 31st.
    """
    text = (text or "").strip()
    if not text:
        return None
    return _epoch_seconds(name, text, end_of_day=end_of_day)


def _epoch_seconds(name: str, text: str, *, end_of_day: bool) -> float:
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValidationFailed(f"{name} must be finite epoch seconds, got {text!r}", field=name)
        return seconds
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if end_of_day:
            start += timedelta(days=1, milliseconds=-1)
        return start.timestamp()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an ISO 8601 date or date-time (2024-05-31, 2024-05-31T12:00:00Z) or epoch "
            f"seconds, got {text!r}",
            field=name,
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def page_size(request: web.Request, limit: int | msgspec.UnsetType) -> int:
    """The page size asked for, else the configured default; never above ``search.max_page_size``."""
    search = request.app[SETTINGS].search
    if limit is UNSET:
        return min(search.default_page_size, search.max_page_size, PAGE_SIZE_CAP)
    if limit > search.max_page_size:
        raise ValidationFailed(f"limit must be at most {search.max_page_size} here", field="limit")
    return limit
