"""``python -m services.search [--config FILE]``: serve search/index, search/query and search/reindex until
signalled, on the backend named by ``search.backend`` (``DLHUB_SEARCH__BACKEND=elasticsearch``)."""

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
from libs.common.logging import configure_logging, get_logger
from services.search.backends import describe_engine, make_engine
from services.search.service import SEARCH_CAPACITY, SEARCH_TOPICS, SearchService

log = get_logger("services.search")


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
        log.info(
            "ready",
            topics=list(SEARCH_TOPICS),
            backend=settings.search.backend,
            index=describe_engine(settings),
        )
        return


async def serve(settings: DLHubSettings) -> None:
    codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
    async with make_engine(settings) as engine:
        log.info("index open", documents=await engine.count())
        service = SearchService(engine=engine, codec=codec)
        handler = HandlerService(
            bus=settings.bus,
            codec=codec,
            kind="search",
            topics=list(SEARCH_TOPICS),
            capacity=SEARCH_CAPACITY,
            handle=service.handle,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        run_task = asyncio.create_task(handler.run(), name="search-bus")
        ready_task = asyncio.create_task(_announce_ready(handler, settings), name="search-ready")
        stop_task = asyncio.create_task(stop.wait(), name="search-stop")
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
        run_task.result()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.search", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="search")
    try:
        asyncio.run(serve(settings))
    except Exception:
        log.exception("search failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
