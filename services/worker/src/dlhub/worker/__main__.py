"""``python -m dlhub.worker [--config FILE] [--broker URL] [--data-dir DIR] ...``: run a worker (a Task
Manager) until SIGTERM or SIGINT. The options override the configuration (docs/task-managers.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlhub.worker", description="Run a DLHub worker.")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $DLHUB_CONFIG)")
    parser.add_argument("--broker", metavar="URL", help="the broker, tcp://HOST:PORT (bus.broker_url)")
    parser.add_argument("--data-dir", metavar="DIR", help="this worker's own data directory (data_dir)")
    parser.add_argument(
        "--registry-url", metavar="URL", help="where bundles are fetched (worker.registry_url)"
    )
    parser.add_argument(
        "--serves", metavar="PATTERN", action="append", help="servables served, repeatable (worker.serves)"
    )
    parser.add_argument("--site", help="where this Task Manager runs (worker.site)")
    parser.add_argument("--instance-id", help="a stable name for it (worker.instance_id)")
    parser.add_argument(
        "--device",
        dest="devices",
        metavar="KIND:ID",
        action="append",
        help="a device it offers servables, gpu:0; repeatable (worker.devices; default: detected GPUs)",
    )
    parser.add_argument(
        "--key-name", metavar="NAME", help="its bus keypair, worker-<label> (bus.curve_key_name)"
    )
    parser.add_argument(
        "--bus-auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="join the bus with CurveZMQ keys from <data-dir>/keys (bus.curve_enabled)",
    )
    return parser


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line options as settings (they win over the environment and the file)."""
    bus: dict[str, Any] = {}
    worker: dict[str, Any] = {}
    if args.broker:
        bus["broker_url"] = args.broker
    if args.key_name:
        bus["curve_key_name"] = args.key_name
    if args.bus_auth is not None:
        bus["curve_enabled"] = args.bus_auth
    for option in ("registry_url", "serves", "site", "instance_id", "devices"):
        if getattr(args, option) is not None:
            worker[option] = getattr(args, option)
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if bus:
        overrides["bus"] = bus
    if worker:
        overrides["worker"] = worker
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(args.config, **overrides_of(args))
    configure_logging(settings.logging, service="worker")
    start_metrics_server(settings, "worker")
    event_loop.run(serve(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
