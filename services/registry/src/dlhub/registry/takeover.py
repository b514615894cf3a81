"""Several registries on one store and one broker: a registry that is gone leaves no task behind.

Every registry records a heartbeat in the store (``MetadataStore.beat_registry``) every
``peer_heartbeat_interval_s`` and then looks at the others'. A peer silent for ``peer_stale_after_s`` is gone
(SIGKILL, host lost): this registry claims each of its open tasks in the store (``claim_task``: of two
registries taking over at once, and of the peer's own late outcome, one wins per task), then

- runs: asks the broker to send their outcomes here from now on (``query_tasks(adopt=True)``). A run the
  broker still holds ends when its ``Result`` arrives (``TaskRecovery.adopt``, as after a restart); one the
  broker no longer knows has no outcome coming and fails ``registry_lost``.
- builds: the build starts again here (``on_build_taken``: ``Servables.take_over_build``, as a restarted
  registry resumes its own); one whose version is no longer ``building`` for it fails ``registry_lost``
  (``on_build_lost`` then ends its version, as the reaper would).
- dataset jobs (``jobs.py``): only the coroutine that drove one can go on, so it fails ``registry_lost``
  (its results file is kept), as a restarted registry ends its own ``registry_restarted``.

A peer that was only slow and comes back finds its tasks owned by another: its outcomes are not written and
not acknowledged (``TaskTable.taken_over``), the new owner gets them from the broker. Synchronous runs are
not tasks: they end with their registry (the caller's connection drops) and are not taken over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

from dlhub.common.config import RegistryConfig
from dlhub.common.errors import DLHubError, RegistryLost
from dlhub.common.logging import get_logger
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.clock import now_ms
from dlhub.registry.ports import Bus
from dlhub.registry.recovery import QUERY_BATCH, BuildReaped
from dlhub.registry.store import RegistryInstance, TaskRecord
from dlhub.registry.tasks import TaskTable

log = get_logger(__name__)

BuildTaken = Callable[[TaskRecord], Awaitable[bool]]
"""Resumes a build task taken over from a gone registry; False if there is nothing to resume."""

MAX_TAKEN_PER_PEER: Final = 100_000
"""Open tasks of one gone peer looked at per pass (more: the next pass)."""


def alive(peer: RegistryInstance, config: RegistryConfig, now: int) -> bool:
    """Whether ``peer`` has beaten within ``peer_stale_after_s`` of ``now`` (ms)."""
    return now - peer.last_seen_ms <= int(config.peer_stale_after_s * 1000)


class TaskTakeover:
    def __init__(
        self,
        *,
        tasks: TaskTable,
        bus: Bus,
        background: BackgroundTasks,
        config: RegistryConfig,
        url: str,
        on_build_taken: BuildTaken | None = None,
        on_build_lost: BuildReaped | None = None,
    ) -> None:
        self._tasks = tasks
        self._bus = bus
        self._background = background
        self._config = config
        self._url = url
        self._on_build_taken = on_build_taken
        self._on_build_lost = on_build_lost
        self._unadopted: dict[str, tuple[TaskRecord, str]] = {}
        """Runs claimed here whose adoption the broker has not answered yet (it was away): the next pass."""

    def start(self) -> None:
        self._background.spawn(self.beat_forever(), name="registry heartbeat")

    async def beat_forever(self) -> None:
        """Beat, then take over the tasks of gone peers, every ``peer_heartbeat_interval_s``."""
        while True:
            try:
                await self.beat()
                await self.take_over()
            except DLHubError as exc:  # the store or the broker is away: the next pass tries again
                log.warning("registry heartbeat pass failed", reason=exc.code)
            except Exception:
                log.exception("registry heartbeat pass failed")
            await asyncio.sleep(self._config.peer_heartbeat_interval_s)

    async def beat(self) -> None:
        await self._tasks.store.beat_registry(self._tasks.owner, url=self._url, now_ms=now_ms())

    async def take_over(self) -> int:
        """Take over the open tasks of every peer that stopped beating; return how many this registry got."""
        now = now_ms()
        peers = await self._tasks.store.list_registries()
        gone = [p for p in peers if p.instance_id != self._tasks.owner and not alive(p, self._config, now)]
        taken = 0
        for peer in gone:
            taken += await self.take_over_peer(peer.instance_id)
        await self.adopt_claimed()
        return taken

    async def take_over_peer(self, peer: str) -> int:
        """Claim ``peer``'s open tasks: its runs wait here to be adopted at the broker (``adopt_claimed``),
        its builds start again here or fail."""
        open_tasks = await self._tasks.open_tasks(owner=peer, limit=MAX_TAKEN_PER_PEER)
        if not open_tasks:
            return 0
        store, me = self._tasks.store, self._tasks.owner
        claimed = [replace(t, owner=me) for t in open_tasks if await store.claim_task(t, new_owner=me)]
        failed = 0
        for task in claimed:
            if task.kind == "run":
                self._unadopted[task.task_id] = (task, peer)
            elif task.kind != "build" or not await self._resume_build(task):
                failed += await self._fail_lost(task, peer)
        log.warning("tasks of a gone registry taken over", peer=peer, taken=len(claimed), failed=failed)
        return len(claimed)

    async def adopt_claimed(self) -> None:
        """Have the broker send the outcomes of the runs claimed here; fail those it no longer holds. A run
        stays waiting until the broker has answered about it (a claim is never left half done: once claimed,
        no other registry looks at it, its old owner being gone)."""
        waiting = list(self._unadopted.values())
        for start in range(0, len(waiting), QUERY_BATCH):
            batch = waiting[start : start + QUERY_BATCH]
            # Outcomes the broker holds arrive before its answer (the orphan listener stores them).
            ids = [t.task_id for t, _ in batch]
            status = await self._bus.query_tasks(ids, adopt=True, resend_all=False)
            known = set(status.known)
            failed = 0
            for task, peer in batch:
                del self._unadopted[task.task_id]
                if task.task_id not in known:
                    failed += await self._fail_lost(task, peer)
            log.info("taken-over runs adopted at the broker", runs=len(batch), failed=failed)

    async def _resume_build(self, task: TaskRecord) -> bool:
        return self._on_build_taken is not None and await self._on_build_taken(task)

    async def _fail_lost(self, task: TaskRecord, peer: str) -> int:
        why = {
            "build": "its version is no longer building",
            "job": f"its job stopped; the {(task.progress or {}).get('done', 0)} rows done are kept",
        }.get(task.kind, "the broker no longer holds it")
        error = {
            "type": RegistryLost.code,
            "message": f"the registry that accepted the task ({peer}) stopped heartbeating and {why}",
        }
        ended = await self._tasks.fail(task, error=error, as_owner=True)
        if ended.error != error:  # its outcome landed meanwhile
            return 0
        if task.kind == "build" and self._on_build_lost is not None:
            await self._on_build_lost(ended)
        return 1
