"""One executor container over the engine API, for a worker whose engine cannot see its files (``copy``).

``python -m dlhub.worker.docker_relay SPEC`` (``SPEC``: the JSON of ``DockerBackend.attached_spec``)
creates the container, copies the runtime and the one version directory in through the engine API (into
anonymous volumes, so its root filesystem stays read-only and the copies go with it), attaches to its
stdin/stdout before starting it, and then relays: this process's stdin to the container's, the
container's stdout and stderr (demultiplexed from the attach stream) to its own. To the worker's pool it
is an executor process like any other: it exits when the container does, and forwards SIGTERM, SIGINT
and SIGUSR1 (the drain's hand-back) to it.

Why not the docker CLI: worker images carry no CLI (Debian ships it only with the whole engine), and the
docker SDK's attach socket cannot be read and written from two threads when it is TLS (one ``SSL*``). The
attach runs on asyncio instead, whose TLS transport does both on one connection, over a unix socket or
``tcp://`` with the mutual TLS of ``docker_tls_cert_dir`` (or ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from dlhub.common.docker_environments import engine_client, tar_directory

FRAME_HEADER_BYTES: Final = 8
CHUNK_BYTES: Final = 1 << 16
DEFAULT_SOCKET: Final = "/var/run/docker.sock"


def create(api: Any, spec: dict[str, Any]) -> str:
    """Create the container (not started) and copy its files in; returns its id."""
    from docker.types import LogConfig, Mount

    host_config = api.create_host_config(
        auto_remove=True,
        init=True,
        log_config=LogConfig(type="none"),  # the protocol is not a log (see run_argv)
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs={"/tmp": spec["tmpfs"]},
        mem_limit=spec["memory_bytes"],
        memswap_limit=spec["memory_bytes"],
        nano_cpus=spec["nano_cpus"],
        pids_limit=spec["pids_limit"],
        network_mode=spec["network"],
        mounts=[Mount(target, None, type="volume") for _, target in spec["copies"]],
    )
    created = api.create_container(
        spec["image"],
        command=spec["command"],
        name=spec["name"],
        user=spec["user"],
        labels=spec["labels"],
        environment=spec["env"],
        stdin_open=True,  # not detached: StdinOnce too, so closing the attach's stdin closes the container's
        use_config_proxy=False,
        host_config=host_config,
    )
    container = str(created["Id"])
    for source, target in spec["copies"]:
        if not api.put_archive(container, target, tar_directory(Path(source))):
            raise RuntimeError(f"the engine refused the copy of {source}")
    return container


def ssl_context(spec: dict[str, Any]) -> ssl.SSLContext | None:
    """Mutual TLS for a ``tcp://`` engine: the spec's cert directory, else ``DOCKER_CERT_PATH`` when
    ``DOCKER_TLS_VERIFY`` is set; ``None``: plain TCP."""
    cert_dir = spec.get("tls_cert_dir")
    if not cert_dir and os.environ.get("DOCKER_TLS_VERIFY"):
        cert_dir = os.environ.get("DOCKER_CERT_PATH") or str(Path.home() / ".docker")
    if not cert_dir:
        return None
    context = ssl.create_default_context(cafile=str(Path(cert_dir) / "ca.pem"))
    context.load_cert_chain(str(Path(cert_dir) / "cert.pem"), str(Path(cert_dir) / "key.pem"))
    return context


async def open_attach(
    spec: dict[str, Any], api_version: str, container: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An attach stream (stdin, stdout, stderr) to ``container``, hijacked from an HTTP upgrade."""
    url = spec.get("docker_url") or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(parts.path)
    else:
        context = ssl_context(spec)
        reader, writer = await asyncio.open_connection(
            parts.hostname, parts.port or (2376 if context else 2375), ssl=context
        )
    path = f"/v{api_version}/containers/{container}/attach?stream=1&stdin=1&stdout=1&stderr=1"
    request = f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
    writer.write((request + "Content-Length: 0\r\n\r\n").encode("ascii"))
    await writer.drain()
    status = (await reader.readline()).decode("latin-1")
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass  # the headers: nothing in them matters once the status says the stream is ours
    if status.split(" ")[1:2] not in (["101"], ["200"]):
        raise RuntimeError(f"the engine refused the attach: {status.strip()}")
    return reader, writer


async def pump_stdin(writer: asyncio.StreamWriter, on_eof: Any) -> None:
    """The worker's requests to the container; at EOF, close the container's stdin (or stop it)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    while chunk := await reader.read(CHUNK_BYTES):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()  # stdin_once: the container's stdin closes, the executor exits as it would
    else:
        await on_eof()  # TLS cannot half-close: ask the container to stop instead


async def pump_output(reader: asyncio.StreamReader) -> None:
    """The attach stream's frames (8-byte header: stream, 0, 0, 0, big-endian size) to stdout/stderr."""
    loop = asyncio.get_running_loop()
    # StreamReaderProtocol: the flow control (drain) a StreamWriter needs; its reader side stays unused.
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), sys.stdout.buffer
    )
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)
    while True:
        try:
            header = await reader.readexactly(FRAME_HEADER_BYTES)
            payload = await reader.readexactly(int.from_bytes(header[4:8], "big"))
        except asyncio.IncompleteReadError:
            return
        if header[0] == 2:
            sys.stderr.buffer.write(payload)
            sys.stderr.buffer.flush()
        else:
            stdout.write(payload)
            await stdout.drain()


async def relay(spec: dict[str, Any]) -> int:
    client = await asyncio.to_thread(engine_client, spec.get("docker_url"), _path(spec.get("tls_cert_dir")))
    api = client.api
    container = await asyncio.to_thread(create, api, spec)
    reader, writer = await open_attach(spec, str(api.api_version), container)
    loop = asyncio.get_running_loop()

    async def send(signum: int) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(api.kill, container, signum)

    sending: set[asyncio.Task[None]] = set()

    def forward(signum: int) -> None:
        task = loop.create_task(send(signum))
        sending.add(task)
        task.add_done_callback(sending.discard)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        loop.add_signal_handler(signum, forward, signum)
    exited = loop.run_in_executor(None, _wait, api, container)
    await asyncio.to_thread(api.start, container)
    stdin = loop.create_task(pump_stdin(writer, lambda: send(signal.SIGTERM)))
    try:
        await pump_output(reader)
    finally:
        stdin.cancel()
        writer.close()
    return await exited


def _wait(api: Any, container: str) -> int:
    """The container's exit status (no request timeout: it runs as long as the executor); 1 when it was
    removed before the answer."""
    try:
        return int(api.wait(container, timeout=None, condition="removed").get("StatusCode", 1))
    except Exception:
        return 1


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dlhub.worker.docker_relay SPEC_JSON", file=sys.stderr)
        return 2
    try:
        return asyncio.run(relay(json.loads(argv[0])))
    except Exception as exc:  # the pool sees a dead executor; its stderr says why
        print(f"docker relay: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
