"""Handlers for running servables and pipelines (the latency-critical path)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dlhub.registry.auth import Caller
from dlhub.registry.handlers_servables import API_PREFIX, caller_of
from dlhub.registry.http_utils import (
    json_response,
    raw_json_response,
    raw_msgpack_response,
    read_run_body,
    wants_msgpack,
)
from dlhub.registry.keys import RUNS, SETTINGS
from dlhub.registry.runs import PipelineBody, RunBody, Submission
from dlhub.registry.store import TaskRecord


def _accepted(task: TaskRecord, submission: Submission) -> web.Response:
    # A just-submitted task is pending unless the memo answered it (then it is already completed).
    body: dict[str, Any] = {
        "task_id": task.task_id,
        "state": task.state,
        "status_url": f"{API_PREFIX}/tasks/{task.task_id}",
        "cached": task.state == "completed",
    }
    if submission.warnings:
        body["warnings"] = list(submission.warnings)
    return json_response(body, status=202)


def _with_deprecation_headers(response: web.Response, submission: Submission) -> web.Response:
    """``Deprecation`` (RFC 9745: ``@<epoch seconds>``) and one ``Warning: 299`` per warning."""
    if submission.warnings:
        at_s = submission.deprecated_at_ms // 1000
        response.headers["Deprecation"] = f"@{at_s}" if at_s else "true"
        for text in submission.warnings:
            printable = "".join(c if " " <= c <= "~" else "?" for c in text)  # no CR/LF or non-ASCII
            quoted = printable.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{quoted}"')
    return response


async def _execute(
    request: web.Request, caller: Caller, submission: Submission, asynchronous: bool, started: float
) -> web.Response:
    runs = request.app[RUNS]
    if asynchronous:
        return _with_deprecation_headers(
            _accepted(await runs.submit_async(caller, submission), submission), submission
        )
    outcome = await runs.run_sync(submission)
    if wants_msgpack(request):
        body = runs.sync_response_body(outcome, started, msgpack=True)
        return _with_deprecation_headers(raw_msgpack_response(body), submission)
    return _with_deprecation_headers(raw_json_response(runs.sync_response_body(outcome, started)), submission)


async def _run(request: web.Request, version: int | None, started: float) -> web.Response:
    caller = await caller_of(request)
    run = await read_run_body(
        request, RunBody, max_bytes=request.app[SETTINGS].registry.max_request_json_bytes
    )
    submission = await request.app[RUNS].prepare_run(
        caller, request.match_info["owner"], request.match_info["name"], version, run
    )
    return await _execute(request, caller, submission, run.asynchronous, started)


async def run_latest(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/run."""
    return await _run(request, None, time.perf_counter())


async def run_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/run."""
    started = time.perf_counter()
    return await _run(request, int(request.match_info["version"]), started)


async def run_pipeline(request: web.Request) -> web.Response:
    """POST /pipelines/run."""
    started = time.perf_counter()
    caller = await caller_of(request)
    max_bytes = request.app[SETTINGS].registry.max_request_json_bytes
    pipeline = await read_run_body(request, PipelineBody, max_bytes=max_bytes)
    submission = await request.app[RUNS].prepare_pipeline(caller, pipeline)
    return await _execute(request, caller, submission, pipeline.asynchronous, started)
