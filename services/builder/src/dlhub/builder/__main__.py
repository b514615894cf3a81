"""``python -m dlhub.builder [--config FILE]``: serve ``builder/build`` until SIGTERM or SIGINT.

``python -m dlhub.builder gc-environments --older-than-days N [--dry-run]``: remove environments no version
references (``dlhub.builder.gc``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from dlhub.builder.build import sweep_staging
from dlhub.builder.service import BUILD_CAPACITY, BuilderService
from dlhub.common.bus import HandlerService
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.ids import BUILDER_TOPIC
from dlhub.common.logging import get_logger
from dlhub.common.service_main import run_service, serve_until_signalled

log = get_logger("dlhub.builder")


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
    builder.reporter = handler.report
    ready = {"topics": [BUILDER_TOPIC], "servable_dir": str(settings.servable_dir)}
    await serve_until_signalled(handler, settings, ready_fields=ready)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["gc-environments"]:
        from dlhub.builder.gc import main as gc_main

        return gc_main(args[1:])
    return run_service("builder", serve, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
