"""A threaded worker's scheduler (dispatcher.worker.scheduler): RQ's scheduler loop in a thread
of the worker, not a forked copy of it; it moves a job due for a retry back to the queue, and
SIGTERM stops it with the worker, its lock given back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.registry import FinishedJobRegistry
from test_threaded_crash import QUEUE, exit_code, runs, start_worker, wait_until

from support import dispatch_orders

pytestmark = pytest.mark.redis
LOCK = f"rq:scheduler-lock:{QUEUE}"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def test_the_scheduler_is_a_thread_that_moves_due_jobs_and_stops_with_the_worker(
    redis_url: str, redis: Redis
) -> None:
    [order] = dispatch_orders(redis, 1, seed=17)
    # The order's job, due in a second: as a failed attempt leaves it for its retry.
    job_id = redis.lpop(f"rq:queue:{QUEUE}")
    assert job_id is not None
    redis.zadd(f"rq:scheduled:{QUEUE}", {job_id: time.time() + 1})
    redis.hset(b"rq:job:" + job_id, "status", "scheduled")
    redis.set("t17:release", "1")  # the chain's hold step returns at once

    proc = start_worker(redis_url, 4)
    try:
        wait_until(lambda: redis.exists(LOCK), 30, "the scheduler's lock")
        finished = FinishedJobRegistry(QUEUE, connection=redis)
        wait_until(lambda: job_id.decode() in finished.get_job_ids(), 30, "the scheduled job")
        assert runs(redis, "effects") == {order: 1}
        # One process: the scheduler runs in it (RQ forks a copy of the worker for it).
        assert _children(proc.pid) == []
        assert redis.get(LOCK) is not None
    finally:
        os.kill(proc.pid, signal.SIGTERM)
    exit_code(proc, 30)
    assert not redis.exists(LOCK)  # given back: another worker's scheduler takes over at once
