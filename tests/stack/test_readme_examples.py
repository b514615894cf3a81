"""The README's walkthrough runs as pasted: the blocks marked ``<!-- readme-test: NAME -->`` are read from the
README itself and run in order, in an empty folder, against a real embedded stack started as user ``jane``
with HOME pointing at a fresh directory (so ``~/.dlhub`` is where ``dlhub up`` leaves its token).

Only the registry's port differs from the text (a free port instead of 8642, so that a developer's own stack
can keep running). In the Python block, ``expression  # -> value`` comments are checked as assertions.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.polling import wait_until
from tests.support.stack import HEARTBEAT_INTERVAL_S

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
CLAIM = re.compile(r"^(?P<expr>[^\s#=][^#]*?)\s+# -> (?P<value>[^;]+?)(?:;.*)?$")
DEFAULT_PORT = "127.0.0.1:8642"
STEP_TIMEOUT_S = 180


def readme_blocks() -> dict[str, tuple[str, str]]:
    blocks = {m["name"]: (m["lang"], m["body"]) for m in BLOCK.finditer(README.read_text())}
    assert {"mymod", "local", "sdk", "cli", "rest"} <= set(blocks), sorted(blocks)
    return blocks


def with_claims_checked(source: str) -> str:
    """Turn ``expr  # -> literal`` lines into assertions; other lines stay as they are."""
    lines = []
    for line in source.splitlines():
        match = CLAIM.match(line)
        if match:
            try:
                expected = ast.literal_eval(match["value"].strip())
            except (ValueError, SyntaxError):
                expected = None
            else:
                expr = match["expr"].strip()
                line = f"assert ({expr}) == {expected!r}, ({expr!r}, {expr})"
        lines.append(line)
    return "\n".join(lines) + "\n"


class Walkthrough:
    def __init__(self, folder: Path, env: dict[str, str], port: int) -> None:
        self.folder, self.env, self.port = folder, env, port

    def run(self, lang: str, body: str) -> subprocess.CompletedProcess[str]:
        body = body.replace(DEFAULT_PORT, f"127.0.0.1:{self.port}")
        command = (
            [sys.executable, "-c", body] if lang == "python" else ["bash", "-euo", "pipefail", "-c", body]
        )
        return subprocess.run(
            command, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
        )


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    home = tmp_path_factory.mktemp("readme-home")
    folder = tmp_path_factory.mktemp("readme-work")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLHUB_")}
    env |= {"HOME": str(home), "DLHUB_BUS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S)}
    port, broker_port = free_port(), free_port()
    command = [
        *(sys.executable, "-m", "dlhub.client.cli", "up", "--user", "jane", "--workers", "1"),
        *("--port", str(port), "--broker-port", str(broker_port)),
    ]
    log = (home / "up.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        saved = home / ".dlhub" / "client.json"

        def ready() -> bool:
            assert process.poll() is None, (home / "up.log").read_text()
            return saved.is_file() and "token" in json.loads(saved.read_text() or "{}")

        wait_until(ready, timeout_s=60, message="dlhub up to save jane's token")
        yield Walkthrough(folder, env, port)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (home / "up.log").read_text()[-4000:]


def test_readme_walkthrough_runs_as_pasted(walkthrough: Walkthrough) -> None:
    blocks = readme_blocks()
    for name in ("mymod", "local", "sdk", "cli", "rest"):
        lang, body = blocks[name]
        if lang == "python":
            body = with_claims_checked(body)
        done = walkthrough.run(lang, body)
        assert done.returncode == 0, f"README block {name!r} failed:\n{done.stdout}\n{done.stderr}"
        if name == "cli":
            assert "2.0" in done.stdout.splitlines()
        if name == "local":  # the local run, the refused input, the vectors
            assert "2.0" in done.stdout.splitlines()
            assert "inputs[1]: expected float, got string" in " ".join(done.stderr.split())
            assert "all 1 test vector(s) passed" in done.stdout
        if name == "rest":
            reply = json.loads(done.stdout)
            assert reply["state"] == "completed" and reply["output"] == [2.0, 4.0, 6.0], reply


def test_claims_become_assertions() -> None:
    checked = with_claims_checked('client.run("x", [1])  # -> 2.0\ntask = f()  # -> TaskHandle; prose\n')
    assert checked.splitlines()[0].startswith('assert (client.run("x", [1])) == 2.0')
    assert checked.splitlines()[1] == "task = f()  # -> TaskHandle; prose"
