"""``python -m services.registry [--config FILE]``: the REST front door of DLHub."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from libs.common import event_loop
from libs.common.config import DLHubSettings, load_settings
from libs.common.errors import StoreUnavailable
from libs.common.logging import configure_logging, get_logger
from services.registry.app import create_app
from services.registry.routes import API_PREFIX

log = get_logger("services.registry")


async def serve(settings: DLHubSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.registry.host, settings.registry.port)
        await site.start()
        host, port = settings.registry.host, settings.registry.port
        for address in runner.addresses:
            if isinstance(address, tuple):
                port = int(address[1])
                break
        url = settings.registry.public_url or f"http://{host}:{port}{API_PREFIX}"
        log.info("registry ready", url=url)
        await stop.wait()
        log.info("registry stopping")
    finally:
        await runner.cleanup()
        log.info("registry stopped")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.registry", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="registry")
    try:
        event_loop.run(serve(settings), settings.event_loop)
    except StoreUnavailable as exc:  # e.g. MongoDB unreachable at start-up: say why and exit non-zero
        log.error("registry cannot start", error=exc.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
