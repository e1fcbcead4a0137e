"""The README's shell blocks run, so the README and the program stay in step.

Every ```sh block of the README is preceded by a marker: ``<!-- readme-test -->`` (run here)
or ``<!-- readme-test: skip (reason) -->`` (needs Kombo, a vendor, or installs packages). The
marked blocks run in README order, each in its own ``bash -e -o pipefail``, in a temporary
directory, with this venv's ``bin`` first on ``PATH`` (the README's "activate the venv"), a
private redis-server in place of ``redis://localhost:6379/0`` and free ports in place of the
simulator's 8080 and ``dispatcher web``'s 8000. The environment a block exports carries over to
the next, as in one terminal; what a block starts in the background is stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from dispatcher.testing import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = re.compile(r"<!-- readme-test(?::\s*skip \((?P<reason>[^)]+)\))?\s*-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass
class Block:
    line: int
    body: str
    skip: str | None  # the reason, for a block not run here


def sh_blocks(text: str) -> list[Block]:
    """Every ```sh block, with the marker that must precede it (only blank lines between)."""
    blocks = []
    for match in FENCE.finditer(text):
        if match["lang"] != "sh":
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        if marker is None:
            raise AssertionError(
                f"README.md:{line}: a ```sh block without a marker: put <!-- readme-test --> "
                "before it (tests/project/test_readme.py runs it) or <!-- readme-test: skip (why) -->"
            )
        blocks.append(Block(line, match["body"], marker["reason"]))
    return blocks


def test_every_sh_block_is_marked_and_some_run() -> None:
    blocks = sh_blocks(README.read_text(encoding="utf-8"))
    assert [b for b in blocks if b.skip is None], "no README block runs"


def test_a_block_without_a_marker_is_refused() -> None:
    with pytest.raises(AssertionError, match=r"README.md:3: a ```sh block without a marker"):
        sh_blocks("# t\n\n```sh\ndispatcher status\n```\n")


class ReadmeShell:
    """Runs blocks one after another like one terminal: exports carry over."""

    def __init__(self, cwd: Path, redis_url: str) -> None:
        self.cwd = cwd
        self.state = cwd / ".readme-env"
        self.redis_url = redis_url
        self.ports = {"8080": str(free_port()), "8000": str(free_port())}
        self.groups: list[int] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "DISPATCHER_"))}
        env.pop("REDIS_URL", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["NO_COLOR"] = "1"
        self.env = env
        self.state.write_text("")

    def adapt(self, body: str) -> str:
        body = body.replace("redis://localhost:6379/0", self.redis_url)
        for port, free in self.ports.items():
            body = re.sub(rf"(?<=127\.0\.0\.1:){port}\b|(?<=--port ){port}\b", free, body)
        return body

    def run(self, block: Block) -> tuple[int, str]:
        """Run one block; its exit status and what it printed (stdout, then stderr)."""
        # The environment is saved however the block ends; its status is its last command's
        # (or the first failing one's: -e), so `a && b` is checked only as the last line.
        script = f"trap 'export -p > {self.state}' EXIT\n. {self.state}\n{self.adapt(block.body)}\n"
        out, err = self.cwd / f"block-{block.line}.out", self.cwd / f"block-{block.line}.err"
        # Files, not pipes: what a block starts in the background keeps its output open.
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, stopped at the end
            )
            self.groups.append(process.pid)
            status = process.wait(timeout=100)
        return status, out.read_text() + err.read_text()

    def stop(self) -> None:
        """Stop what the blocks left running (the simulator, `dispatcher web`), and wait."""
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for group in self.groups:
            while _group_alive(group):
                if time.monotonic() > deadline:
                    os.killpg(group, signal.SIGKILL)
                    break
                time.sleep(0.05)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def shell(tmp_path: Path, redis_url: str, redis: Redis) -> Iterator[ReadmeShell]:
    # `redis` empties the shared test database first: the blocks count what they create.
    sh = ReadmeShell(tmp_path, redis_url)
    yield sh
    sh.stop()


# What each block must print (the README's comments say it), by a command the block holds.
EXPECTED = {
    "dispatcher poll --once": ["3 integrations, 3 pages, 120 OPEN orders seen, 120 new"],
    "dispatcher status": ["OK: orders are flowing", "NEXT SWEEP", "LEASE"],
    "dispatcher failed": [],
    "rq info": ["dispatcher-orders", "120 finished"],
    "dispatcher web": [
        "ok",
        "dispatcher_orders_dispatched_total 120.0",
        "404",
        "KOMBO_WEBHOOK_SECRET is not set: the webhook receiver is off",
    ],
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's blocks use curl")
def test_the_readme_blocks_run_offline(shell: ReadmeShell) -> None:
    # Given the simulator and a private Redis, when the README's marked blocks run in order,
    # then each exits 0 and prints what the README says it prints.
    blocks = [b for b in sh_blocks(README.read_text(encoding="utf-8")) if b.skip is None]
    checked = set()
    for block in blocks:
        status, output = shell.run(block)
        assert status == 0, f"README.md:{block.line}: exit {status}\n{block.body}\n{output}"
        for command, lines in EXPECTED.items():
            if command in block.body:
                checked.add(command)
                for line in lines:
                    assert line in output, f"README.md:{block.line}: no {line!r} in\n{output}"
    assert checked == set(EXPECTED), f"README blocks no longer run {set(EXPECTED) - checked}"
