"""A servable version's placement: ``servable.placement`` of its (schema-valid) publication document, as the
route step carries it to the broker (``messages.Placement``; docs/task-managers.md, "Placement")."""

from __future__ import annotations

from typing import Any

from dlhub.common.errors import ValidationFailed
from dlhub.common.messages import DeviceNeed, Placement

FIELD = "servable.placement"


def placement_block(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The document's placement block, if it has one."""
    servable = metadata.get("servable")
    block = servable.get("placement") if isinstance(servable, dict) else None
    return block if isinstance(block, dict) else None


def check_placement(document: dict[str, Any], *, pipeline: bool) -> None:
    """What the schema cannot say: a pipeline has no placement of its own (each step runs where its own
    version's placement says)."""
    if pipeline and placement_block(document) is not None:
        raise ValidationFailed(
            "a pipeline has no placement of its own: each step runs where its version's placement says",
            field=FIELD,
        )


def placement_of(metadata: dict[str, Any]) -> Placement | None:
    """The broker's form of the version's placement (None without one, or with an empty one)."""
    block = placement_block(metadata)
    if not block:
        return None
    needs = sorted((block.get("devices") or {}).items())  # sorted: one placement, one broker cache entry
    devices = tuple(DeviceNeed(kind=str(kind), count=int(count)) for kind, count in needs)
    return Placement(
        site=str(block.get("site") or ""), devices=devices, replicas=int(block.get("replicas") or 0)
    )
