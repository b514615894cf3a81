"""Dataset jobs: ``POST .../apply`` starts one, ``POST /tasks/{id}/cancel`` stops it, and
``GET /tasks/{id}/results`` hands out its per-row results so far (``jobs.py``)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from dlhub.common.errors import NotFound, Unauthorized
from dlhub.registry.http.contract import JobAccepted
from dlhub.registry.http.keys import JOBS, SETTINGS, TASKS
from dlhub.registry.http.request import caller_of, decode_json, read_json_bytes, version_of
from dlhub.registry.http.response import json_response
from dlhub.registry.http.tasks import task_view
from dlhub.registry.jobs import ApplyRequest
from dlhub.registry.package_files import open_range
from dlhub.registry.urls import task_results_url, task_url

NDJSON = "application/x-ndjson"


async def apply_latest(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/apply: the dataset's newest ready version (as a run picks one)."""
    return await _apply(request, None)


async def apply_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/apply."""
    return await _apply(request, version_of(request))


async def _apply(request: web.Request, version: int | None) -> web.Response:
    caller = await caller_of(request)
    max_bytes = request.app[SETTINGS].registry.max_request_json_bytes
    body = decode_json(await read_json_bytes(request, max_bytes=max_bytes), ApplyRequest)
    owner, name = request.match_info["owner"], request.match_info["name"]
    jobs = request.app[JOBS]
    task, plan = await jobs.start(caller, owner, name, version, body)
    accepted = JobAccepted(
        task_id=task.task_id,
        state="pending",
        status_url=task_url(task.task_id),
        results_url=task_results_url(task.task_id),
        dataset=plan.dataset.label,
        file=plan.entry.path,
        servable=plan.servable.label,
        mode=plan.mapping.mode,
        columns=plan.columns,
    )
    return json_response(accepted, status=202)


async def cancel_task(request: web.Request) -> web.Response:
    """POST /tasks/{task_id}/cancel: a dataset job of the caller's ends ``cancelled`` (409 once ended)."""
    caller = await caller_of(request)
    task = await request.app[JOBS].cancel(caller, request.match_info["task_id"])
    return json_response(task_view(task))


async def task_results(request: web.Request) -> web.StreamResponse:
    """GET /tasks/{task_id}/results: the rows done so far, in row order, one JSON object per line."""
    caller = await caller_of(request)
    if caller.user is None:
        raise Unauthorized("a dataset job's results need the token of its submitter")
    task_id = request.match_info["task_id"]
    task = await request.app[TASKS].get(task_id)
    if task is None or task.kind != "job" or task.submitter != caller.user:
        raise NotFound(f"dataset job {task_id} not found")
    path = request.app[JOBS].results_path(task_id)
    # Only what the progress has counted: a line being appended right now is not complete yet.
    length = int((task.progress or {}).get("bytes", 0))
    if length and not path.is_file():
        raise NotFound(f"the results of dataset job {task_id} are no longer kept")
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    response.content_length = length
    await response.prepare(request)
    if length:
        stream = await asyncio.to_thread(open_range, path, 0, length)
        try:
            while chunk := await asyncio.to_thread(stream.next_chunk):
                await response.write(chunk)
        finally:
            await asyncio.to_thread(stream.close)
    await response.write_eof()
    return response
