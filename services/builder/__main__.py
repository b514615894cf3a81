"""``python -m services.builder [--config FILE]``: serve ``builder/build`` until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from libs.common.bus import HandlerService
from libs.common.codec import Codec
from libs.common.config import DLHubSettings
from libs.common.ids import BUILDER_TOPIC
from libs.common.logging import get_logger
from libs.common.service_main import run_service, serve_until_signalled
from services.builder.build import sweep_staging
from services.builder.service import BUILD_CAPACITY, BuilderService

log = get_logger("services.builder")


async def serve(settings: DLHubSettings) -> None:
    codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
    settings.servable_dir.mkdir(parents=True, exist_ok=True)
    removed = await asyncio.to_thread(sweep_staging, settings.servable_dir)
    if removed:
        log.info("removed stale staging folders", count=removed)
    builder = BuilderService.from_settings(settings, codec)
    handler = HandlerService(
        bus=settings.bus,
        codec=codec,
        kind="builder",
        topics=[BUILDER_TOPIC],
        capacity=BUILD_CAPACITY,
        handle=builder.handle,
    )
    ready = {"topics": [BUILDER_TOPIC], "servable_dir": str(settings.servable_dir)}
    await serve_until_signalled(handler, settings, ready_fields=ready)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("builder", serve, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
