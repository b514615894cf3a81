"""Wall-clock time as the registry stores and shows it: epoch milliseconds, rendered as ISO 8601 UTC."""

from __future__ import annotations

import datetime as dt
import time


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(epoch_ms: int) -> str:
    """Render epoch milliseconds as an ISO 8601 UTC timestamp."""
    return dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
