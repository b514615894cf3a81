"""``GET /whoami``, ``GET /auth``, ``GET|PUT /servables/{owner}/{name}/access`` (share) and ``GET /audit``."""

from __future__ import annotations

from aiohttp import web

from dlhub.common.errors import Forbidden
from dlhub.registry.auth import PUBLIC, Caller, normalise_principal
from dlhub.registry.clock import iso_ms
from dlhub.registry.http.contract import (
    Access,
    AccessRequest,
    AuditEvent,
    AuditLog,
    AuditQueryParams,
    AuthInfo,
    WhoAmI,
)
from dlhub.registry.http.keys import AUDIT, AUTH, SERVABLES, SETTINGS, STORE
from dlhub.registry.http.query import epoch_seconds, parse_query
from dlhub.registry.http.request import caller_of, decode_json, read_json_bytes
from dlhub.registry.http.response import json_response
from dlhub.registry.servables import newest_live
from dlhub.registry.store import AuditQuery, VersionRecord


async def whoami(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    return json_response(
        WhoAmI(
            user=caller.user,
            provider=caller.provider if caller.authenticated else "anonymous",
            identities=list(caller.identities),
            groups=list(caller.groups),
            admin=caller.admin,
            token=caller.token_hint or None,
        )
    )


async def auth_info(request: web.Request) -> web.Response:
    auth = request.app[SETTINGS].auth
    if auth.provider == "globus":
        base = auth.globus.auth_url.rstrip("/")
        info = AuthInfo(
            provider="globus",
            native_client_id=auth.globus.native_client_id,
            scope=auth.globus.scope,
            authorize_url=f"{base}/v2/oauth2/authorize",
            token_url=f"{base}/v2/oauth2/token",
        )
    else:
        info = AuthInfo(provider="local")
    return json_response(info)


def _access(record: VersionRecord) -> Access:
    return Access(
        owner=record.owner,
        name=record.name,
        shorthand_name=record.shorthand_name,
        visible_to=list(record.visible_to),
        maintainers=list(record.maintainers),
    )


async def get_access(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    versions = await request.app[SERVABLES].visible_versions(caller, owner, name)
    return json_response(_access(newest_live(versions, owner, name)))


def _principals(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        principal = normalise_principal(value)
        if principal not in out:
            out.append(principal)
    return out


async def _new_visible_to(caller: Caller, request: web.Request, body: AccessRequest) -> list[str] | None:
    """The visible_to the request asks for: replaced, or the current one with additions and removals."""
    if body.visible_to is None and not body.add and not body.remove:
        return None
    owner, name = request.match_info["owner"], request.match_info["name"]
    if body.visible_to is not None:
        visible = _principals(body.visible_to)
    else:
        versions = await request.app[SERVABLES].visible_versions(caller, owner, name)
        visible = list(newest_live(versions, owner, name).visible_to)
    for principal in _principals(body.add):
        if principal not in visible:
            visible.append(principal)
    removed = set(_principals(body.remove))
    return [p for p in visible if p not in removed]


async def set_access(request: web.Request) -> web.Response:
    """PUT /servables/{owner}/{name}/access: share with principals, make public or private again."""
    caller = await caller_of(request)
    request.app[AUTH].require_user(caller)
    owner, name = request.match_info["owner"], request.match_info["name"]
    raw = await read_json_bytes(request, max_bytes=request.app[SETTINGS].registry.max_request_json_bytes)
    body = decode_json(raw, AccessRequest)
    visible_to = await _new_visible_to(caller, request, body)
    maintainers = _principals(body.maintainers) if body.maintainers is not None else None
    maintainers = [m for m in maintainers if m != PUBLIC] if maintainers is not None else None
    record = await request.app[SERVABLES].set_access(
        caller, owner, name, visible_to=visible_to, maintainers=maintainers
    )
    access = _access(record)
    await request.app[AUDIT].record(
        caller,
        "visibility",
        f"{owner}/{name}",
        visible_to=access.visible_to,
        maintainers=access.maintainers,
    )
    return json_response(access)


async def list_audit(request: web.Request) -> web.Response:
    """GET /audit (administrators only): events newest first, filtered by actor, action, target, time."""
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    if not caller.admin:
        raise Forbidden(f"{user} is not an administrator (registry.admin_users)")
    params = parse_query(request, AuditQueryParams)
    since = epoch_seconds("since", params.since)
    until = epoch_seconds("until", params.until, end_of_day=True)
    query = AuditQuery(
        actor=params.actor or None,
        action=params.action or None,
        target=params.target or None,
        since_ms=int(since * 1000) if since is not None else None,
        until_ms=int(until * 1000) + 1 if until is not None else None,
        limit=min(params.limit, request.app[SETTINGS].auth.audit_max_page),
    )
    records = await request.app[STORE].list_audit(query)
    events = [
        AuditEvent(at=iso_ms(r.at_ms), actor=r.actor, action=r.action, target=r.target, detail=r.detail)
        for r in records
    ]
    return json_response(AuditLog(events=events))
