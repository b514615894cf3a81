"""A version's build record (``GET .../build``, optionally followed as NDJSON) and its exports (the archive,
or the image as a ``docker save`` tarball)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web

from dlhub.common.errors import ValidationFailed
from dlhub.registry.builds import MARKER_RE, TERMINAL_STATES, marker
from dlhub.registry.clock import iso_ms
from dlhub.registry.export import export_archive, export_filename
from dlhub.registry.http.contract import BuildEvent, BuildQuery, BuildRecord, BuildStateChange, ExportQuery
from dlhub.registry.http.keys import IMAGES, SERVABLES, SETTINGS
from dlhub.registry.http.query import parse_query
from dlhub.registry.http.request import caller_of, version_of
from dlhub.registry.http.response import json_response
from dlhub.registry.image_export import image_filename
from dlhub.registry.store import StoredBuild, VersionRecord

NDJSON = "application/x-ndjson"
IMAGE_TAR = "application/x-tar"
IMAGE_HEADER = "DLHub-Image"
"""The tag ``docker load`` gives the image of an image export."""
_encoder = msgspec.json.Encoder()


def _iso(unix_s: float) -> str:
    return iso_ms(int(unix_s * 1000))


def build_record(build: StoredBuild) -> BuildRecord:
    return BuildRecord(
        servable=build.servable,
        state=build.state,
        states=[BuildStateChange(state=s.state, at=_iso(s.at_unix_s)) for s in build.states],
        environment=build.environment,
        backend=build.backend,
        error=build.error,
        log=list(build.log),
        dropped_lines=build.dropped_lines,
        updated_at=_iso(build.updated_at_unix_s or (build.states[-1].at_unix_s if build.states else 0.0)),
    )


def new_lines(build: StoredBuild, seen_total: int) -> list[str]:
    """The log lines of ``build`` after the first ``seen_total`` ever logged (a marker for any dropped)."""
    count = build.total_lines - seen_total
    if count <= 0:
        return []
    log = build.log
    at = (
        next((i for i, line in enumerate(log) if MARKER_RE.match(line)), None)
        if build.dropped_lines
        else None
    )
    kept_after_marker = len(log) - at - 1 if at is not None else len(log)
    if at is None or count <= kept_after_marker:
        return list(log[-count:])
    # Part of what is new was dropped: the head part (if any was unseen), a marker, then the whole tail.
    head_unseen = max(0, at - seen_total)
    missing = count - kept_after_marker - head_unseen
    return [*log[at - head_unseen : at], *([marker(missing)] if missing > 0 else []), *log[at + 1 :]]


def events_between(old: StoredBuild, new: StoredBuild) -> list[BuildEvent]:
    """What changed from ``old`` to ``new``: state changes (a terminal one last), then new log lines."""
    events: list[BuildEvent] = []
    terminal: list[BuildEvent] = []
    for change in new.states[len(old.states) :]:
        event = BuildEvent(state=change.state, at=_iso(change.at_unix_s))
        if change.state == "failed" and new.error:
            event.error = new.error
        (terminal if change.state in TERMINAL_STATES else events).append(event)
    lines = new_lines(new, old.total_lines)
    if lines:
        events.append(BuildEvent(lines=lines))
    return events + terminal


async def get_build(request: web.Request) -> web.StreamResponse:
    """GET /servables/{owner}/{name}/versions/{version}/build[?follow=true]."""
    caller = await caller_of(request)
    owner, name, version = request.match_info["owner"], request.match_info["name"], version_of(request)
    query = parse_query(request, BuildQuery)
    servables = request.app[SERVABLES]
    record = await servables.describe_target(caller, owner, name, version)
    build = await servables.stored_build(record)
    if not query.follow:
        return json_response(build_record(build))
    config = request.app[SETTINGS].registry
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    await response.prepare(request)
    await response.write(_encoder.encode(build_record(build)) + b"\n")
    deadline = time.monotonic() + config.build_follow_timeout_s
    while build.state not in TERMINAL_STATES and time.monotonic() < deadline:
        await asyncio.sleep(config.build_follow_poll_interval_s)
        latest = await servables.stored_build(record)
        if latest.total_lines < build.total_lines or len(latest.states) < len(build.states):
            latest_events = [BuildEvent(lines=["[the build record was replaced; showing it again]"])]
            build = StoredBuild(servable=latest.servable, states=[])
            latest_events += events_between(build, latest)
        else:
            latest_events = events_between(build, latest)
        for event in latest_events:
            await response.write(_encoder.encode(event) + b"\n")
        build = latest
    await response.write_eof()
    return response


async def export_version(request: web.Request) -> web.StreamResponse:
    """GET /servables/{owner}/{name}/versions/{version}/export[?format=image]: a .tar.gz that runs without
    DLHub, or (docker-environment versions) a ``docker save`` tarball of a self-contained image."""
    caller = await caller_of(request)
    owner, name, version = request.match_info["owner"], request.match_info["name"], version_of(request)
    query = parse_query(request, ExportQuery)
    servables = request.app[SERVABLES]
    record, build, package = await servables.export_parts(caller, owner, name, version)
    if query.format == "image":
        return await _export_image(request, record, build, package)
    body = await asyncio.to_thread(export_archive, record, build, package)
    filename = export_filename(record)
    return web.Response(
        body=body,
        content_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def _export_image(
    request: web.Request, record: VersionRecord, build: StoredBuild, package: bytes
) -> web.StreamResponse:
    if build.backend != "docker":
        runs_in = "a venv environment" if build.backend else "the shared worker environment"
        raise ValidationFailed(
            f"format=image exports versions with a docker environment; {record.label} runs in {runs_in} "
            "(export it as an archive: format=archive)",
            field="format",
        )
    export = await request.app[IMAGES].prepare(record, build, package)
    try:
        chunk = await asyncio.to_thread(export.next_chunk)  # errors before the first byte answer as JSON
        response = web.StreamResponse(
            headers={
                "Content-Type": IMAGE_TAR,
                "Content-Disposition": f'attachment; filename="{image_filename(record)}"',
                IMAGE_HEADER: export.tag,
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        while chunk:
            await response.write(chunk)
            chunk = await asyncio.to_thread(export.next_chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(export.close)
