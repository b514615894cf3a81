"""``python -m dlhub.registry [--config FILE]``: the REST front door of DLHub."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from dlhub.common import event_loop
from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.errors import DLHubError, StoreUnavailable
from dlhub.common.logging import configure_logging, get_logger
from dlhub.registry.auth import create_or_reuse_token
from dlhub.registry.http.app import create_app
from dlhub.registry.http.server import GuardedRunner, GuardedServer
from dlhub.registry.urls import API_PREFIX

log = get_logger("dlhub.registry")


async def serve(settings: DLHubSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    grace_s = settings.registry.shutdown_grace_s
    # aiohttp's own wait (in cleanup) covers a request that slipped past the drain; the two together stay
    # within the grace period plus a second.
    runner = GuardedRunner(
        create_app(settings), settings.registry, handle_signals=False, shutdown_timeout=min(grace_s, 1.0)
    )
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
        if isinstance(runner.server, GuardedServer):
            drained = await runner.server.drain(grace_s)
            if not drained:
                log.warning("requests still in progress at the end of the shutdown grace", grace_s=grace_s)
        log.info("registry stopping")
    finally:
        await runner.cleanup()
        log.info("registry stopped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlhub.registry", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $DLHUB_CONFIG)")
    commands = parser.add_subparsers(dest="command", metavar="{serve,token}")
    commands.add_parser("serve", help="serve the REST API (the default)")
    token = commands.add_parser("token", help="manage local API tokens").add_subparsers(dest="token_command")
    create = token.add_parser("create", help="create an API token for USER and print it on stdout")
    create.add_argument("user")
    create.add_argument("--data-dir", help="the data directory whose store holds the token")
    create.add_argument("--label", default="cli")
    create.add_argument(
        "--expires-in-s", type=float, default=None, help="lifetime in seconds (default: none)"
    )
    create.add_argument(
        "--reuse-stdin",
        action="store_true",
        help="read a token from stdin and print it back if it is still valid for USER (never on argv)",
    )
    return parser


def _token_create(args: argparse.Namespace) -> None:
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(args.config, **overrides)
    configure_logging(settings.logging, service="registry")
    reuse = sys.stdin.readline().strip() if args.reuse_stdin else None
    try:
        token = asyncio.run(
            create_or_reuse_token(
                settings, args.user, reuse=reuse, label=args.label, expires_in_s=args.expires_in_s
            )
        )
    except DLHubError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    print(token)


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        if args.token_command != "create":
            parser.error("token needs a command: create")
        _token_create(args)
        return
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="registry")
    try:
        event_loop.run(serve(settings), settings.event_loop)
    except StoreUnavailable as exc:  # e.g. MongoDB unreachable at start-up: say why and exit non-zero
        log.error("registry cannot start", error=exc.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
