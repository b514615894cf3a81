"""GET /servables/{owner}/{name}[/versions/{version}]/citation?format=bibtex|datacite."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from dlhub.common.errors import NotFound
from dlhub.registry.auth import Caller
from dlhub.registry.citation import bibtex, datacite_json
from dlhub.registry.http.contract import CitationQuery
from dlhub.registry.http.keys import SERVABLES, SETTINGS
from dlhub.registry.http.query import parse_query
from dlhub.registry.http.request import caller_of, version_of
from dlhub.registry.http.response import json_response
from dlhub.registry.store import VersionRecord
from dlhub.registry.urls import API_PREFIX

BIBTEX_CONTENT_TYPE: Final = "application/x-bibtex"


def api_base(request: web.Request) -> str:
    """The registry's API URL: ``registry.public_url`` (with ``/api/v1`` appended if it lacks it), else the
    scheme and host the request came to."""
    public = request.app[SETTINGS].registry.public_url
    if public:
        base = public.rstrip("/")
        return base if base.endswith(API_PREFIX) else base + API_PREFIX
    return str(request.url.origin()) + API_PREFIX


async def _citation(request: web.Request, version: int | None) -> web.Response:
    caller = await caller_of(request)
    fmt = parse_query(request, CitationQuery).format
    owner, name = request.match_info["owner"], request.match_info["name"]
    record = await _cited(request, caller, owner, name, version)
    base = api_base(request)
    if fmt == "datacite":
        return json_response(datacite_json(record, api_base=base))
    return web.Response(text=bibtex(record, api_base=base), content_type=BIBTEX_CONTENT_TYPE, charset="utf-8")


async def _cited(
    request: web.Request, caller: Caller, owner: str, name: str, version: int | None
) -> VersionRecord:
    """The version to cite; unlike describe, a tombstone is citable (its citation says it was withdrawn).

    Latest: the newest live version, else (everything deleted) the newest tombstone.
    """
    versions = await request.app[SERVABLES].visible_versions(caller, owner, name)  # 404 when none visible
    if version is None:
        live = [r for r in versions if not r.deleted]
        return max(live or versions, key=lambda r: r.version)
    for record in versions:
        if record.version == version:
            return record
    raise NotFound(f"version {version} of {owner}/{name} not found")


async def citation_latest(request: web.Request) -> web.Response:
    """The citation of the newest live version the caller may see (404 when none is visible)."""
    return await _citation(request, None)


async def citation_version(request: web.Request) -> web.Response:
    """The citation of one version, deleted or not (404 when unknown or not visible)."""
    return await _citation(request, version_of(request))
