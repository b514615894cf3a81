"""Replicas: several handlers able to serve one servable share its load at the broker, and
`dlhub up --replicas` starts dedicated workers for one servable."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dlhub.client.cli import main as cli
from dlhub.client.launcher import Stack, StackOptions, parse_replica, replica_counts
from dlhub.client.metadata import python_function_document
from dlhub.common.config import BusConfig
from dlhub.common.messages import Result, RouteStep
from tests.support.broker import (
    BrokerProcess,
    HandlerProcess,
    bus_client,
    bus_config,
    make_codec,
)
from tests.support.stack import start_stack, stop_stack

codec = make_codec()
LIVENESS_S = bus_config(0).liveness_timeout_s
TOPIC = "servable/alice/model@3"
REPLICA_PATTERN = "servable/alice/model@*"


def start_handlers(port: int, topics: dict[str, str]) -> dict[str, HandlerProcess]:
    """One handler process (capacity 1, sleeps ``inputs`` seconds) per ``handler_id: topic``."""
    handlers = {hid: HandlerProcess(port=port, topic=topic, handler_id=hid) for hid, topic in topics.items()}
    for handler in handlers.values():
        handler.wait_registered()
    return handlers


async def run_many(bus: BusConfig, topic: str, count: int, seconds: float) -> list[Result]:
    async with bus_client(bus) as client:
        calls = [
            client.call([RouteStep(topic=topic)], codec.encode_value(seconds), timeout_s=30)
            for _ in range(count)
        ]
        return list(await asyncio.gather(*calls))


async def test_tasks_spread_over_replicas_and_the_general_worker(
    broker: BrokerProcess, bus: BusConfig
) -> None:
    topics = {f"replica-{i}": REPLICA_PATTERN for i in range(3)} | {"general": "servable/*"}
    handlers = await asyncio.to_thread(start_handlers, broker.port, topics)
    try:
        results = await run_many(bus, TOPIC, 8, 0.3)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        served = Counter(r.handler_id for r in results)
        # Exact and prefix registrations compete together; each capacity-1 handler takes a share.
        assert set(served) == set(topics), served
        assert max(served.values()) <= 3, served
        # Another servable only reaches the general worker.
        others = await run_many(bus, "servable/bob/other@1", 3, 0.0)
        assert {r.handler_id for r in others} == {"general"}
    finally:
        for handler in handlers.values():
            handler.close()


# -- the launcher ------------------------------------------------------------------------------------------


def test_replica_specs_parse_and_override_the_configuration() -> None:
    assert parse_replica("alice/model=3") == ("alice/model", 3)
    assert replica_counts({"alice/model": 1, "bob/x": 2}, ["alice/model=4"]) == {"alice/model": 4, "bob/x": 2}
    for bad in ["alice/model", "alice=2", "alice/model/1=2", "alice/mo del=2", "alice/model=0", "a/b=x"]:
        with pytest.raises(ValueError):
            parse_replica(bad)


def test_stack_starts_dedicated_workers_with_only_their_servable_topic(tmp_path: Path) -> None:
    stack = Stack(StackOptions(data_dir=tmp_path, workers=2, replicas={"alice/model": 2, "bob/x": 1}))
    workers = {s.name: s.env for s in stack.services if s.module == "dlhub.worker"}
    assert workers == {
        "worker-0": {},
        "worker-1": {},
        "replica-alice-model-0": {"DLHUB_WORKER__TOPICS": '["servable/alice/model@*"]'},
        "replica-alice-model-1": {"DLHUB_WORKER__TOPICS": '["servable/alice/model@*"]'},
        "replica-bob-x-0": {"DLHUB_WORKER__TOPICS": '["servable/bob/x@*"]'},
    }
    assert stack.options.total_workers == 5


def test_up_rejects_a_bad_replica_spec_before_starting_anything(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path / "data"), "--replicas", "alice=2"])
    assert outcome.exit_code == 2
    assert "--replicas" in outcome.output and "owner/name=COUNT" in outcome.output
    assert not (tmp_path / "data").exists()


FUNCTIONS = """
import os
import time


def where(seconds):
    time.sleep(seconds)  # a slow servable: keeps its replica busy, the condition under test
    return os.getppid()  # the executor's parent: the worker service that ran the task
"""


def _worker_topics(pid: int) -> str | None:
    """The DLHUB_WORKER__TOPICS a worker service was started with (None for a general worker)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"DLHUB_WORKER__TOPICS="):
            return entry.split(b"=", 1)[1].decode()
    return None


def test_up_with_replicas_spreads_one_servable_over_its_dedicated_workers(tmp_path: Path) -> None:
    config = tmp_path / "dlhub.toml"
    config.write_text('[[worker.replicas]]\nservable = "alice/other"\ncount = 1\n')
    process, info = start_stack(
        tmp_path, workers=1, extra_args=["--replicas", "alice/where=2", "--config", str(config)]
    )
    try:
        api, token = info["url"] + "/api/v1", info["alice"]
        admin = {"Authorization": f"Bearer {token}"}  # alice administers the stack: the handler table
        handlers = httpx.get(api + "/health", headers=admin, timeout=5).json()["broker"]["handlers"]
        topics = sorted(json.dumps(h["topics"]) for h in handlers if h["kind"] == "worker")
        assert topics == sorted(
            ['["servable/*"]', '["servable/alice/where@*"]', '["servable/alice/where@*"]',
             '["servable/alice/other@*"]']
        )  # fmt: skip

        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "wherefns.py").write_text(FUNCTIONS)
        doc = python_function_document(
            name="where", module="wherefns", function="where", files=["wherefns.py"], title="Where",
            authors=["Doe, Jane"],
        )  # fmt: skip
        doc["dlhub"]["deterministic"] = False
        from dlhub.client import DLHubClient

        assert DLHubClient(info["url"], token).publish(doc, base_dir=tmp_path / "pkg")["status"] == "ready"

        def run(_: int) -> Any:
            response = httpx.post(
                api + "/servables/alice/where/run",
                json={"inputs": 0.4},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert response.status_code == 200 and response.json()["state"] == "completed", response.text
            return response.json()["output"]

        with ThreadPoolExecutor(6) as threads:
            served = set(threads.map(run, range(6)))
        dedicated = {pid for pid in served if _worker_topics(pid) == '["servable/alice/where@*"]'}
        assert len(dedicated) == 2, served  # both replicas took a share (the general worker may too)
        assert all(_worker_topics(pid) != '["servable/alice/other@*"]' for pid in served)
    finally:
        assert stop_stack(process) == 0
