"""Container health checks of the DLHub images: readiness, not a live port.

    python /opt/dlhub/healthcheck.py broker|registry|builder|search|worker

Exit 0 when ready, 1 (with one line saying why) when not. Settings come from the same ``DLHUB_*`` environment
as the service's (``load_settings``).

- broker: the broker answers a ``StatsRequest`` on its bus (its ROUTER loop serves; an open port is not
  enough);
- registry: ``GET /api/v1/health`` answers 200, which it does only when it serves HTTP *and* the broker
  answers it;
- builder, search, worker: the service's process holds an established TCP connection to the broker's port,
  and the broker answers and lists at least one registered handler of the service's kind.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import zmq

from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings, load_settings
from dlhub.common.curve import client_keys_for, tagged_identity
from dlhub.common.ids import new_id
from dlhub.common.messages import StatsReply, StatsRequest

TIMEOUT_S = 3.0
HANDLER_KINDS = {"builder": "builder", "search": "search", "worker": "worker"}


class NotReady(Exception):
    """One line saying why the service is not ready."""


def broker_stats(settings: DLHubSettings, service: str) -> StatsReply:
    """The broker's handler table, asked with the container's own bus key (the broker's: ``admin``), since
    a CURVE broker answers no one else."""
    codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
    keys = client_keys_for(settings.bus, HANDLER_KINDS.get(service, "admin"))
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(sock)
        sock.setsockopt(zmq.IDENTITY, tagged_identity(f"healthcheck-{new_id()}", keys))
        sock.connect(settings.bus.broker_url)
        request_id = new_id()
        sock.send(bytes(codec.encode(StatsRequest(request_id=request_id))))
        deadline = time.monotonic() + TIMEOUT_S
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            if not sock.poll(left_ms):
                break
            for frame in sock.recv_multipart():
                message = codec.decode(frame)
                if isinstance(message, StatsReply) and message.request_id == request_id:
                    return message
        raise NotReady(f"the broker at {settings.bus.broker_url} did not answer within {TIMEOUT_S} s")
    finally:
        sock.close(0)
        context.term()


def check_registry(settings: DLHubSettings) -> None:
    host = settings.registry.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{settings.registry.port}/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            if response.status != 200:
                raise NotReady(f"{url} answered {response.status}")
    except OSError as exc:
        raise NotReady(f"{url}: {exc}") from None


def service_pids(service: str) -> list[int]:
    """Processes of this container running ``python -m dlhub.<service>`` (not their executor children)."""
    wanted = f"dlhub.{service}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv and argv.index(b"-m") + 1 < len(argv) and argv[argv.index(b"-m") + 1] == wanted:
            pids.append(int(entry.name))
    return pids


def connected_to(pid: int, port: int) -> bool:
    """Whether ``pid`` owns an established TCP connection whose remote port is ``port``."""
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            lines = (Path("/proc") / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:  # 01: ESTABLISHED
                return True
    return False


def check_handler(settings: DLHubSettings, service: str) -> None:
    port = urlsplit(settings.bus.broker_url).port
    if port is None:
        raise NotReady(f"no TCP port in the broker URL {settings.bus.broker_url}")
    pids = service_pids(service)
    if not pids:
        raise NotReady(f"no dlhub.{service} process")
    if not any(connected_to(pid, port) for pid in pids):
        raise NotReady(f"dlhub.{service} holds no connection to the broker port {port}")
    stats = broker_stats(settings, service)
    kind = HANDLER_KINDS[service]
    if not any(handler.kind == kind for handler in stats.handlers):
        raise NotReady(f"the broker lists no {kind} handler")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("broker", "registry", *HANDLER_KINDS):
        print("usage: healthcheck.py broker|registry|builder|search|worker", file=sys.stderr)
        return 2
    service = argv[0]
    try:
        settings = load_settings(None)
        if service == "broker":
            broker_stats(settings, service)
        elif service == "registry":
            check_registry(settings)
        else:
            check_handler(settings, service)
    except NotReady as exc:
        print(f"not ready: {exc}")
        return 1
    print("ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
