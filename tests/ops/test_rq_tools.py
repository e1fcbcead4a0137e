"""RQ's own tools read the dispatcher's queues: `rq info` run for real against Redis."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from redis import Redis
from rq import Queue

from dispatcher.testing.sim import Simulator
from support.ops import TESTS, dispatcher, env_for, settings_for

pytestmark = pytest.mark.redis


def rq_info(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rq"), "info", "-u", redis_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return click.unstyle(result.stdout)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(["greenhouse:RqInfoOne", "lever:RqInfoTwo"], 5, seed=15)


@pytest.mark.slow
def test_rq_info_shows_the_dispatcher_queue_and_its_counts_after_a_sweep_and_a_worker(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    with sim.serve() as server:
        env = env_for(redis_url, settings, KOMBO_BASE_URL=server.url)
        assert dispatcher(["poll", "--once"], env).returncode == 0
    queue = settings.queue
    out = rq_info(redis_url)
    assert re.search(rf"^{queue}\s+\|█*\s+10, 0 executing, 0 finished, 0 failed$", out, re.M), out
    assert "1 queues, 10 jobs total" in out
    assert "0 workers, 1 queues" in out

    failing = sim.orders("lever:RqInfoTwo")[0]["id"]
    worker = subprocess.run(
        [sys.executable, str(TESTS / "_test_worker.py")],
        env={**env, "TEST_CHAIN": "flaky", "TEST_FAIL_ORDERS": failing},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    raw = rq_info(redis_url, "--raw", "--only-queues")
    assert raw.strip() == f"queue {queue} 0, 0 executing, 9 finished, 1 failed"


def test_rq_info_shows_a_busy_worker_on_the_dispatcher_queue(
    blocked_worker: dict[str, Any],
    redis_url: str,
) -> None:
    queue = blocked_worker["settings"].queue
    out = rq_info(redis_url, "--only-workers", "--raw")
    assert re.search(
        rf"^worker \S+ \(.+ {blocked_worker['proc'].pid}\) busy {queue}\. ", out, re.M
    ), out
    by_queue = rq_info(redis_url, "--only-workers", "--by-queue")
    assert re.search(rf"^{queue}:\s+\S+ \(busy\)$", by_queue, re.M), by_queue


def test_jobs_carry_readable_descriptions_for_rq_dashboard(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator
) -> None:
    """`rq info` shows counts only (RQ 3.0); rq-dashboard lists jobs by description."""
    settings = settings_for(redis_url, sim, namespace)
    with sim.serve() as server:
        assert (
            dispatcher(
                ["poll", "--once"], env_for(redis_url, settings, KOMBO_BASE_URL=server.url)
            ).returncode
            == 0
        )
    jobs = Queue(settings.queue, connection=redis).get_jobs()
    expected = {
        f"order {o['id']} integration {i} package {o['package_id']}"
        for i in sim.integration_ids
        for o in sim.orders(i, status="OPEN")
    }
    assert {job.description for job in jobs} == expected
