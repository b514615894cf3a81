"""What every bus-handler service's ``__main__`` shares: flags, settings, logging, signals, clean stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from dlhub.common import event_loop
from dlhub.common.bus import HandlerService
from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.errors import DLHubError
from dlhub.common.logging import configure_logging, get_logger
from dlhub.common.metrics import SERVICES, start_metrics_server


async def _announce_ready(
    handler: HandlerService, settings: DLHubSettings, fields: Mapping[str, Any]
) -> None:
    """Log "ready" once the broker acknowledged us; say once that we are waiting if it does not answer."""
    log = get_logger("service")
    waiting_logged = False
    while True:
        try:
            await handler.wait_registered(timeout_s=settings.bus.liveness_timeout_s)
        except (TimeoutError, DLHubError):
            if not waiting_logged:
                log.info("waiting for the broker", broker_url=settings.bus.broker_url)
                waiting_logged = True
            continue
        log.info("ready", **fields)
        return


async def serve_until_signalled(
    handler: HandlerService, settings: DLHubSettings, *, ready_fields: Mapping[str, Any]
) -> None:
    """Run ``handler`` until SIGTERM/SIGINT (or until it fails), then stop it cleanly."""
    log = get_logger("service")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run_task = asyncio.create_task(handler.run(), name="bus")
    ready_task = asyncio.create_task(_announce_ready(handler, settings, ready_fields), name="ready")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
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


def run_service(
    name: str,
    serve: Callable[[DLHubSettings], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None,
    description: str | None,
) -> int:
    """``python -m dlhub.<name> [--config FILE]``: load settings, set up logging, serve; the exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m dlhub.{name}", description=description)
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service=name)
    try:
        if name in SERVICES:
            start_metrics_server(settings, name)
        event_loop.run(serve(settings), settings.event_loop)
    except Exception:
        get_logger("service").exception(f"{name} failed")
        return 1
    return 0
