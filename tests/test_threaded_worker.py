"""`--threads N` (DISPATCHER_WORKER_THREADS): one worker process runs up to N jobs at once,
each a real RQ execution with its heartbeat, step records, timeouts and retries."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from dispatcher.kombo.models import Order
from dispatcher.plugins import HandlerContext, PermanentFailure
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.testing.simulator import Simulator
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.worker import run_worker

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


def dispatch(redis: Redis, orders: int, seed: int = 5) -> list[str]:
    sim = Simulator(1, orders, closed=0, seed=seed)
    integration_id = sim.integration_ids[0]
    batch = [Order.model_validate(o) for o in sim.orders(integration_id)]
    Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher").dispatch(integration_id, batch)
    return [o.id for o in batch]


def finished_jobs(redis: Redis) -> list[Job]:
    registry = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    return [j for j in Job.fetch_many(registry.get_job_ids(), connection=redis) if j]


class Concurrency:
    """A handler that waits, and remembers how many ran at once and in which threads."""

    name = "conc"

    def __init__(self, wait: float = 0.3) -> None:
        self.wait = wait
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.threads: set[int] = set()

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads.add(threading.get_ident())
        time.sleep(self.wait)
        with self.lock:
            self.now -= 1
        return {"order": order.id, "attempt": context.attempt}


def test_one_process_runs_n_jobs_at_once_each_through_the_whole_chain(
    redis: Redis, redis_url: str
) -> None:
    # Given 24 orders and a worker with 8 threads
    ids = dispatch(redis, 24)
    handler = Concurrency(0.3)
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=8)
    started = time.monotonic()
    # When it runs them
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    took = time.monotonic() - started
    # Then all finished, 8 at a time, each once, with its step recorded
    jobs = finished_jobs(redis)
    assert sorted(j.return_value()["steps"]["conc"]["order"] for j in jobs) == sorted(ids)
    assert handler.peak == 8
    assert len(handler.threads) == 8
    assert took < 24 * 0.3 / 2, f"took {took:.1f}s: not concurrent"
    assert redis.zcard(StartedJobRegistry(queue=Queue(QUEUE, connection=redis)).key) == 0
    assert not redis.keys("rq:worker:*:executions")
