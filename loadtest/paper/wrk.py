"""Noop throughput driven by wrk (C, one thread), when it is installed.

The Python load generator (``load.py``) needs a large share of the 2 cores to keep 32 connections busy, which
it takes from the stack it measures; wrk needs a few percent. Both are reported; the wrk figure is the
stack's own capacity on this machine. Every non-2xx answer or socket error is counted and reported.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_P50 = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def parse(output: str) -> dict[str, Any]:
    """The figures of one ``wrk --latency`` run."""
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output: {output[-500:]}")
    non_2xx = _NON_2XX.search(output)
    socket = _SOCKET.search(output)
    p50 = _P50.search(output)
    return {
        "requests": int(total.group(1)),
        "requests_per_s": round(float(rps.group(1)), 1),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(map(int, socket.groups())) if socket else 0),
        "latency_p50_ms": round(float(p50.group(1)) * _UNIT_MS[p50.group(2)], 3) if p50 else None,
    }


def measure(
    url: str, token: str, path: str, *, memoize: bool, clients: int, duration_s: float, warmup: bool = True
) -> dict[str, Any]:
    """wrk with ``clients`` connections for ``duration_s`` (after 1 s of warm-up) on one noop run body."""
    body = json.dumps({"inputs": None, "memoize": memoize})
    with tempfile.TemporaryDirectory(prefix="dlhub-wrk-") as tmp:
        script = Path(tmp, "post.lua")
        script.write_text(LUA.format(body=json.dumps(body), token=token))
        base = ["wrk", "-t1", f"-c{clients}", "-s", str(script), "--latency", url + path]
        if warmup:
            subprocess.run([*base[:3], "-d1s", *base[3:]], capture_output=True, check=True, timeout=60)
        done = subprocess.run(
            [*base[:3], f"-d{max(1, round(duration_s))}s", *base[3:]],
            capture_output=True, text=True, check=True, timeout=duration_s + 60,
        )  # fmt: skip
    result = parse(done.stdout)
    result.update({"clients": clients, "duration_s": duration_s, "memoize": memoize, "load_generator": "wrk"})
    return result
