"""``python -m dlhub.broker [--config FILE]``: run the broker."""

from __future__ import annotations

import argparse

from dlhub.broker.broker import run
from dlhub.common import event_loop
from dlhub.common.config import load_settings
from dlhub.common.logging import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dlhub.broker", description="Run the DLHub task broker.")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (default: $DLHUB_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="broker")
    event_loop.run(run(settings), settings.event_loop)


if __name__ == "__main__":
    main()
