"""``python -m dlhub.worker [--config FILE]``: run a worker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from dlhub.common import event_loop
from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.logging import configure_logging, get_logger
from dlhub.common.metrics import start_metrics_server
from dlhub.worker.service import WorkerService

log = get_logger("dlhub.worker")


async def serve(settings: DLHubSettings) -> None:
    """Run the worker; on SIGTERM/SIGINT unregister, drain and stop the executor processes."""
    service = WorkerService(settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    running = asyncio.create_task(service.run())
    stopping = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stopping.done():
        log.info("worker stopping")
        await service.stop()
    else:
        stopping.cancel()
    await running
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlhub.worker", description="Run a DLHub worker.")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="worker")
    start_metrics_server(settings, "worker")
    event_loop.run(serve(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
