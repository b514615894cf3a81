"""Handler of ``POST .../verify``: re-run a version's test vectors (``vectors.py``)."""

from __future__ import annotations

from aiohttp import web

from dlhub.registry.handlers_servables import caller_of
from dlhub.registry.http_utils import json_response
from dlhub.registry.keys import RUNS, SERVABLES


async def _verify(request: web.Request, version: int | None) -> web.Response:
    caller = await caller_of(request)
    request.app[RUNS].check_may_run(caller)  # who may verify is who may run
    servables = request.app[SERVABLES]
    record = await servables.runnable(  # 404 when invisible, 409 when not ready
        caller, request.match_info["owner"], request.match_info["name"], version
    )
    return json_response(await servables.vectors.verify(record))


async def verify_latest(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/verify: the newest ready version."""
    return await _verify(request, None)


async def verify_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/verify."""
    return await _verify(request, int(request.match_info["version"]))
