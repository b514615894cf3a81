"""``python -m dlhub.broker [--config FILE]``: run the broker.

``python -m dlhub.broker keys create --dir DIR [NAME ...]``: write the CurveZMQ keypairs of the bus
(docs/security.md): the broker's and one per role, or the named ones (``worker-gpu01``); existing keys are
kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlhub.broker.broker import run
from dlhub.common import event_loop
from dlhub.common.config import load_settings
from dlhub.common.curve import BROKER_KEY, ROLES, create_keys
from dlhub.common.logging import configure_logging


def keys_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m dlhub.broker keys", description="Manage the bus keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write keypairs (kept when they exist, unless --overwrite)")
    create.add_argument("--dir", required=True, type=Path, help="the keys directory (created 0700)")
    create.add_argument(
        "names", nargs="*", help=f"key names (default: {BROKER_KEY} {' '.join(ROLES)}); e.g. worker-gpu01"
    )
    create.add_argument("--overwrite", action="store_true", help="replace existing keypairs")
    args = parser.parse_args(argv)
    try:
        written = create_keys(args.dir, args.names or (BROKER_KEY, *ROLES), overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for name in written:  # names and paths only: a secret key is never printed
        print(f"wrote {args.dir / name}.key and {name}.key_secret")
    if not written:
        print("every keypair exists already (--overwrite replaces them)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        keys_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m dlhub.broker", description="Run the DLHub task broker.")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="broker")
    event_loop.run(run(settings), settings.event_loop)


if __name__ == "__main__":
    main()
