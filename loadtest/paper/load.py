"""Concurrent keep-alive clients, spread over a few load-generator processes.

The load generator competes with the stack for the same cores, so it runs in ``processes`` separate
processes (``python -m loadtest.paper.load``, a small module, not the driver with its ML imports), each with
asyncio, one aiohttp session and ``clients / processes`` concurrent request loops (each reusing its own
keep-alive connection), and reports the CPU it used itself during the measured window (``client_cpu_share``:
CPU seconds of all load processes / (window x usable cores)).

Protocol on the child's pipes: the spec as one JSON line on stdin; the child connects and prints ``ready``;
once every child is ready the parent writes ``go`` to each (so they start together); they send for
``warmup_s`` without counting, count the replies that complete within the next ``duration_s`` and print
one JSON line of results.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import httpx
import msgspec

from loadtest.common import summary_ms

PRIME_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class LoadSpec:
    url: str
    """Full URL of the POST endpoint."""
    headers: dict[str, str]
    bodies: tuple[bytes, ...]
    expected: tuple[Any, ...]
    """The ``output`` each body must produce (same index); anything else counts as an error."""
    clients: int
    warmup_s: float
    duration_s: float


@dataclass
class _Window:
    start: float
    end: float
    count: int = 0
    errors: int = 0
    first_error: str = ""


async def _client_loop(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    offset: int,
    stride: int,
    window: _Window,
    out: list[float],
) -> None:
    i = offset
    while time.perf_counter() < window.end:
        index = i % len(spec.bodies)
        i += stride
        started = time.perf_counter()
        try:
            async with session.post(spec.url, data=spec.bodies[index], headers=spec.headers) as response:
                payload = await response.read()
                status = response.status
        except aiohttp.ClientError as exc:
            window.errors += 1
            window.first_error = window.first_error or repr(exc)
            continue
        finished = time.perf_counter()
        if not window.start <= finished <= window.end:
            continue
        try:
            record = msgspec.json.decode(payload) if status == 200 else {}
        except msgspec.DecodeError:
            record = {}
        if not isinstance(record, dict) or record.get("output") != spec.expected[index]:
            window.errors += 1
            window.first_error = window.first_error or f"HTTP {status}: {payload[:200]!r}"
            continue
        window.count += 1
        out.append((finished - started) * 1000)


async def _cpu_in_window(window: _Window) -> float:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    cpu_start = time.process_time()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    return time.process_time() - cpu_start


async def _generate(spec: LoadSpec, offset: int, clients: int, stride: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":  # blocking on purpose: nothing runs before the start
            raise SystemExit("load generator: no start signal")
        now = time.perf_counter()
        window = _Window(start=now + spec.warmup_s, end=now + spec.warmup_s + spec.duration_s)
        latencies: list[float] = []
        cpu = asyncio.create_task(_cpu_in_window(window))
        loops = [_client_loop(session, spec, offset + k * stride, stride * clients, window, latencies)
                 for k in range(clients)]  # fmt: skip
        await asyncio.gather(*loops)
        cpu_s = await cpu
    return {
        "count": window.count,
        "errors": window.errors,
        "first_error": window.first_error,
        "cpu_s": cpu_s,
        "latencies": latencies,
    }


def _child_main() -> None:
    job = json.loads(sys.stdin.readline())
    spec = LoadSpec(
        url=job["url"], headers=job["headers"], bodies=tuple(b.encode() for b in job["bodies"]),
        expected=tuple(job["expected"]), clients=job["clients"], warmup_s=job["warmup_s"],
        duration_s=job["duration_s"],
    )  # fmt: skip
    result = asyncio.run(_generate(spec, job["offset"], job["share"], job["stride"]))
    print(json.dumps(result), flush=True)


def _prime(spec: LoadSpec) -> None:
    """One request before the clocks start, so a model loading on first use is not part of any window."""
    response = httpx.post(spec.url, content=spec.bodies[0], headers=spec.headers, timeout=PRIME_TIMEOUT_S)
    if response.status_code != 200 or response.json().get("output") != spec.expected[0]:
        raise RuntimeError(f"priming {spec.url} failed: HTTP {response.status_code}: {response.text[:300]}")


def _start_children(spec: LoadSpec, processes: int) -> list[subprocess.Popen[str]]:
    shares = [
        spec.clients // processes + (1 if p < spec.clients % processes else 0) for p in range(processes)
    ]
    job = asdict(spec) | {"bodies": [b.decode() for b in spec.bodies], "expected": list(spec.expected)}
    children = []
    for p, share in enumerate(shares):
        child = subprocess.Popen(
            [sys.executable, "-m", "loadtest.paper.load"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert child.stdin is not None
        child.stdin.write(json.dumps(job | {"offset": p, "share": share, "stride": processes}) + "\n")
        child.stdin.flush()
        children.append(child)
    return children


def _collect(children: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    try:
        for child in children:  # every child connected before any of them sends
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"load generator exited with {child.wait()} before it was ready")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        parts = []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator exited with {child.wait()} without results")
            parts.append(json.loads(line))
        return parts
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()


def run_load(spec: LoadSpec, processes: int = 2) -> dict[str, Any]:
    """Run the load and return requests/s, latency summary, errors and the client's own CPU share."""
    _prime(spec)
    processes = max(1, min(processes, spec.clients))
    parts = _collect(_start_children(spec, processes))
    latencies = [x for part in parts for x in part["latencies"]]
    count = sum(int(part["count"]) for part in parts)
    errors = sum(int(part["errors"]) for part in parts)
    first_error = next((p["first_error"] for p in parts if p["first_error"]), "")
    if count == 0:
        raise RuntimeError(f"load against {spec.url} completed no request: {first_error or 'no reply'}")
    cpu_s = sum(float(part["cpu_s"]) for part in parts)
    cores = len(os.sched_getaffinity(0))
    return {
        "clients": spec.clients,
        "load_processes": processes,
        "duration_s": spec.duration_s,
        "requests": count,
        "requests_per_s": round(count / spec.duration_s, 1),
        "errors": errors,
        "first_error": first_error,
        "client_round_trip": summary_ms(latencies),
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_share": round(cpu_s / (spec.duration_s * cores), 3),
    }


if __name__ == "__main__":
    _child_main()
