"""``python -m services.builder [--config FILE]``: serve ``builder/build`` until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from libs.common.bus import HandlerService
from libs.common.codec import Codec
from libs.common.config import DLHubSettings, load_settings
from libs.common.errors import DLHubError
from libs.common.ids import BUILDER_TOPIC
from libs.common.logging import configure_logging, get_logger
from services.builder.build import sweep_staging
from services.builder.service import BUILD_CAPACITY, BuilderService

log = get_logger("services.builder")


async def _announce_ready(handler: HandlerService, settings: DLHubSettings) -> None:
    waiting_logged = False
    while True:
        try:
            await handler.wait_registered(timeout_s=settings.bus.liveness_timeout_s)
        except (TimeoutError, DLHubError):
            if not waiting_logged:
                log.info("waiting for the broker", broker_url=settings.bus.broker_url)
                waiting_logged = True
            continue
        log.info("ready", topics=[BUILDER_TOPIC], servable_dir=str(settings.servable_dir))
        return


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run_task = asyncio.create_task(handler.run(), name="builder-bus")
    ready_task = asyncio.create_task(_announce_ready(handler, settings), name="builder-ready")
    stop_task = asyncio.create_task(stop.wait(), name="builder-stop")
    try:
        await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("stopping")
        ready_task.cancel()
        stop_task.cancel()
        await handler.stop()
        if not run_task.done():
            await run_task
        with contextlib.suppress(asyncio.CancelledError):
            await ready_task
        log.info("stopped")
    run_task.result()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.builder", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="builder")
    try:
        asyncio.run(serve(settings))
    except Exception:
        log.exception("builder failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
