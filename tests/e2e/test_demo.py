from __future__ import annotations

import re
import subprocess
import sys
import time

from _support import dispatcher_env


def test_demo_runs_the_whole_chain_without_redis_or_kombo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "demo"],
        # An unreachable Redis URL proves the demo does not need a server.
        env=dispatcher_env("redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
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
