"""A killed replica: its task fails and its load moves to the others (moved from
tests/stack/test_replicas.py)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from dlhub.common.config import BusConfig
from tests.stack.test_replicas import LIVENESS_S, REPLICA_PATTERN, TOPIC, run_many, start_handlers
from tests.support.broker import (
    BrokerProcess,
    bus_client,
)
from tests.support.polling import await_until


async def test_killed_replica_fails_its_task_and_its_load_moves_to_the_others(
    broker: BrokerProcess, bus: BusConfig
) -> None:
    topics = {f"replica-{i}": REPLICA_PATTERN for i in range(3)}
    handlers = await asyncio.to_thread(start_handlers, broker.port, topics)
    try:
        async with bus_client(bus) as client:

            async def victim_busy() -> bool:
                stats = await client.stats()
                return any(h.handler_id == "replica-0" and h.inflight == 1 for h in stats.handlers)

            load = asyncio.create_task(run_many(bus, TOPIC, 9, 0.5))
            await await_until(victim_busy, timeout_s=10, message="replica-0 running a task")
            handlers["replica-0"].signal(signal.SIGKILL)
            results = await asyncio.wait_for(load, 30)

            lost = [r for r in results if not r.ok]
            assert len(lost) == 1 and lost[0].error is not None and lost[0].error.code == "handler_lost"
            served = Counter(r.handler_id for r in results if r.ok)
            assert set(served) == {"replica-1", "replica-2"}, served

            # Purged, it gets nothing more: the survivors carry the whole load.
            async def purged() -> bool:
                return "replica-0" not in {h.handler_id for h in (await client.stats()).handlers}

            await await_until(purged, timeout_s=LIVENESS_S + 2, message="replica-0 purged")
            after = await run_many(bus, TOPIC, 6, 0.2)
            assert all(r.ok for r in after)
            assert {r.handler_id for r in after} == {"replica-1", "replica-2"}
    finally:
        for handler in handlers.values():
            handler.close()
