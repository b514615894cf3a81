"""Query strings into typed structs: one parser for every endpoint, one 400 shape naming the parameter.

Each endpoint declares its parameters as a ``contract`` struct: bounds as ``msgspec.Meta(ge=, le=)``,
choices as ``Literal``, comma-separated lists as ``list[...]``. The same struct generates the parameters
of the OpenAPI document, so what is documented is what is enforced.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Final, TypeVar

import msgspec
import msgspec.inspect as mi
from aiohttp import web
from msgspec import UNSET

from dlhub.common.errors import ValidationFailed
from dlhub.registry.http.contract import PAGE_SIZE_CAP, SHAPE_PATTERN
from dlhub.registry.http.keys import SETTINGS
from dlhub.registry.http.request import field_of

Q = TypeVar("Q", bound=msgspec.Struct)


@functools.cache
def _field_kinds(type_: type[msgspec.Struct]) -> dict[str, str]:
    """``enum``, ``list``, ``text`` (a string) or ``plain`` (a number, a boolean) for each field, by its
    encoded (query) name."""
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
        elif isinstance(inner, mi.StrType):
            kinds[field.encode_name] = "text"
        else:
            kinds[field.encode_name] = "plain"
    return kinds


def parse_query(request: web.Request, type_: type[Q]) -> Q:
    """The request's query as ``type_``; unknown parameters are ignored.

    An empty value counts as absent for a text or list parameter (``?owner=`` lists everyone's); for a
    number, a boolean or a parameter with fixed choices, empty is not a value (400, as documented), and so
    is a parameter given twice.
    """
    values: dict[str, object] = {}
    for name, kind in _field_kinds(type_).items():
        given = request.query.getall(name, ())
        if len(given) > 1:
            raise ValidationFailed(f"query parameter {name} is given {len(given)} times", field=name)
        text = given[0] if given else None
        if text is None or (text == "" and kind in ("text", "list")):
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


EPOCH_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DATE_TIME_RE = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<fraction>\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


EPOCH_MIN_S: Final = -62_135_596_800.0  # 0001-01-01T00:00:00Z
EPOCH_MAX_S: Final = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def epoch_seconds(name: str, text: str | None, *, end_of_day: bool = False) -> float | None:
    """Epoch seconds from epoch seconds, an RFC 3339 date, or an RFC 3339 date-time (UTC without an offset):
    the forms the OpenAPI document states for ``published_from``/``published_to``, and no others.

    A date without a time means the start of that day (UTC), or its last millisecond with ``end_of_day``,
    so ``published_to=2024-05-31`` includes the whole of May 31st.
    """
    if not text:
        return None
    try:
        return _epoch_seconds(text, end_of_day=end_of_day)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be epoch seconds or an ISO 8601 date or date-time (2024-05-31, "
            f"2024-05-31T12:00:00Z), got {text!r}",
            field=name,
        ) from None


def _epoch_seconds(text: str, *, end_of_day: bool) -> float:
    """ValueError for anything but the three documented forms, or an impossible date or time."""
    if EPOCH_RE.fullmatch(text):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError(text)
        # Any number is a moment; those beyond years 1..9999 mean "since ever" / "until forever", and are
        # clamped so that stores never see an integer they cannot hold.
        return min(max(seconds, EPOCH_MIN_S), EPOCH_MAX_S)
    if DATE_RE.fullmatch(text):
        day = date.fromisoformat(text)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return (start + timedelta(days=1, milliseconds=-1) if end_of_day else start).timestamp()
    match = DATE_TIME_RE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    offset = (match["offset"] or "+00:00").upper().replace("Z", "+00:00")
    fraction = (match["fraction"] or "")[:7]  # Python keeps microseconds; RFC 3339 allows any precision
    clock = match["time"]
    leap = clock.endswith(":60")  # RFC 3339 allows a leap second; Python's datetime does not
    if leap:
        clock = clock[:-2] + "59"
    moment = datetime.fromisoformat(f"{match['date']}T{clock}{fraction}{offset}")
    return moment.timestamp() + (1.0 if leap else 0.0)


SHAPE_RE: Final = re.compile(SHAPE_PATTERN.removeprefix("^").removesuffix("$"))


def shape(name: str, text: str | None) -> list[int | None] | None:
    """A shape parameter: the JSON array its OpenAPI pattern describes (``[null,4]``), else 400 naming it."""
    if not text:
        return None
    if SHAPE_RE.fullmatch(text) is None:
        raise ValidationFailed(
            f"{name} must be a JSON array of at most 32 sizes, each null or a non-negative integer "
            f"(e.g. [null,4]), got {text[:80]!r}",
            field=name,
        )
    sizes: list[int | None] = json.loads(text)
    return sizes


def page_size(request: web.Request, limit: int | msgspec.UnsetType) -> int:
    """The page size asked for, else the configured default; never above ``search.max_page_size``."""
    search = request.app[SETTINGS].search
    if limit is UNSET:
        return min(search.default_page_size, search.max_page_size, PAGE_SIZE_CAP)
    if limit > search.max_page_size:
        raise ValidationFailed(f"limit must be at most {search.max_page_size} here", field="limit")
    return limit
