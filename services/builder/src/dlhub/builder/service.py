"""Bus glue of the builder: decode a ``BuildRequest``, build off the event loop, reply a ``BuildOutcome``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import structlog
from prometheus_client import Histogram

from dlhub.builder.build import BuildLimits, build_version
from dlhub.builder.environments import EnvironmentBuilder
from dlhub.builder.remote import FetchSettings, UrlFetcher
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.errors import BuildFailed, DLHubError
from dlhub.common.logging import get_logger
from dlhub.common.messages import Dispatch, Result
from dlhub.common.payloads import BuildEvent, BuildRequest, decode_payload

log = get_logger(__name__)

Reporter = Callable[[str, int, msgspec.Raw], object]

BUILD_CAPACITY: Final = 2
"""Concurrent builds; each is disk-bound work on its own thread."""


BUILD_DURATION = Histogram(
    "dlhub_builder_build_duration_seconds",
    "Whole builds (package extraction, environment lock and install) by outcome: completed or the error code",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900),
)


class ProgressRelay:
    """Carries build events from the build thread to the bus, in order, batched per event-loop pass.

    The build runs on a worker thread; bus sockets belong to the event loop, so events are handed over with
    ``call_soon_threadsafe`` and sent as one ``Progress`` report per pass (a pip install can log hundreds of
    lines a second)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[list[BuildEvent]], None]) -> None:
        self._loop = loop
        self._send = send
        self._lock = threading.Lock()
        self._pending: list[BuildEvent] = []
        self._scheduled = False

    def __call__(self, event: BuildEvent) -> None:
        with self._lock:
            self._pending.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        with self._lock:
            events, self._pending, self._scheduled = self._pending, [], False
        if events:
            self._send(events)


class BuilderService:
    """Handles ``builder/build`` dispatches; errors are raised as typed ``DLHubError``s."""

    def __init__(
        self,
        *,
        root: Path,
        limits: BuildLimits,
        codec: Codec,
        environments: EnvironmentBuilder | None = None,
        fetcher: UrlFetcher | None = None,
    ) -> None:
        self.root = root
        self.limits = limits
        self.codec = codec
        self.environments = environments
        self.fetcher = fetcher or UrlFetcher()
        self.reporter: Reporter | None = None
        """Sends a task's ``Progress`` payload (the handler service's ``report``), set once it exists."""

    @classmethod
    def from_settings(cls, settings: DLHubSettings, codec: Codec) -> BuilderService:
        return cls(
            root=settings.servable_dir,
            limits=BuildLimits.from_settings(settings),
            codec=codec,
            environments=EnvironmentBuilder.from_settings(settings),
            fetcher=UrlFetcher(FetchSettings.from_config(settings.builder)),
        )

    def _relay(self, dispatch: Dispatch) -> ProgressRelay | None:
        reporter = self.reporter
        if reporter is None:
            return None

        def send(events: list[BuildEvent]) -> None:
            reporter(dispatch.task_id, dispatch.step, msgspec.Raw(self.codec.encode_value(events)))

        return ProgressRelay(asyncio.get_running_loop(), send)

    async def handle(self, dispatch: Dispatch) -> Result:
        request = decode_payload(dispatch.inputs, BuildRequest)
        servable = f"{request.owner}/{request.name}@{request.version}"
        started = time.perf_counter()
        relay = self._relay(dispatch)
        with structlog.contextvars.bound_contextvars(task_id=dispatch.task_id, servable=servable):
            try:
                outcome = await asyncio.to_thread(
                    build_version, request, self.root, self.limits, self.environments, relay, self.fetcher
                )
            except DLHubError as exc:
                log.warning("build failed", code=exc.code, reason=exc.message)
                BUILD_DURATION.labels(exc.code).observe(time.perf_counter() - started)
                raise
            except Exception as exc:
                log.exception("build crashed")
                BUILD_DURATION.labels(BuildFailed.code).observe(time.perf_counter() - started)
                raise BuildFailed(f"build failed: {type(exc).__name__}: {exc}") from exc
            finally:
                if relay is not None:
                    relay.flush()  # every event leaves before the Result does
        elapsed_s = time.perf_counter() - started
        BUILD_DURATION.labels("completed").observe(elapsed_s)
        log.debug("build handled", elapsed_ms=round(elapsed_s * 1000.0, 3))
        return Result(
            task_id=dispatch.task_id, ok=True, output=self.codec.encode_value(outcome), step=dispatch.step
        )
