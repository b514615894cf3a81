"""Per-identity rate limits: one token bucket per user (anonymous callers per client address).

A bucket holds ``burst`` requests and refills at ``requests_per_s``; a request finding it empty is refused
with 429 and a ``Retry-After`` of the time until one request's worth has refilled. Administrators are exempt.
The check is a dict lookup and a little arithmetic, with no await. Buckets live in this process: with several
registries behind a balancer each enforces its own share.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dlhub.common.config import RateLimitConfig
from dlhub.common.errors import RateLimited
from dlhub.registry.auth import Caller


class RateLimiter:
    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = config.requests_per_s
        self._burst = float(config.burst)
        self._max_tracked = config.max_tracked
        self._clock = clock
        # key -> (tokens left, monotonic time of the last update)
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, caller: Caller, remote: str | None) -> None:
        """Take one request from the caller's bucket, or raise RateLimited."""
        if caller.admin:
            return
        key = caller.user if caller.user is not None else f"@{remote or '?'}"
        now = self._clock()
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(
                f"too many requests from {caller.user or 'this address'} (limit {self._rate:g}/s, "
                f"burst {self._burst:g})",
                retry_after_s=(1.0 - tokens) / self._rate,
            )
        if len(self._buckets) >= self._max_tracked and key not in self._buckets:
            self._forget_idle(now)
        self._buckets[key] = (tokens - 1.0, now)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets idle longest (half of them): they have refilled anyway or nearly so."""
        by_idle = sorted(self._buckets.items(), key=lambda item: item[1][1])
        for key, _ in by_idle[: len(by_idle) // 2 + 1]:
            del self._buckets[key]
