"""The floor: a bare aiohttp server in its own process that calls the model in-process, JSON in and out.

    python -m loadtest.paper.floor --port PORT

``POST /noop`` returns ``{"output": "hello world"}``; ``POST /rows`` takes a msgpack ``{"inputs": array}``
and returns one zero label per row (no model: only the HTTP and msgpack work of a batch request, used by
``loadtest.idle_wake``); ``POST /sklearn`` takes ``{"inputs": [[4 floats], ...]}`` and returns
``{"output": predict(inputs)}`` from the same random forest as the DLHub servable (trained here with the same
data and seed, so no model file is unpickled). No queue, no broker, no worker process:
whatever DLHub adds on top of this is its overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from aiohttp import web

from dlhub.common.codec import decode_body, encode_body
from loadtest.common import free_port

_NOOP_REPLY = json.dumps({"output": "hello world"}).encode()


def make_app() -> web.Application:
    from loadtest.batching import train

    model = train()

    async def noop(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_NOOP_REPLY, content_type="application/json")

    async def sklearn(request: web.Request) -> web.Response:
        body: dict[str, Any] = json.loads(await request.read())
        output = model.predict(np.asarray(body["inputs"], dtype=float)).tolist()
        return web.Response(body=json.dumps({"output": output}).encode(), content_type="application/json")

    async def rows(request: web.Request) -> web.Response:
        """A msgpack batch in, one int64 label per row out, no model: the HTTP part of a batch request."""
        body = decode_body(await request.read(), dict[str, Any])
        labels = np.zeros(len(body["inputs"]), dtype=np.int64)
        return web.Response(body=encode_body({"output": labels}), content_type="application/msgpack")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes(
        [
            web.post("/noop", noop),
            web.post("/sklearn", sklearn),
            web.post("/rows", rows),
            web.get("/health", health),
        ]
    )
    return app


@contextmanager
def floor_server() -> Iterator[str]:
    """Start the floor server in a separate process; yields its base URL (``wait_up`` before using it)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtest.paper.floor", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_up(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"floor server at {url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
