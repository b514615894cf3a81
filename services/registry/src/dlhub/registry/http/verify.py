"""``POST .../verify``: re-run a version's test vectors (``dlhub.registry.vectors``)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from dlhub.registry.http.contract import VerifyReport
from dlhub.registry.http.keys import RUNS, SERVABLES
from dlhub.registry.http.request import caller_of, version_of
from dlhub.registry.http.response import json_response


async def _verify(request: web.Request, version: int | None) -> web.Response:
    caller = await caller_of(request)
    request.app[RUNS].check_may_run(caller)  # who may verify is who may run
    servables = request.app[SERVABLES]
    record = await servables.runnable(  # 404 when invisible, 409 when not ready
        caller, request.match_info["owner"], request.match_info["name"], version
    )
    report = await servables.vectors.verify(record)
    return json_response(msgspec.convert(report, VerifyReport))


async def verify_latest(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/verify: the newest ready version."""
    return await _verify(request, None)


async def verify_version(request: web.Request) -> web.Response:
    """POST /servables/{owner}/{name}/versions/{version}/verify."""
    return await _verify(request, version_of(request))
