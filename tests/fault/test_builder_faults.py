"""The builder SIGKILLed mid-build: the version never stays "building". Broker, registry and builder as
separate processes (tests/support/separate.py), so that the builder (and the registry) can be killed and
restarted at a chosen moment.

The build is held on the builder deterministically: the builder is SIGSTOPped before the publish, so the
broker dispatches the build to it and it never answers; the broker runs with a long liveness here, so it does
not purge the stopped builder before the test kills it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from tests.stack.test_e2e import function_doc
from tests.support.polling import wait_until
from tests.support.separate import SeparateServices
from tests.support.stack import unique

BROKER_LIVENESS = 200  # heartbeats: 50 s at 0.25 s, longer than any test here


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SeparateServices]:
    services = SeparateServices(tmp_path, env={"DLHUB_REGISTRY__ADMIN_USERS": '["alice"]'})
    try:
        services.env["DLHUB_BUS__HEARTBEAT_LIVENESS"] = str(BROKER_LIVENESS)
        services.start("broker")
        del services.env["DLHUB_BUS__HEARTBEAT_LIVENESS"]
        services.start("registry")
        services.start("builder")
        services.wait_registry()
        services.wait_handlers(builder=1)
        yield services
    finally:
        services.stop_all()


def _builder_inflight(services: SeparateServices, token: str) -> int:
    health = httpx.get(services.api + "/health", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    handlers: list[dict[str, Any]] = health.json()["broker"].get("handlers", [])
    return sum(h["inflight"] for h in handlers if h["kind"] == "builder")


def _hold_a_build(services: SeparateServices, pkg_dir: Path) -> tuple[DLHubClient, str, dict[str, Any]]:
    """Publish with the builder stopped: the build sits on the builder (dispatched, never answered)."""
    token = services.token("alice")
    client = DLHubClient(services.url, token)
    services.signal("builder", signal.SIGSTOP)
    reply = client.publish(function_doc(unique("held"), "noop"), base_dir=pkg_dir, wait=False)
    wait_until(lambda: _builder_inflight(services, token) == 1, timeout_s=10, message="the build dispatched")
    ref = f"alice/{reply['name']}@{reply['version']}"
    assert client.versions(ref.split("@")[0])[0]["status"] == "building"
    return client, ref, reply


def _status(client: DLHubClient, ref: str) -> str:
    name, _, version = ref.partition("@")
    return str(next(v for v in client.versions(name) if v["version"] == int(version))["status"])


def test_builder_killed_mid_build_fails_the_version_with_handler_lost(
    services: SeparateServices, pkg_dir: Path
) -> None:
    """Pass criteria: with the build on the builder, SIGKILL of the builder ends the version ``failed``
    (within 10 s: the broker notices the dead peer on its next send, not after its liveness), its build
    record ``failed`` naming the lost builder, its publish task ``failed`` with ``handler_lost``; after
    a builder restart a new publish builds to ``ready``."""
    client, ref, reply = _hold_a_build(services, pkg_dir)
    services.kill("builder")
    wait_until(lambda: _status(client, ref) == "failed", timeout_s=10, message="the version to fail")
    record = client.build_log(ref)
    assert record["state"] == "failed" and "builder" in record["error"], record
    task = wait_until(
        lambda: (t := client.status(reply["task_id"]))["state"] == "failed" and t,
        timeout_s=10,
        message="the publish task to fail",
    )
    assert task["error"]["type"] == "handler_lost", task

    services.start("builder")
    services.wait_handlers(builder=1)
    again = client.publish(function_doc(unique("after"), "noop"), base_dir=pkg_dir, timeout_s=60)
    assert again["status"] == "ready", again
    assert "Traceback" not in services.log("registry")


def test_builder_and_registry_killed_mid_build_the_restarted_registry_rebuilds_it(
    services: SeparateServices, pkg_dir: Path
) -> None:
    """Pass criteria: the registry SIGKILLed with a build in flight, then the builder SIGKILLed: the
    restarted registry resubmits the version it finds ``building``; it waits in the broker's queue while no
    builder runs (still ``building``, never failed by the lost builder's task, which nobody awaits), and
    once a builder is back the version ends ``ready`` within 60 s and its publish task ``completed``."""
    client, ref, reply = _hold_a_build(services, pkg_dir)
    services.kill("registry")
    services.kill("builder")
    services.start("registry")
    services.wait_registry()
    assert _status(client, ref) == "building"
    services.start("builder")
    wait_until(lambda: _status(client, ref) == "ready", timeout_s=60, message="the resumed build")
    assert client.build_log(ref)["state"] == "ready"
    task = wait_until(
        lambda: (t := client.status(reply["task_id"]))["state"] == "completed" and t,
        timeout_s=10,
        message="the publish task to complete",
    )
    assert task["state"] == "completed"
