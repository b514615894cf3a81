"""Every accepted task ends, across registry and broker restarts.

An asynchronous run is a durable bus task: the broker keeps its final Result until this registry has stored it
and acknowledged it (``Runs._drive_async``). Three things end the tasks whose coroutine is gone:

- Adoption: a Result that no call awaits (re-sent by the broker to a registry that restarted under the same
  ``registry.instance_id``) finishes the stored task if it is still open, then is acknowledged.
- Reconciliation: at start, and when a different broker process answers, the registry asks the broker about
  its open runs (``BusClient.query_tasks``); the broker first re-sends the results it holds, and a task it
  does not know has no outcome coming: it fails ``registry_restarted`` (at start) or ``broker_restarted``.
- The reaper: every registry fails any open task (any owner, any kind) past its ``deadline_ms`` with
  ``deadline_exceeded``, so the tasks of a registry that never comes back end too. A build it ends also ends
  its version: still ``building`` for that task, it becomes ``failed`` with the same reason
  (``on_build_reaped``), since no coroutine is left to end it.

Terminal states are final (``TaskTable`` writes conditionally), so the three never overwrite an outcome and
may race each other and the live path freely. Several registries on one store: another registry takes over
the tasks of one that stopped heartbeating before their deadline (``takeover.py``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from dlhub.common.config import DLHubSettings, RegistryConfig
from dlhub.common.errors import BrokerRestarted, DeadlineExceeded, DLHubError, RegistryRestarted
from dlhub.common.ids import new_id
from dlhub.common.logging import get_logger
from dlhub.common.messages import Result
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.clock import now_ms
from dlhub.registry.ports import Bus
from dlhub.registry.store import OPEN_TASK_STATES, TaskRecord
from dlhub.registry.tasks import TaskTable

log = get_logger(__name__)

QUERY_BATCH: Final = 1000
"""Task ids per ``TaskQuery``."""
MAX_RECONCILED: Final = 100_000
"""Open tasks looked at per reconciliation (more are left to the reaper)."""
REAP_BATCH: Final = 1000


def instance_id(settings: DLHubSettings) -> str:
    """This registry's bus identity and task owner: configured, or the same after a restart on this host and
    port (a registry on an ephemeral port gets a fresh one: it will not be found at that port again)."""
    config = settings.registry
    if config.instance_id:
        return config.instance_id
    if config.port == 0:
        return f"registry-{new_id()}"
    return f"registry@{socket.gethostname()}:{config.port}"


BuildReaped = Callable[[TaskRecord], Awaitable[object]]
"""Gets a build task the reaper failed (``Servables.fail_overdue_build``)."""


class TaskRecovery:
    def __init__(
        self,
        *,
        tasks: TaskTable,
        bus: Bus,
        background: BackgroundTasks,
        config: RegistryConfig,
        on_build_reaped: BuildReaped | None = None,
    ) -> None:
        self._tasks = tasks
        self._bus = bus
        self._background = background
        self._config = config
        self._on_build_reaped = on_build_reaped

    def start(self) -> None:
        """Listen for orphan results and broker restarts; reconcile what a previous process left; reap."""
        self._bus.listen(on_orphan_result=self._on_orphan_result, on_broker_change=self._on_broker_change)
        started_ms = now_ms()
        self._background.spawn(
            self.reconcile_until_answered(RegistryRestarted.code, started_ms), name="task reconciliation"
        )
        self._background.spawn(self.reap_forever(), name="task reaper")

    # -- adoption ------------------------------------------------------------------------------------------

    def _on_orphan_result(self, result: Result) -> None:
        self._background.spawn(self.adopt(result), name=f"adopt {result.task_id}")

    async def adopt(self, result: Result) -> bool:
        """Store a result no call awaited if its run is still open; acknowledge it once handled."""
        task = await self._tasks.get(result.task_id)
        adopted = False
        if task is not None and task.kind == "run" and task.state in OPEN_TASK_STATES:
            task = await self._tasks.finish_run(task, result, request_ms=0.0)
            adopted = True
            log.info("result recovered", task_id=task.task_id, state=task.state)
        if task is None or task.kind == "run":  # a build's late result is not durable: nothing to ack
            self._bus.ack(result.task_id)
        return adopted

    # -- reconciliation ------------------------------------------------------------------------------------

    def _on_broker_change(self, previous: str, current: str) -> None:
        self._background.spawn(
            self.reconcile_until_answered(BrokerRestarted.code, now_ms()), name="task reconciliation"
        )

    async def reconcile_until_answered(self, code: str, created_before_ms: int) -> int:
        """``reconcile`` again every ``task_reconcile_retry_s`` until the broker and the store answer."""
        while True:
            try:
                return await self.reconcile(code, created_before_ms)
            except DLHubError as exc:  # the broker is not up yet, or the store is away: try again
                log.info("task reconciliation postponed", reason=exc.code)
            await asyncio.sleep(self._config.task_reconcile_retry_s)

    async def reconcile(self, code: str, created_before_ms: int) -> int:
        """Fail (``code``) this registry's open runs, accepted before ``created_before_ms`` and awaited by no
        coroutine here, that the broker no longer holds; return how many."""
        tasks = self._tasks
        candidates = [
            t
            for t in await tasks.open_tasks(owner=tasks.owner, limit=MAX_RECONCILED)
            if t.kind == "run" and t.created_at_ms < created_before_ms and t.task_id not in tasks.driving
        ]
        failed = 0
        for start in range(0, len(candidates), QUERY_BATCH):
            batch = candidates[start : start + QUERY_BATCH]
            # ``adopt``: runs this registry took over from a gone one and had not adopted at the broker yet
            # (takeover.py) are re-addressed here too; its own are already.
            status = await self._bus.query_tasks([t.task_id for t in batch], adopt=True)
            known = set(status.known)
            for task in batch:
                if task.task_id not in known and await self._fail_lost(task, code):
                    failed += 1
        if candidates:
            log.info("tasks reconciled", code=code, open=len(candidates), failed=failed)
        return failed

    async def _fail_lost(self, task: TaskRecord, code: str) -> bool:
        if task.task_id in self._tasks.driving:  # a coroutine here took it over meanwhile
            return False
        if code == RegistryRestarted.code:
            message = "the registry restarted and the broker no longer holds the task or its result"
        else:
            message = "the broker restarted and lost the task"
        ended = await self._tasks.fail(task, error={"type": code, "message": message})
        return ended.state == "failed" and (ended.error or {}).get("type") == code

    # -- the reaper ----------------------------------------------------------------------------------------

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.task_reap_interval_s)
            try:
                await self.reap()
            except Exception:
                log.exception("task reaper pass failed")

    async def reap(self) -> int:
        """Fail every open task past its deadline with ``deadline_exceeded``; return how many."""
        overdue = await self._tasks.open_tasks(deadline_before_ms=now_ms(), limit=REAP_BATCH)
        for task in overdue:
            error = {
                "type": DeadlineExceeded.code,
                "message": "the task was still unfinished past its timeout and grace period "
                f"(accepted by {task.owner or 'an earlier registry'})",
            }
            ended = await self._tasks.fail(task, error=error)
            reaped = ended.state == "failed" and ended.error == error
            if reaped and task.kind == "build" and self._on_build_reaped is not None:
                await self._on_build_reaped(ended)
        if overdue:
            first = overdue[0].task_id
            log.warning("tasks past their deadline failed", count=len(overdue), first_task_id=first)
        return len(overdue)
