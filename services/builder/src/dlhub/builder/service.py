"""Bus glue of the builder: decode a ``BuildRequest``, build off the event loop, reply a ``BuildOutcome``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import structlog

from dlhub.builder.build import BuildLimits, build_version
from dlhub.builder.environments import EnvironmentBuilder
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import BuildFailed, DLHubError
from dlhub.common.logging import get_logger
from dlhub.common.messages import Dispatch, Result
from dlhub.common.payloads import BuildRequest, decode_payload

log = get_logger(__name__)

BUILD_CAPACITY: Final = 2
"""Concurrent builds; each is disk-bound work on its own thread."""


class BuilderService:
    """Handles ``builder/build`` dispatches; errors are raised as typed ``DLHubError``s."""

    def __init__(
        self,
        *,
        root: Path,
        limits: BuildLimits,
        codec: Codec,
        environments: EnvironmentBuilder | None = None,
    ) -> None:
        self.root = root
        self.limits = limits
        self.codec = codec
        self.environments = environments

    @classmethod
    def from_settings(cls, settings: DLHubSettings, codec: Codec) -> BuilderService:
        return cls(
            root=settings.servable_dir,
            limits=BuildLimits.from_settings(settings),
            codec=codec,
            environments=EnvironmentBuilder.from_settings(settings),
        )

    async def handle(self, dispatch: Dispatch) -> Result:
        request = decode_payload(dispatch.inputs, BuildRequest)
        servable = f"{request.owner}/{request.name}@{request.version}"
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(task_id=dispatch.task_id, servable=servable):
            try:
                outcome = await asyncio.to_thread(
                    build_version, request, self.root, self.limits, self.environments
                )
            except DLHubError as exc:
                log.warning("build failed", code=exc.code, reason=exc.message)
                raise
            except Exception as exc:
                log.exception("build crashed")
                raise BuildFailed(f"build failed: {type(exc).__name__}: {exc}") from exc
        log.debug("build handled", elapsed_ms=round((time.perf_counter() - started) * 1000.0, 3))
        return Result(
            task_id=dispatch.task_id, ok=True, output=self.codec.encode_value(outcome), step=dispatch.step
        )
