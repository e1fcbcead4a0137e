"""Fair dispatch and the per-integration cap with real threaded workers on a real Redis: a
burst of one integration does not delay another's orders, and a capped integration never
has more orders running than its cap, across workers and through SIGKILLs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from dispatcher.kombo.models import Order, parse_order
from dispatcher.settings import load_settings
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.worker.base import RECOVERY_BOUND
from support import dispatcher_env, kill_tree, order_payload, queued_job_ids, wait_until

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"
SCRIPT = str(Path(__file__).resolve().parent / "_paced_jobs.py")
PREFIX = "fair"
BURST, OTHER = "greenhouse:BURST", "lever:OTHER"


def orders(prefix: str, count: int) -> list[Order]:
    return [parse_order(order_payload(f"{prefix}{i}")) for i in range(count)]


def ledger(redis: Redis, **env: str) -> Ledger:
    # The dispatching side reads the caps from the same settings as the workers.
    settings = load_settings(**{k: v for k, v in env.items()})
    return Ledger(
        redis, Queue(QUEUE, connection=redis), "dispatcher",
        job_options=JobOptions.from_settings(settings),
    )  # fmt: skip


def start_worker(
    redis_url: str, threads: int, seconds: float, **env: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, SCRIPT],
        env=dispatcher_env(
            redis_url,
            DISPATCHER_WORKER_THREADS=str(threads),
            TEST_PREFIX=PREFIX,
            TEST_SECONDS=str(seconds),
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
            **env,
        ),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def started(redis: Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in redis.hgetall(f"{PREFIX}:started").items()}


def done(redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(f"{PREFIX}:done").items()}


def seen_running(redis: Redis, integration: str) -> list[int]:
    return [int(n) for n in redis.lrange(f"{PREFIX}:seen:{integration}", 0, -1)]


def stop(*workers: subprocess.Popen[bytes]) -> None:
    for worker in workers:
        kill_tree(worker.pid)
        worker.communicate(timeout=30)


def test_a_burst_of_one_integration_does_not_delay_another(redis: Redis, redis_url: str) -> None:
    seconds, threads = 0.3, 4
    worker = start_worker(redis_url, threads, seconds)
    try:
        ledger(redis).dispatch(BURST, orders("b", 400))
        wait_until(lambda: len(started(redis)) >= 2 * threads, 60, "the burst to be running")
        dispatched_at = time.time()
        ledger(redis).dispatch(OTHER, orders("o", 1))
        wait_until(lambda: "o0" in started(redis), 60, "the other integration's order to start")
        waited = started(redis)["o0"] - dispatched_at
        backlog = len(queued_job_ids(redis))
    finally:
        stop(worker)
    # On one queue it would start after the ~390 burst orders queued before it: about 29 s.
    # Fair, it waits behind the queue's window (16 jobs: 16 / 4 threads x 0.3 s = 1.2 s) and
    # one turn; the bound leaves room for a loaded machine.
    assert waited < 8.0, f"the other integration's order waited {waited:.1f}s"
    assert backlog > 300, "the burst was not still queued: the test proved nothing"


def test_a_capped_integration_never_exceeds_its_cap_nor_blocks_others(
    redis: Redis, redis_url: str
) -> None:
    env = {"DISPATCHER_MAX_IN_FLIGHT_OVERRIDES": f"{BURST}=2"}
    seconds = 0.3
    workers = [start_worker(redis_url, 4, seconds, **env) for _ in range(2)]
    try:
        led = ledger(redis, **env)
        led.dispatch(BURST, orders("b", 12))
        led.dispatch(OTHER, orders("o", 12))
        wait_until(lambda: len(done(redis)) == 24, 120, "every order to be done")
    finally:
        stop(*workers)
    capped, free = seen_running(redis, BURST), seen_running(redis, OTHER)
    assert max(capped) == 2, f"the capped integration ran {max(capped)} at once"
    assert max(free) > 2, "the uncapped integration was held to the cap too"
    # The other integration was not held behind the capped one's queue.
    first = started(redis)
    assert max(first[f"o{i}"] for i in range(12)) < max(first[f"b{i}"] for i in range(12))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_cap_holds_through_sigkills_and_nothing_is_lost(redis: Redis, redis_url: str) -> None:
    env = {"DISPATCHER_MAX_IN_FLIGHT_OVERRIDES": f"{BURST}=2"}
    seconds = 0.5
    workers = [start_worker(redis_url, 4, seconds, **env) for _ in range(2)]
    try:
        led = ledger(redis, **env)
        led.dispatch(BURST, orders("b", 30))
        led.dispatch(OTHER, orders("o", 10))
        for round_ in range(3):
            # Kill a worker while the capped integration's orders run in it.
            goal = 4 * (round_ + 1)
            wait_until(lambda goal=goal: len(done(redis)) >= goal, 180, "progress")
            victim = workers.pop(0)
            stop(victim)
            workers.append(start_worker(redis_url, 4, seconds, **env))
        wait_until(
            lambda: len(done(redis)) == 40, 8 * RECOVERY_BOUND + 120, "every order to be done"
        )
    finally:
        stop(*workers)
    capped = seen_running(redis, BURST)
    assert max(capped) <= 2, f"the capped integration ran {max(capped)} at once"
    assert max(capped) == 2
    assert sorted(done(redis)) == sorted(
        [f"b{i}" for i in range(30)] + [f"o{i}" for i in range(10)]
    )


def test_a_pool_of_workers_feeds_the_queue_as_it_takes(redis: Redis, redis_url: str) -> None:
    # RQ's worker pool (--processes N) builds its workers with its own queue class; they must
    # still top the worker queue up from the integrations' lists after each job they take.
    ledger(redis).dispatch(BURST, orders("b", 60))
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "worker", "--burst", "--processes", "2"],
        env=dispatcher_env(redis_url, DISPATCHER_FORK_PER_JOB="false"),
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert queued_job_ids(redis) == []
    assert FinishedJobRegistry(QUEUE, connection=redis).count == 60
