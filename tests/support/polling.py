"""The one way tests wait for something to happen: poll a predicate until it holds or a deadline passes.

``wait_until`` is for synchronous code, ``await_until`` for coroutines (its predicate may be a plain function
or return an awaitable). Both return the predicate's first truthy value and fail the test with ``message``
when ``timeout_s`` passes first. The predicate is always checked once more at the deadline, so a slow
machine never fails a condition that did hold in time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.02


def _timed_out(timeout_s: float, message: str, predicate: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s} s waiting for {message or predicate}")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        expired = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if expired:
            raise _timed_out(timeout_s, message, predicate)
        time.sleep(interval_s)  # the polling interval, not a wait for something to happen


@overload
async def await_until(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    interval_s: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def await_until(
    predicate: Callable[[], T | None], *, timeout_s: float, interval_s: float = ..., message: str = ...
) -> T: ...


async def await_until(
    predicate: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: str = "",
) -> Any:
    """``wait_until`` for coroutines: ``predicate`` may be a function or a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        expired = time.monotonic() >= deadline
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if expired:
            raise _timed_out(timeout_s, message, predicate)
        await asyncio.sleep(interval_s)  # the polling interval, not a wait for something to happen
