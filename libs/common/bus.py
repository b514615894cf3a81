"""Both ends of the broker connection, shared by every service.

- ``HandlerService``: the DEALER side of workers, the builder and search. Registers its topics and capacity,
  heartbeats, reconnects with backoff when the broker goes silent (re-registering), and runs dispatched tasks
  with at most ``capacity`` in flight.
- ``BusClient``: the DEALER side of task submitters (the registry). ``call`` submits a task and awaits its
  ``Result``; failures come back as ``Result(ok=False, error=...)``, never as a hang.

INTERFACE CONTRACT (implementation owned by the broker work):
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import msgspec

from libs.common.codec import Codec
from libs.common.config import BusConfig
from libs.common.messages import Dispatch, Result, RouteStep, Started, StatsReply

TaskHandler = Callable[[Dispatch], Awaitable[Result]]
"""Runs one dispatched step. Must return a Result with the dispatch's task_id and step; if it raises, the
HandlerService turns the exception into a failed Result (DLHubError -> its code; others -> servable_error)."""


class HandlerService:
    def __init__(
        self,
        *,
        bus: BusConfig,
        codec: Codec,
        kind: str,
        topics: Sequence[str],
        capacity: int,
        handle: TaskHandler,
        handler_id: str | None = None,
    ) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Connect, register and serve until ``stop`` is called."""
        raise NotImplementedError

    async def wait_registered(self, timeout_s: float) -> None:
        """Return once the broker has acknowledged the registration."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Unregister, let in-flight tasks finish (bounded), close the socket."""
        raise NotImplementedError


class BusClient:
    def __init__(self, *, bus: BusConfig, codec: Codec, client_id: str | None = None) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def call(
        self,
        route: Sequence[RouteStep],
        inputs: msgspec.Raw,
        *,
        timeout_s: float,
        task_id: str | None = None,
        on_started: Callable[[Started], None] | None = None,
    ) -> Result:
        """Submit ``inputs`` along ``route`` and await the final Result.

        A deadline passing yields code ``task_timeout``; a silent broker yields ``broker_unavailable``.
        """
        raise NotImplementedError

    async def stats(self, *, timeout_s: float = 2.0) -> StatsReply:
        """Ask the broker for its handler table and queue depth; raise BrokerUnavailable on no answer."""
        raise NotImplementedError
