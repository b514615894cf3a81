"""The audit log: publish, update, delete, deprecation, visibility and token events (who, what, when).

Records go to the metadata store (``audit`` table/collection) and are read by administrators through
``GET /api/v1/audit``. A record never carries a secret: tokens appear as ``token_hint`` (the last hex digits
of their hash). Writing a record is awaited with the change it describes, so a change acknowledged to its
caller is in the log.
"""

from __future__ import annotations

from typing import Any

from dlhub.common.logging import get_logger
from dlhub.registry.auth import Caller
from dlhub.registry.clock import now_ms
from dlhub.registry.store import AuditRecord, MetadataStore

log = get_logger(__name__)


class AuditLog:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def record(self, caller: Caller | str, action: str, target: str, **detail: Any) -> None:
        actor = caller if isinstance(caller, str) else caller.user or "anonymous"
        if not isinstance(caller, str) and caller.token_hint:
            detail.setdefault("token", caller.token_hint)
        await self._store.add_audit(
            AuditRecord(at_ms=now_ms(), actor=actor, action=action, target=target, detail=detail)
        )
        log.info("audited", actor=actor, action=action, target=target)
