"""A third-party handler package, installed for real, is discovered and run by the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from support import dispatcher_env

# A real pip install of examples/dispatcher-hello: its own budget is 300 s, past
# pytest-timeout's 120 s default on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dispatcher-hello"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # Into a private directory, not the test environment: the suite must not change itself.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(EXAMPLE)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


@pytest.mark.redis
def test_the_worker_discovers_and_runs_an_installed_plugin(
    installed: Path, tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    sim = Simulator(2, 5, seed=21)
    outbox = tmp_path / "outbox.jsonl"
    with sim.serve() as server:
        env = dispatcher_env(
            redis_url,
            PYTHONPATH=str(installed),
            KOMBO_BASE_URL=server.url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
            DISPATCHER_HANDLERS="log,hello",
            HELLO_OUTBOX=str(outbox),
        )

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "dispatcher", *args],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        listing = run("handlers")
        assert listing.returncode == 0, listing.stderr
        hello = next(line for line in listing.stdout.splitlines() if line.startswith("hello "))
        assert hello.split()[1:] == ["2", "dispatcher-hello", "1.0.0"]

        assert run("poll", "--once").returncode == 0
        worker = run("worker", "--burst")
        assert worker.returncode == 0, worker.stderr

    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert sorted(line["order"] for line in lines) == sorted(
        o["id"] for i in sim.integration_ids for o in sim.orders(i, status="OPEN")
    )
    assert all(line["after"] == ["log"] for line in lines)
    assert len({line["key"] for line in lines}) == len(lines)
