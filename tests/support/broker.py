"""Helpers for the broker tests: a real broker subprocess and handler subprocesses.

Run as a module (``python -m tests.support.broker handler ...``) it is a handler process serving one topic
with a handler that sleeps for ``inputs`` seconds and then echoes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dlhub.common.bus import BusClient, HandlerService, TaskHandler
from dlhub.common.codec import Codec
from dlhub.common.config import BusConfig
from dlhub.common.messages import Dispatch, Result
from tests.support.polling import wait_until

T = TypeVar("T")

HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_LIVENESS = 3
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def bus_config(port: int) -> BusConfig:
    return BusConfig(
        broker_url=f"tcp://127.0.0.1:{port}",
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        heartbeat_liveness=HEARTBEAT_LIVENESS,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )


def make_codec() -> Codec:
    return Codec(max_message_bytes=MAX_MESSAGE_BYTES)


def stack_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")}
    env.update(
        DLHUB_BROKER__BIND_URL=f"tcp://127.0.0.1:{port}",
        DLHUB_BUS__BROKER_URL=f"tcp://127.0.0.1:{port}",
        DLHUB_BUS__HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S),
        DLHUB_BUS__HEARTBEAT_LIVENESS=str(HEARTBEAT_LIVENESS),
        DLHUB_BUS__MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
        DLHUB_BUS__RECONNECT_INITIAL_S="0.1",
        DLHUB_BUS__RECONNECT_MAX_S="0.5",
        DLHUB_LOGGING__LEVEL="info",
    )
    return env


class BrokerProcess:
    """``python -m dlhub.broker`` on a free port, logging to a file the tests can read."""

    def __init__(self, port: int, log_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, *, timeout_s: float = 10.0) -> None:
        ready_before = self.log_text().count("broker ready")
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dlhub.broker"],
                cwd=REPO,
                env=stack_env(self.port) | self.env,
                stdout=log_file,
                stderr=log_file,
            )
        wait_until(
            lambda: self.log_text().count("broker ready") > ready_before or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout_s=timeout_s,
            message="broker ready",
        )
        assert self.proc.poll() is None, f"broker exited early:\n{self.log_text()}"

    def stop(self, sig: int = signal.SIGTERM, *, timeout_s: float = 5.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class HandlerProcess:
    """A HandlerService in its own process (so the tests can SIGKILL or SIGSTOP it)."""

    def __init__(self, *, port: int, topic: str, handler_id: str, capacity: int = 1) -> None:
        self.handler_id = handler_id
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.broker",
                "handler",
                "--topic",
                topic,
                "--handler-id",
                handler_id,
                "--capacity",
                str(capacity),
            ],
            cwd=REPO,
            env=stack_env(port),
            stdout=subprocess.PIPE,
        )

    def wait_registered(self, timeout_s: float = 10.0) -> None:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        assert readable, f"handler {self.handler_id} did not register within {timeout_s} s"
        line = self.proc.stdout.readline()
        assert line.strip() == b"registered", line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def echo(dispatch: Dispatch) -> Result:
    return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)


@contextlib.asynccontextmanager
async def running_handler(
    bus: BusConfig,
    topics: Sequence[str],
    handle: TaskHandler = echo,
    *,
    capacity: int = 1,
    handler_id: str | None = None,
    kind: str = "test",
) -> AsyncIterator[HandlerService]:
    service = HandlerService(
        bus=bus,
        codec=make_codec(),
        kind=kind,
        topics=topics,
        capacity=capacity,
        handle=handle,
        handler_id=handler_id,
    )
    service.stop_drain_timeout_s = 1.0
    runner = asyncio.get_running_loop().create_task(service.run())
    try:
        await service.wait_registered(10.0)
        yield service
    finally:
        await service.stop()
        await asyncio.wait_for(runner, 5.0)


@contextlib.asynccontextmanager
async def bus_client(bus: BusConfig) -> AsyncIterator[BusClient]:
    client = BusClient(bus=bus, codec=make_codec())
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["handler"])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--handler-id", required=True)
    parser.add_argument("--capacity", type=int, default=1)
    args = parser.parse_args(argv)

    from dlhub.common.config import load_settings
    from dlhub.common.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.logging, service="test-handler")
    codec = Codec(max_message_bytes=settings.bus.max_message_bytes)

    async def sleep_then_echo(dispatch: Dispatch) -> Result:
        seconds: Any = codec.decode_value(dispatch.inputs)
        await asyncio.sleep(float(seconds))  # a slow handler: the condition the tests need
        return Result(task_id=dispatch.task_id, ok=True, output=dispatch.inputs)

    async def serve() -> None:
        service = HandlerService(
            bus=settings.bus,
            codec=codec,
            kind="test",
            topics=[args.topic],
            capacity=args.capacity,
            handle=sleep_then_echo,
            handler_id=args.handler_id,
        )
        runner = asyncio.get_running_loop().create_task(service.run())
        await service.wait_registered(10.0)
        print("registered", flush=True)
        await runner

    asyncio.run(serve())


if __name__ == "__main__":
    _main(sys.argv[1:])
