"""Several registries (takeover.py) without processes: the heartbeat settings, when a peer is alive, the
``registry_lost`` code."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dlhub.common.config import RegistryConfig
from dlhub.common.errors import ERRORS_BY_CODE, RegistryLost
from dlhub.registry.store import RegistryInstance
from dlhub.registry.takeover import alive


def test_the_stale_timeout_must_leave_room_for_missed_heartbeats() -> None:
    config = RegistryConfig()
    assert (config.peer_heartbeat_interval_s, config.peer_stale_after_s) == (5.0, 30.0)
    RegistryConfig(peer_heartbeat_interval_s=1, peer_stale_after_s=2.5)
    for stale in (1.0, 2.0):
        with pytest.raises(ValidationError, match="peer_stale_after_s"):
            RegistryConfig(peer_heartbeat_interval_s=1, peer_stale_after_s=stale)


def test_a_peer_is_alive_until_its_last_beat_is_older_than_the_stale_timeout() -> None:
    config = RegistryConfig(peer_heartbeat_interval_s=1, peer_stale_after_s=3)
    peer = RegistryInstance(instance_id="r", url="http://127.0.0.1:1", last_seen_ms=10_000)
    assert alive(peer, config, 10_000) and alive(peer, config, 13_000)
    assert not alive(peer, config, 13_001)


def test_registry_lost_is_a_registered_503() -> None:
    assert ERRORS_BY_CODE["registry_lost"] is RegistryLost and RegistryLost.http_status == 503
