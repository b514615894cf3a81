"""``python -m dlhub.registry [--config FILE]``: the REST front door of DLHub."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from dlhub.common import event_loop
from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.errors import DLHubError, StoreUnavailable, ValidationFailed
from dlhub.common.ids import NAME_RE
from dlhub.common.logging import configure_logging, get_logger
from dlhub.registry.auth import CLI_ACTOR, create_or_reuse_token, revoke_token
from dlhub.registry.clock import now_ms
from dlhub.registry.http.app import create_app
from dlhub.registry.http.server import GuardedRunner, GuardedServer
from dlhub.registry.store import AuditRecord, MetadataStore
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
    commands = parser.add_subparsers(dest="command", metavar="{serve,token,group}")
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
    revoke = token.add_parser("revoke", help="revoke the API token read from stdin (never on argv)")
    revoke.add_argument("--data-dir", help="the data directory whose store holds the token")
    group = commands.add_parser("group", help="manage local groups").add_subparsers(dest="group_command")
    for command, text in (("add", "add USER to GROUP"), ("remove", "remove USER from GROUP")):
        sub = group.add_parser(command, help=text)
        sub.add_argument("group")
        sub.add_argument("user")
        sub.add_argument("--data-dir", help="the data directory whose store holds the groups")
    members = group.add_parser("members", help="list the members of GROUP")
    members.add_argument("group")
    members.add_argument("--data-dir", help="the data directory whose store holds the groups")
    return parser


async def _with_store(settings: DLHubSettings, action: Callable[[MetadataStore], Awaitable[str]]) -> str:
    from dlhub.registry.store.factory import make_store

    store = make_store(settings)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


async def _group_action(store: MetadataStore, args: argparse.Namespace) -> str:
    """Change or list a local group; changes are audited (actor ``-``: the store's operator)."""
    if args.group_command == "members":
        return "\n".join(await store.group_members(args.group))
    for value, what in ((args.group, "group"), (args.user, "user")):
        if not NAME_RE.fullmatch(value):
            raise ValidationFailed(f"invalid {what} name {value!r}", field=what)
    if args.group_command == "add":
        changed = await store.add_group_member(args.group, args.user)
    else:
        changed = await store.remove_group_member(args.group, args.user)
    if changed:
        await store.add_audit(
            AuditRecord(
                at_ms=now_ms(),
                actor=CLI_ACTOR,
                action=f"group.{args.group_command}",
                target=f"group:{args.group}",
                detail={"user": args.user},
            )
        )
    return f"{args.group_command}: {args.user} in {args.group}" if changed else "unchanged"


def _store_command(args: argparse.Namespace) -> None:
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(args.config, **overrides)
    configure_logging(settings.logging, service="registry")

    async def action(store: MetadataStore) -> str:
        if args.command == "group":
            return await _group_action(store, args)
        revoked = await revoke_token(store, sys.stdin.readline().strip())
        return "revoked" if revoked else "no such token"

    try:
        print(asyncio.run(_with_store(settings, action)))
    except DLHubError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


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
        if args.token_command == "revoke":
            _store_command(args)
            return
        if args.token_command != "create":
            parser.error("token needs a command: create or revoke")
        _token_create(args)
        return
    if args.command == "group":
        if args.group_command not in ("add", "remove", "members"):
            parser.error("group needs a command: add, remove or members")
        _store_command(args)
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
