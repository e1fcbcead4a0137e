"""Crash safety of threaded workers: a SIGKILLed process with N jobs in flight loses none of
them; SIGTERM takes no new job, lets those in flight finish up to a timeout, then requeues
the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from dispatcher.worker.base import RECOVERY_BOUND
from support import dispatch_orders, dispatcher_env, kill_tree

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"
SCRIPT = str(Path(__file__).resolve().parent / "_threaded_jobs.py")
PREFIX = "t17"


def start_worker(
    redis_url: str, threads: int, *, burst: bool = False, **env: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, SCRIPT],
        env=dispatcher_env(
            redis_url,
            DISPATCHER_WORKER_THREADS=str(threads),
            TEST_PREFIX=PREFIX,
            TEST_BURST="1" if burst else "0",
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
            **env,
        ),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc``; a non-zero exit fails the test with what it printed."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")
    return proc.returncode


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def runs(redis: Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(f"{PREFIX}:{key}").items()}


def one_key_per_order(redis: Redis, ids: list[str]) -> None:
    """Every run of a step on one order carried the same idempotency key."""
    pairs = [m.decode().split("=") for m in redis.smembers(f"{PREFIX}:keys")]
    assert sorted(order for order, _ in pairs) == sorted(ids)


@pytest.mark.slow
def test_a_killed_threaded_worker_loses_none_of_its_n_jobs_in_flight(
    redis: Redis, redis_url: str
) -> None:
    # Given a worker with 10 threads holding 10 jobs, and 5 more orders queued
    ids = dispatch_orders(redis, 15, seed=17)
    doomed = start_worker(redis_url, 10)
    started = StartedJobRegistry(queue=Queue(QUEUE, connection=redis))
    wait_until(lambda: len(runs(redis, "runs")) == 10, 30, "10 jobs in flight")
    assert started.count == 10
    # When the process is SIGKILLed
    kill_tree(doomed.pid)
    doomed.communicate()
    killed_at = time.monotonic()
    redis.set(f"{PREFIX}:release", 1)
    survivor = start_worker(redis_url, 10)
    finished = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    try:
        wait_until(lambda: finished.count == 15, RECOVERY_BOUND + 30, "15 jobs finished")
        recovered_in = time.monotonic() - killed_at
    finally:
        os.killpg(survivor.pid, signal.SIGTERM)
        survivor.communicate(timeout=30)
    # Then every job finished once: the 10 held ones ran their hold step again (the same
    # idempotency key), the effect after it ran once for each order
    assert recovered_in < RECOVERY_BOUND + 5, f"recovered in {recovered_in:.1f}s"
    assert runs(redis, "effects") == dict.fromkeys(ids, 1)
    assert sorted(runs(redis, "runs").values()) == [1] * 5 + [2] * 10
    one_key_per_order(redis, ids)
    assert started.count == 0
    print(f"10 jobs of a SIGKILLed worker recovered in {recovered_in:.1f}s")


def test_sigterm_finishes_the_jobs_in_flight_and_takes_no_new_one(
    redis: Redis, redis_url: str
) -> None:
    # Given a worker with 4 threads holding 4 jobs, and 4 more orders queued
    ids = dispatch_orders(redis, 8, seed=17)
    worker = start_worker(redis_url, 4, DISPATCHER_WORKER_SHUTDOWN_TIMEOUT="20")
    wait_until(lambda: len(runs(redis, "runs")) == 4, 30, "4 jobs in flight")
    # When it is told to stop, then the held jobs are released
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert worker.poll() is None, "it waits for the jobs in flight"
    redis.set(f"{PREFIX}:release", 1)
    assert exit_code(worker, 20) == 0
    # Then the 4 finished, the other 4 were not taken
    finished = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    assert finished.count == 4
    assert Queue(QUEUE, connection=redis).count == 4
    assert len(runs(redis, "effects")) == 4
    assert StartedJobRegistry(queue=Queue(QUEUE, connection=redis)).count == 0
    assert sorted(runs(redis, "runs")) == sorted(runs(redis, "effects"))
    assert set(runs(redis, "runs")) < set(ids)


def test_sigterm_requeues_the_jobs_still_in_flight_after_the_timeout(
    redis: Redis, redis_url: str
) -> None:
    # Given a worker with 4 threads holding 4 jobs that will not finish, 2 more queued
    ids = dispatch_orders(redis, 6, seed=17)
    worker = start_worker(redis_url, 4, DISPATCHER_WORKER_SHUTDOWN_TIMEOUT="1")
    wait_until(lambda: len(runs(redis, "runs")) == 4, 30, "4 jobs in flight")
    queue = Queue(QUEUE, connection=redis)
    # When it is told to stop and the jobs are still held past the timeout
    os.killpg(worker.pid, signal.SIGTERM)
    assert exit_code(worker, 15) == 0
    # Then the 4 are back on the queue, none left started, none finished
    assert queue.count == 6
    assert StartedJobRegistry(queue=queue).count == 0
    assert FinishedJobRegistry(queue=queue).count == 0
    assert runs(redis, "effects") == {}
    # And a worker finishes all 6, each effect once
    redis.set(f"{PREFIX}:release", 1)
    again = start_worker(redis_url, 4, burst=True)
    assert exit_code(again, 30) == 0
    assert FinishedJobRegistry(queue=queue).count == 6
    assert runs(redis, "effects") == dict.fromkeys(ids, 1)
    one_key_per_order(redis, ids)
