"""Running a service's main coroutine on the configured event loop (uvloop by default)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], event_loop: Literal["uvloop", "asyncio"] = "uvloop") -> T:
    """``asyncio.run(main)`` on uvloop when asked for and installed, else on the standard loop."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not a hard dependency on every platform: the standard loop works, slower
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
