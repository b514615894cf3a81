"""Servables: publish, list, describe, update, delete and (un)deprecate versions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web
from msgspec import UNSET

from dlhub.common.errors import ValidationFailed
from dlhub.registry.auth import Caller
from dlhub.registry.clock import iso_ms
from dlhub.registry.datasets import is_dataset, links_of
from dlhub.registry.http.contract import (
    MAX_REASON_CHARS,
    DatasetLink,
    DatasetUse,
    Deleted,
    DeprecateRequest,
    Deprecation,
    LastVerification,
    PublishAccepted,
    Servable,
    ServableList,
    ServablePlacement,
    ServablesQuery,
    ServableSummary,
    VectorCheck,
    VersionList,
    VersionSummary,
)
from dlhub.registry.http.keys import AUDIT, AUTH, SERVABLES, SETTINGS
from dlhub.registry.http.query import page_size, parse_query
from dlhub.registry.http.request import caller_of, decode_json, read_json_bytes, read_upload, version_of
from dlhub.registry.http.response import json_response
from dlhub.registry.metadata import title_of
from dlhub.registry.packages import detect_format
from dlhub.registry.pipelines import PIPELINE_TYPE, is_pipeline
from dlhub.registry.placement import placement_block
from dlhub.registry.servables import newest_live
from dlhub.registry.store import StoredVerification, VersionRecord
from dlhub.registry.urls import task_url


def publish_response(record: VersionRecord) -> web.Response:
    accepted = PublishAccepted(
        owner=record.owner,
        name=record.name,
        version=record.version,
        shorthand_name=record.shorthand_name,
        task_id=record.build_task_id,
        status=record.status,
        status_url=task_url(record.build_task_id),
    )
    return json_response(accepted, status=202)


def _kind(record: VersionRecord) -> dict[str, Any]:
    """``type`` (servable, pipeline, dataset) and, for a pipeline, its pinned ``steps``."""
    if is_pipeline(record.metadata):
        return {"type": PIPELINE_TYPE, "steps": list(record.metadata["servable"].get("steps") or [])}
    return {"type": str((record.metadata.get("dlhub") or {}).get("type") or "servable")}


def version_summary(v: VersionRecord, *, detail: bool = False) -> VersionSummary:
    """Lifecycle fields shared by describe and the versions list (``detail``: with reason and digest)."""
    summary = VersionSummary(
        version=v.version,
        status=v.status,
        published_at=iso_ms(v.published_at_ms),
        deprecated=v.deprecated,
        environment=v.environment,
        build_state=v.build_state or None,
    )
    if detail:
        summary.status_reason, summary.digest = v.status_reason, v.digest
    if v.deprecated:
        summary.deprecation_reason = v.deprecation_reason
        summary.deprecation_replacement = v.deprecation_replacement or None
        summary.deprecated_at = iso_ms(v.deprecated_at_ms) if v.deprecated_at_ms else None
    if v.deleted:
        summary.deleted_at = iso_ms(v.deleted_at_ms) if v.deleted_at_ms else None
        summary.deleted_by = v.deleted_by
    return summary


def describe(
    record: VersionRecord,
    versions: Sequence[VersionRecord],
    users: tuple[list[dict[str, Any]], bool] | None = None,
    verification: StoredVerification | None = None,
) -> Servable:
    """The describe answer; ``users``: for a dataset, the servables that name it and whether there are more
    (``Servables.used_by``);
    ``verification``: the latest run of its test vectors."""
    return Servable(
        **_kind(record),
        owner=record.owner,
        name=record.name,
        version=record.version,
        shorthand_name=record.shorthand_name,
        status=record.status,
        status_reason=record.status_reason,
        digest=record.digest,
        files=list(record.files),
        published_at=iso_ms(record.published_at_ms),
        deprecated=record.deprecated,
        deprecation_reason=record.deprecation_reason if record.deprecated else None,
        deprecation_replacement=record.deprecation_replacement or None,
        metadata=record.metadata,
        versions=[version_summary(v) for v in versions],
        environment=record.environment,
        build_state=record.build_state or None,
        manifest=list(record.manifest),
        datasets=[msgspec.convert(link, DatasetLink) for link in links_of(record.metadata)],
        previews=list(record.previews) if is_dataset(record.metadata) else UNSET,
        used_by=UNSET if users is None else [msgspec.convert(u, DatasetUse) for u in users[0]],
        used_by_truncated=UNSET if users is None else users[1],
        last_verification=None if verification is None else last_verification(verification),
        placement=_placement(record.metadata),
    )


def _placement(metadata: dict[str, Any]) -> ServablePlacement | None:
    block = placement_block(metadata)
    return msgspec.convert(block, ServablePlacement) if block else None


def last_verification(verification: StoredVerification) -> LastVerification:
    checks = [
        VectorCheck(index=v.index, passed=v.passed, message=v.message or UNSET) for v in verification.vectors
    ]
    return LastVerification(
        at=iso_ms(round(verification.at_unix_s * 1000)),
        trigger=verification.trigger,
        passed=verification.passed,
        passed_count=sum(v.passed for v in verification.vectors),
        total=len(verification.vectors),
        vectors=checks,
    )


async def _users(
    request: web.Request, caller: Caller, record: VersionRecord
) -> tuple[list[dict[str, Any]], bool] | None:
    if not is_dataset(record.metadata) or record.deleted:
        return None
    return await request.app[SERVABLES].used_by(caller, record)


def summary(record: VersionRecord) -> ServableSummary:
    return ServableSummary(
        **_kind(record),
        owner=record.owner,
        name=record.name,
        version=record.version,
        shorthand_name=record.shorthand_name,
        status=record.status,
        published_at=iso_ms(record.published_at_ms),
        deprecated=record.deprecated,
        title=title_of(record.metadata),
    )


async def _document_and_package(request: web.Request) -> tuple[Any, bytes | None, str | None]:
    """The metadata document, package and file name of a multipart body, or a JSON document alone."""
    settings = request.app[SETTINGS].registry
    if request.content_type == "multipart/form-data":
        upload = await read_upload(
            request, max_bytes=settings.max_upload_bytes, max_metadata_bytes=settings.max_request_json_bytes
        )
        return upload.metadata, upload.package, upload.filename
    body = await read_json_bytes(request, max_bytes=settings.max_request_json_bytes)
    return decode_json(body, dict[str, Any], what="metadata document"), None, None


def _names_files(document: Any) -> bool:
    dlhub = document.get("dlhub") if isinstance(document, dict) else None
    files = dlhub.get("files") if isinstance(dlhub, dict) else None
    return isinstance(files, dict) and any(files.values())


async def publish(request: web.Request) -> web.Response:
    """POST /servables: multipart ``metadata`` (+ ``package``), or a JSON document (no files, e.g. a
    pipeline) -> 202 with the build task (a pipeline is ready at once: its task is already completed)."""
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    document, package, filename = await _document_and_package(request)
    if request.content_type != "multipart/form-data" and _names_files(document):
        # A first version has no earlier package to reuse: its files can only come as a package part.
        raise ValidationFailed(
            "the document names files (dlhub.files); publish it as multipart/form-data with a 'package' part",
            field="Content-Type",
        )
    record = await request.app[SERVABLES].publish(
        owner=user,
        document=document,
        package=package,
        package_format=detect_format(filename, package or b""),
        caller=caller,
    )
    await request.app[AUDIT].record(caller, "publish", record.label, visible_to=list(record.visible_to))
    return publish_response(record)


async def update(request: web.Request) -> web.Response:
    """PUT /servables/{owner}/{name}: JSON metadata (same files) or multipart (new files) -> new version."""
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    owner, name = request.match_info["owner"], request.match_info["name"]
    document, package, filename = await _document_and_package(request)
    package_format = detect_format(filename, package or b"")
    record = await request.app[SERVABLES].update(
        caller,
        user=user,
        owner=owner,
        name=name,
        document=document,
        package=package,
        package_format=package_format,
    )
    await request.app[AUDIT].record(caller, "update", record.label, visible_to=list(record.visible_to))
    return publish_response(record)


async def list_servables(request: web.Request) -> web.Response:
    """GET /servables?owner=&limit=&offset=: the newest visible version of each servable."""
    caller = await caller_of(request)
    query = parse_query(request, ServablesQuery)
    limit = page_size(request, query.limit)
    owner = query.owner or None
    records = await request.app[SERVABLES].list_latest(caller, owner)
    page = records[query.offset : query.offset + limit]
    listing = ServableList(
        total=len(records), limit=limit, offset=query.offset, servables=[summary(r) for r in page]
    )
    return json_response(listing)


async def describe_latest(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    servables = request.app[SERVABLES]
    versions = await servables.visible_versions(caller, owner, name)
    record = newest_live(versions, owner, name)
    users, verification = await asyncio.gather(
        _users(request, caller, record), servables.last_verification(record)
    )
    return json_response(describe(record, versions, users, verification))


async def describe_version(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    servables = request.app[SERVABLES]
    versions = await servables.visible_versions(caller, owner, name)
    record = await servables.describe_target(caller, owner, name, version_of(request))
    users, verification = await asyncio.gather(
        _users(request, caller, record), servables.last_verification(record)
    )
    return json_response(describe(record, versions, users, verification))


async def list_versions(request: web.Request) -> web.Response:
    caller = await caller_of(request)
    owner, name = request.match_info["owner"], request.match_info["name"]
    versions = await request.app[SERVABLES].visible_versions(caller, owner, name)
    listing = VersionList(
        owner=owner, name=name, versions=[version_summary(v, detail=True) for v in versions]
    )
    return json_response(listing)


async def _delete(request: web.Request, version: int | None) -> web.Response:
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    owner, name = request.match_info["owner"], request.match_info["name"]
    deleted = await request.app[SERVABLES].delete(caller, user=user, owner=owner, name=name, version=version)
    await request.app[AUDIT].record(caller, "delete", f"{owner}/{name}", versions=deleted)
    return json_response(Deleted(deleted=deleted))


async def delete_servable(request: web.Request) -> web.Response:
    return await _delete(request, None)


async def delete_version(request: web.Request) -> web.Response:
    return await _delete(request, version_of(request))


async def _set_deprecated(request: web.Request, deprecated: bool) -> web.Response:
    caller = await caller_of(request)
    user = request.app[AUTH].require_user(caller)
    owner, name = request.match_info["owner"], request.match_info["name"]
    body = DeprecateRequest()
    if deprecated and request.can_read_body:  # the body is optional
        raw = await read_json_bytes(request, max_bytes=request.app[SETTINGS].registry.max_request_json_bytes)
        body = decode_json(raw, DeprecateRequest)
        if len(body.reason) > MAX_REASON_CHARS:
            raise ValidationFailed(f"reason is longer than {MAX_REASON_CHARS} characters", field="reason")
    record = await request.app[SERVABLES].set_deprecated(
        caller,
        user=user,
        owner=owner,
        name=name,
        version=version_of(request),
        deprecated=deprecated,
        reason=body.reason,
        replacement=body.replacement or "",
    )
    action = "deprecate" if deprecated else "undeprecate"
    await request.app[AUDIT].record(caller, action, record.label, reason=body.reason)
    fields = msgspec.structs.asdict(version_summary(record))
    deprecation = Deprecation(
        owner=record.owner, name=record.name, shorthand_name=record.shorthand_name, **fields
    )
    return json_response(deprecation)


async def deprecate_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/deprecate {"reason"?, "replacement"?} (owner)."""
    return await _set_deprecated(request, True)


async def undeprecate_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/undeprecate (owner)."""
    return await _set_deprecated(request, False)
