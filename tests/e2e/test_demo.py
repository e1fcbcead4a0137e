from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import dispatcher_env


def _run_demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dispatcher demo`` as a user runs it. A demo still running after a minute is stopped
    with SIGABRT, so that faulthandler prints where each of its threads waits (a loaded CI
    machine once saw it stall after the first sweep)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "demo"],
        # An unreachable Redis URL proves the demo does not need a server.
        env={**dispatcher_env("redis://127.0.0.1:1/0"), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        out, err = process.communicate()
        raise AssertionError(f"the demo ran over a minute:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_demo_runs_the_whole_chain_without_redis_or_kombo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = _run_demo(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    out = result.stdout
    assert "sweep 1: 9 pages, 36 OPEN orders found, 36 enqueued" in out
    assert "worker: 36 orders handled, 0 failed; 36 tests provisioned" in out
    assert "sweep 2: 36 OPEN orders found, 0 enqueued" in out
    assert re.search(r"^total\s+36\s+36\s+36$", out, re.MULTILINE)
    emails = int(re.search(r"emails to hiring teams: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert emails > 0
    assert "Traceback" not in result.stderr
