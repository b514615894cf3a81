"""Running servables and pipelines: the latency-critical path.

Each request reads top to bottom, each step once: who is calling, may they run at all (before the body is
read, so a registry closed to anonymous runs answers 401 whatever the body), parse the body, validate
(``Runs.prepare_*``: is the version visible and runnable, do the inputs fit its declared types), submit,
answer.
"""

from __future__ import annotations

import time

from aiohttp import web
from msgspec import UNSET

from dlhub.registry.auth import Caller
from dlhub.registry.http.contract import TaskAccepted
from dlhub.registry.http.keys import RUNS, SETTINGS
from dlhub.registry.http.request import caller_of, read_run_body, version_of
from dlhub.registry.http.response import json_response, raw_json_response, raw_msgpack_response, wants_msgpack
from dlhub.registry.runs import PipelineRequest, RunRequest, Submission
from dlhub.registry.urls import task_url


async def run_latest(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/run."""
    return await _run(request, None, time.perf_counter())


async def run_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/run."""
    started = time.perf_counter()
    return await _run(request, version_of(request), started)


async def run_pipeline(request: web.Request) -> web.Response:
    """POST /pipelines/run."""
    started = time.perf_counter()
    caller = await caller_of(request)
    request.app[RUNS].check_may_run(caller)
    body = await read_run_body(request, PipelineRequest, max_bytes=_max_bytes(request))
    submission = await request.app[RUNS].prepare_pipeline(caller, body)
    return await _submit_and_answer(request, caller, submission, body.asynchronous, started)


async def _run(request: web.Request, version: int | None, started: float) -> web.Response:
    caller = await caller_of(request)
    request.app[RUNS].check_may_run(caller)
    body = await read_run_body(request, RunRequest, max_bytes=_max_bytes(request))
    owner, name = request.match_info["owner"], request.match_info["name"]
    submission = await request.app[RUNS].prepare_run(caller, owner, name, version, body)
    return await _submit_and_answer(request, caller, submission, body.asynchronous, started)


def _max_bytes(request: web.Request) -> int:
    return request.app[SETTINGS].registry.max_request_json_bytes


async def _submit_and_answer(
    request: web.Request, caller: Caller, submission: Submission, asynchronous: bool, started: float
) -> web.Response:
    runs = request.app[RUNS]
    if asynchronous:
        task = await runs.submit_async(caller, submission)
        accepted = TaskAccepted(
            task_id=task.task_id,
            state="completed" if task.state == "completed" else "pending",  # completed: a memo hit
            status_url=task_url(task.task_id),
            cached=task.state == "completed",
            warnings=list(submission.warnings) if submission.warnings else UNSET,
        )
        return _with_deprecation_headers(json_response(accepted, status=202), submission)
    outcome = await runs.run_sync(submission)
    if wants_msgpack(request):
        response = raw_msgpack_response(runs.sync_response_body(outcome, started, msgpack=True))
    else:
        response = raw_json_response(runs.sync_response_body(outcome, started))
    return _with_deprecation_headers(response, submission)


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
