"""Smoke runs of every benchmark in bench/ at tiny sizes, so that the suite cannot rot.

The figures of such runs mean nothing; what is checked is that each script still runs
against a private redis-server and the simulator, measures its contender and its baseline,
and reports rows that bench/run_all.py can tabulate. Each script runs in its own process, as
run_all runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [pytest.mark.bench, pytest.mark.slow, pytest.mark.redis]


def smoke_sizes() -> dict[str, list[str]]:
    """The tiny sizes of every benchmark, as `bench/run_all.py --smoke` runs them."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--smoke-sizes"],
        capture_output=True,
        text=True,
        check=True,
    )
    sizes: dict[str, list[str]] = json.loads(result.stdout)
    return sizes


SMOKE = smoke_sizes()


@pytest.fixture(autouse=True)
def _needs_redis_server() -> None:
    if shutil.which("redis-server") is None:
        reason = "the benchmarks start their own redis-server: not installed"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)


def run_script(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
    )


def test_every_benchmark_script_has_a_smoke_size() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    # run_all runs the others; webhook_latency.py and fleet_scale.py have smoke tests of
    # their own (test_webhook_e2e.py, below).
    assert scripts - {"run_all.py", "webhook_latency.py", "fleet_scale.py"} == set(SMOKE)


def test_fleet_scale_runs_at_tiny_sizes() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "fleet_scale.py"), "--integrations", "6", "--orders", "20",
         "--pollers", "2", "--latency", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\| 2 \| 120 \| 120 \| 120 \| 0 \| 0 \|", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_at_tiny_sizes_and_reports_rows(script: str, tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    result = run_script(script, *SMOKE[script], "--json", str(rows_file))
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(rows_file.read_text())
    assert rows
    for row in rows:
        assert row["bench"] == script.removesuffix(".py")
        assert row["value"] > 0, row
        assert row["target"], row
        if row["target"] != "reported":
            assert row["met"] in (True, False), row
        if row["baseline"]:
            assert row["baseline_value"] > 0, row
            assert row["ratio"] > 0, row
        # Readable output too: every row's measure and its figure are printed.
        assert f"[{row['bench']}] {row['measure']}" in result.stdout


def test_dispatch_runs_dramatiq_beside_threads_or_says_it_skipped(tmp_path: Path) -> None:
    # dramatiq comes with the optional `bench` extra: CI (`.[test]`) checks the skip, a
    # developer with `.[test,bench]` the run.
    rows_file = tmp_path / "rows.json"
    result = run_script(
        "dispatch.py",
        *SMOKE["dispatch.py"],
        "--modes",
        "threads,dramatiq",
        "--json",
        str(rows_file),
    )
    assert result.returncode == 0, result.stderr
    measures = [row["measure"] for row in json.loads(rows_file.read_text())]
    beside = [m for m in measures if "dramatiq" in m]
    if importlib.util.find_spec("dramatiq") is None:
        assert "bench: dramatiq mode skipped: dramatiq is not installed" in result.stdout
        assert beside == []
    else:
        assert beside and beside[0].endswith("--threads 4`, beside dramatiq"), measures
        assert re.search(
            r"^    baseline \(dramatiq [\d.]+ `--processes 2 --threads 4`", result.stdout, re.M
        )


def test_run_all_writes_a_markdown_table_with_the_machine(tmp_path: Path) -> None:
    output = tmp_path / "latest.md"
    result = run_script(
        "run_all.py", "--smoke", "--only", "seen_memory,webhook_latency", "--output", str(output)
    )
    assert result.returncode == 0, result.stderr
    table = output.read_text()
    assert table == result.stdout
    assert f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}" in table
    # The versions it ran with (issue 25: a dependency's release changed a figure before).
    assert re.search(
        r"redis-server [\d.]+, redis-py [\d.]+, hiredis [\d.]+, httpx [\d.]+, rq [\d.]+", table
    )
    assert "| benchmark | measure | dispatcher (median) | baseline (median) | ratio |" in table
    memory = next(line for line in table.splitlines() if line.startswith("| seen_memory |"))
    cells = [cell.strip() for cell in memory.strip("|").split("|")]
    assert cells[2].endswith("B/order") and cells[5] == "<= 100 B/order"
    assert cells[6] in ("yes", "**no**")
    webhook = next(line for line in table.splitlines() if line.startswith("| webhook_latency |"))
    assert "p99" in webhook


def test_run_all_fails_and_says_which_benchmark_broke(tmp_path: Path) -> None:
    # Given a benchmark that cannot run (its sizes are invalid)
    result = subprocess.run(
        [sys.executable, "-c", (
            "import sys; sys.argv = ['run_all.py', '--smoke', '--only', 'poller_rss',"
            f" '--output', {str(tmp_path / 'out.md')!r}];"
            f"sys.path.insert(0, {str(BENCH)!r});"
            "import run_all, dataclasses;"
            "run_all.BENCHES = tuple(dataclasses.replace(b, smoke=('--orders', '150',"
            " '--per-integration', '100')) for b in run_all.BENCHES);"
            "run_all.main()"
        )],
        capture_output=True, text=True, timeout=60, cwd=BENCH.parent,
    )  # fmt: skip
    # Then run_all exits 1 and its table names the failed benchmark
    assert result.returncode == 1
    assert "| poller_rss | FAILED |" in result.stdout
    assert "multiple of --per-integration" in result.stdout


def test_the_vendor_api_stops_quietly_with_requests_still_waiting() -> None:
    # The benchmarks close its stdin when done, with some POSTs still waiting on the delay:
    # asyncio printed each cancelled handler's traceback into the benchmark's output.
    with subprocess.Popen(
        [sys.executable, str(BENCH / "_vendor_server.py"), "--delay", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as server:  # fmt: skip
        assert server.stdout is not None and server.stdin is not None
        url = json.loads(server.stdout.readline())["url"]
        host, port = url.split("/")[2].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as waiting:
            waiting.sendall(b"POST /provision HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            time.sleep(0.3)  # the request is read and waits on the delay
            _, errors = server.communicate(timeout=30)  # closes stdin: the benchmark is done
    assert server.returncode == 0
    assert errors == b""
