"""``dlhub up``: run the whole embedded stack as separate processes on loopback, with one data directory.

Each service is started exactly as an operator would start it alone (``python -m dlhub.<name>``); the
launcher only passes configuration through ``DLHUB_*`` environment variables, waits until the registry reports
every service registered at the broker, restarts a service that dies, and stops all of them on SIGINT/SIGTERM.

Besides the ``workers`` general workers (topic ``servable/*``), ``replicas`` start dedicated workers for
single servables: ``{"alice/model": 3}`` starts three workers whose only topic is ``servable/alice/model@*``
(every version of it). The broker balances a servable's tasks over every worker able to serve it, dedicated
and general alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import httpx
import zmq

from dlhub.common.config import DLHubSettings
from dlhub.common.curve import create_keys
from dlhub.common.ids import NAME_RE, SERVABLE_PREFIX
from dlhub.common.logging import get_logger

log = get_logger(__name__)

RESTART_BACKOFF_MAX_S = 30.0
RESTART_STABLE_S = 60.0
"""A service that ran this long before dying is restarted after the shortest delay again: the backoff is for
crash loops, not for the occasional death of a service that had been up for a while."""
STOP_GRACE_S = 17.0
"""Default time between SIGTERM and SIGKILL on stop: the services' default shutdown graces plus a margin."""
STOP_MARGIN_S = 5.0


def stop_grace_s(settings: DLHubSettings) -> float:
    """How long ``stop`` lets the services drain (SIGTERM) before SIGKILL: the longest of their configured
    shutdown graces, plus a margin for the last results to pass and the processes to exit."""
    graces = (
        settings.broker.shutdown_grace_s,
        settings.registry.shutdown_grace_s,
        settings.worker.shutdown_grace_s,
    )
    return max(graces) + STOP_MARGIN_S


def parse_replica(spec: str) -> tuple[str, int]:
    """``owner/name=N`` -> ``("owner/name", N)``; ValueError naming the problem otherwise."""
    servable, sep, count = spec.rpartition("=")
    owner, slash, name = servable.partition("/")
    if not (sep and slash and NAME_RE.match(owner) and NAME_RE.match(name)):
        raise ValueError(f"expected owner/name=COUNT, got {spec!r}")
    try:
        replicas = int(count)
    except ValueError:
        raise ValueError(f"the replica count in {spec!r} is not an integer") from None
    if replicas < 1:
        raise ValueError(f"the replica count in {spec!r} must be at least 1")
    return servable, replicas


def replica_counts(configured: Mapping[str, int], specs: Iterable[str]) -> dict[str, int]:
    """Replica counts by servable: ``[[worker.replicas]]`` from the configuration, overridden per servable by
    ``--replicas owner/name=N`` options."""
    counts = dict(configured)
    for spec in specs:
        servable, count = parse_replica(spec)
        counts[servable] = count
    return counts


def replica_topic(servable: str) -> str:
    """The topic pattern of every version of ``owner/name``: topics are ``servable/<owner>/<name>@<version>``
    and the broker matches a pattern ending in ``*`` as a prefix."""
    return f"{SERVABLE_PREFIX}{servable}@*"


# glibc serves allocations above 128 KiB with fresh mmap()s and trims freed heap eagerly, so every large
# message buffer (an ndarray batch, a big output) costs a page fault per 4 KiB: ~0.3 ms per 320 KB copy.
# Keeping buffers up to 16 MiB on the heap, and up to 64 MiB of free heap untrimmed, makes them reusable.
MALLOC_TUNING: Final = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024),
}

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_IPC_PATH_BYTES = 107


def local_broker_url(data_dir: Path) -> str | None:
    """An ``ipc://`` endpoint in the data directory for the stack's own services, where the platform has one
    and the path fits in a Unix socket address; ``None`` means they use the TCP endpoint."""
    if not zmq.has("ipc"):
        return None
    path = (data_dir / "run" / "broker.sock").resolve()
    if len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"ipc://{path}"


@dataclass
class StackOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    registry_port: int = 8642
    broker_port: int = 5560
    workers: int = 1
    replicas: dict[str, int] = field(default_factory=dict)
    config_file: Path | None = None
    log_format: str = "json"
    log_to_console: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    stop_grace_s: float = STOP_GRACE_S
    curve_keys_dir: Path | None = None
    """Authenticate the bus with the CurveZMQ keys in this directory (written on first start); None: off."""

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.registry_port}"

    @property
    def total_workers(self) -> int:
        return self.workers + sum(self.replicas.values())


@dataclass
class ServiceProcess:
    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    restarts: int = 0
    """Restarts since the service last ran for ``RESTART_STABLE_S`` (what the backoff grows with)."""
    next_restart_at: float = 0.0
    started_at: float = 0.0


class Stack:
    """Start, watch and stop the embedded stack."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.services = [
            ServiceProcess("broker", "dlhub.broker"),
            ServiceProcess("registry", "dlhub.registry"),
            ServiceProcess("builder", "dlhub.builder"),
            ServiceProcess("search", "dlhub.search"),
            *(ServiceProcess(f"worker-{i}", "dlhub.worker") for i in range(options.workers)),
            *self._replica_services(options.replicas),
        ]
        self._stopping = threading.Event()

    @staticmethod
    def _replica_services(replicas: Mapping[str, int]) -> list[ServiceProcess]:
        services: list[ServiceProcess] = []
        for servable, count in replicas.items():
            topics = {"DLHUB_WORKER__TOPICS": json.dumps([replica_topic(servable)])}
            slug = servable.replace("/", "-")
            services.extend(
                ServiceProcess(f"replica-{slug}-{i}", "dlhub.worker", env=topics) for i in range(count)
            )
        return services

    # -- start -----------------------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        opts = self.options
        broker_url = f"tcp://{opts.host}:{opts.broker_port}"
        local_url = local_broker_url(opts.data_dir)
        env = dict(os.environ)
        env.update(
            {
                "DLHUB_DATA_DIR": str(opts.data_dir),
                "DLHUB_BROKER__BIND_URL": broker_url,
                "DLHUB_BROKER__EXTRA_BIND_URLS": json.dumps([local_url] if local_url else []),
                "DLHUB_BUS__BROKER_URL": local_url or broker_url,
                "DLHUB_REGISTRY__HOST": opts.host,
                "DLHUB_REGISTRY__PORT": str(opts.registry_port),
                "DLHUB_LOGGING__FORMAT": opts.log_format,
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name, value in MALLOC_TUNING.items():
            env.setdefault(name, value)
        if opts.config_file is not None:
            env["DLHUB_CONFIG"] = str(opts.config_file)
        env["DLHUB_BUS__CURVE_ENABLED"] = "true" if opts.curve_keys_dir is not None else "false"
        if opts.curve_keys_dir is not None:
            env["DLHUB_BUS__CURVE_KEYS_DIR"] = str(opts.curve_keys_dir)
        env.update(opts.extra_env)
        return env

    def start(self) -> None:
        self.options.data_dir.mkdir(parents=True, exist_ok=True)
        (self.options.data_dir / "logs").mkdir(exist_ok=True)
        if self.options.curve_keys_dir is not None:
            written = create_keys(self.options.curve_keys_dir)  # the missing ones; existing keys are kept
            if written:
                log.info("bus keys written", keys_dir=str(self.options.curve_keys_dir), names=written)
        env = self.environment()
        for service in self.services:
            self._spawn(service, env)

    def _spawn(self, service: ServiceProcess, env: dict[str, str]) -> None:
        stderr: IO[bytes] | int | None = None
        if not self.options.log_to_console:
            if service.log_file is None:
                service.log_file = (self.options.data_dir / "logs" / f"{service.name}.log").open("ab")
            stderr = service.log_file
        service.started_at = time.monotonic()
        service.popen = subprocess.Popen(
            [sys.executable, "-m", service.module],
            env=env | service.env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
        log.info("service started", service=service.name, pid=service.popen.pid)

    # -- health ----------------------------------------------------------------------------------------------

    def wait_healthy(self, timeout_s: float) -> dict[str, Any]:
        """Poll the registry's health until the builder, search and every worker are registered."""
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        with httpx.Client(base_url=self.options.api_url, timeout=1.0) as http:
            while time.monotonic() < deadline:
                self._raise_if_exited()
                try:
                    response = http.get("/api/v1/health")
                    body: dict[str, Any] = response.json()
                    if response.status_code == 200 and self._all_registered(body):
                        return body
                    last_error = f"HTTP {response.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    last_error = type(exc).__name__
                time.sleep(0.05)
        raise TimeoutError(f"stack not healthy after {timeout_s} s ({last_error}); logs: {self.log_dir}")

    @property
    def log_dir(self) -> Path:
        return self.options.data_dir / "logs"

    def _all_registered(self, health: dict[str, Any]) -> bool:
        counts: dict[str, int] = health.get("broker", {}).get("handler_counts", {})
        return (
            counts.get("builder", 0) > 0
            and counts.get("search", 0) > 0
            and counts.get("worker", 0) >= self.options.total_workers
        )

    def _raise_if_exited(self) -> None:
        for service in self.services:
            if service.popen is not None and service.popen.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.popen.returncode} during start-up; "
                    f"see {self.log_dir / (service.name + '.log')}"
                )

    # -- supervise and stop ----------------------------------------------------------------------------------

    def supervise(self, poll_interval_s: float = 0.5) -> None:
        """Restart services that die (with backoff) until ``request_stop`` is called."""
        env = self.environment()
        while not self._stopping.wait(poll_interval_s):
            for service in self.services:
                self._restart_if_dead(service, env)

    def _restart_if_dead(self, service: ServiceProcess, env: dict[str, str]) -> None:
        if service.popen is None or service.popen.poll() is None:
            return
        now = time.monotonic()
        if service.next_restart_at == 0.0:
            _kill_group(service.popen.pid)
            if now - service.started_at >= RESTART_STABLE_S:
                service.restarts = 0
            delay = min(2.0**service.restarts * 0.5, RESTART_BACKOFF_MAX_S)
            service.next_restart_at = now + delay
            log.warning(
                "service exited; restarting",
                service=service.name,
                code=service.popen.returncode,
                restart_in_s=delay,
            )
        if now >= service.next_restart_at:
            service.restarts += 1
            service.next_restart_at = 0.0
            self._spawn(service, env)

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every service (workers first, broker last), then SIGKILL what outlives the grace period."""
        self._stopping.set()
        for service in reversed(self.services):
            if service.popen is not None and service.popen.poll() is None:
                service.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.stop_grace_s
        codes: dict[str, int | None] = {}
        for service in reversed(self.services):
            if service.popen is None:
                continue
            try:
                codes[service.name] = service.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.popen.kill()
                codes[service.name] = service.popen.wait()
                log.warning("service killed after grace period", service=service.name)
            _kill_group(service.popen.pid)
            if service.log_file is not None:
                service.log_file.close()
        return codes


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a service that has exited: each service leads its own process group, and a
    worker killed outright can leave helpers behind there (a Parsl interchange, for one)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_foreground(stack: Stack, on_ready: Callable[[dict[str, Any]], None], timeout_s: float) -> int:
    """Start the stack, report readiness, supervise until SIGINT/SIGTERM, then stop cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.request_stop())
    stack.start()
    try:
        health = stack.wait_healthy(timeout_s)
    except (TimeoutError, RuntimeError) as exc:
        print(f"dlhub up failed: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    on_ready(health)
    stack.supervise()
    codes = stack.stop()
    unclean = {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM)}
    if unclean:
        print(f"services exited uncleanly: {unclean}", file=sys.stderr)
        return 1
    return 0
