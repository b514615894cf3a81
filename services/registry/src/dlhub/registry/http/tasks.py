"""``GET /tasks/{task_id}``: the state and result of a build, an asynchronous run or a dataset job."""

from __future__ import annotations

import msgspec
from aiohttp import web

from dlhub.common.errors import NotFound
from dlhub.registry.clock import iso_ms
from dlhub.registry.http.contract import JobProgress, Task
from dlhub.registry.http.keys import TASKS
from dlhub.registry.http.request import caller_of
from dlhub.registry.http.response import json_response
from dlhub.registry.outcomes import task_error, timings_of
from dlhub.registry.store import TaskRecord
from dlhub.registry.urls import task_results_url


def task_view(task: TaskRecord) -> Task:
    """The task as answered; the output is embedded as the JSON it was stored as."""
    view = Task(
        task_id=task.task_id,
        kind=task.kind,
        state=task.state,
        servable=task.servable,
        created_at=iso_ms(task.created_at_ms),
        updated_at=iso_ms(task.updated_at_ms),
    )
    if task.output_json is not None:
        view.output = msgspec.Raw(task.output_json)
    if task.error is not None:
        view.error = task_error(task.error)
    if task.timings is not None:
        view.timings = timings_of(task.timings)
    if task.kind == "job":
        progress = task.progress or {}
        view.progress = JobProgress(
            done=progress.get("done", 0), total=progress.get("total"), failed=progress.get("failed", 0)
        )
        view.results_url = task_results_url(task.task_id)
    return view


async def get_task(request: web.Request) -> web.Response:
    """GET /tasks/{task_id}: 404 when unknown, expired, or submitted by someone else."""
    caller = await caller_of(request)
    task_id = request.match_info["task_id"]
    task = await request.app[TASKS].get(task_id)
    if task is None or (task.submitter is not None and task.submitter != caller.user):
        raise NotFound(f"task {task_id} not found")
    return json_response(task_view(task))
