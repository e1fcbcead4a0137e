"""A busy threaded worker's thread takes its next job in the round trip of its job's success
(dispatcher.worker.threaded: ThreadedWorker._next_take), and stops taking once the worker is
stopping."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from dispatcher import HandlerContext
from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.fair import FairFeed
from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import JOB_SERIALIZER, intermediate_key
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker
from support import count_main_thread_takes
from support import dispatch_orders as dispatch

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


def finished_jobs(redis: Redis) -> list[Job]:
    ids = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis)).get_job_ids()
    return [j for j in Job.fetch_many(ids, connection=redis, serializer=JOB_SERIALIZER) if j]


class Record:
    """A handler that remembers which thread ran which order."""

    name = "record"

    def __init__(self, wait: float = 0.05) -> None:
        self.wait = wait
        self.lock = threading.Lock()
        self.ran: list[tuple[str, int]] = []

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        time.sleep(self.wait)
        with self.lock:
            self.ran.append((order.id, threading.get_ident()))
        return {"ok": True}


def test_busy_threads_take_their_next_job_with_the_success_not_through_the_main_thread(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 12 orders and a worker with 2 threads, the main thread's takes counted
    ids = dispatch(redis, 12)
    takes = count_main_thread_takes(monkeypatch)
    handler = Record()
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2)
    # When it runs them
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    # Then each ran once, in the 2 threads; the main thread took the first two, and the threads
    # took the other ten (the main thread's last takes found the queue empty)
    assert sorted(order for order, _ in handler.ran) == sorted(ids)
    assert len(finished_jobs(redis)) == 12
    assert len({thread for _, thread in handler.ran}) == 2
    assert takes[0] == 2 and sum(takes) == 2, takes
    assert redis.llen(intermediate_key(QUEUE)) == 0


def test_a_stopping_worker_takes_no_next_job_and_leaves_the_rest_queued(
    redis: Redis, redis_url: str
) -> None:
    # Given 6 orders, a worker with 2 threads, and SIGTERM while its first jobs run
    dispatch(redis, 6)

    class StopFirst(Record):
        def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
            if not self.ran:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the main thread handles the signal meanwhile
            return super().handle(order, context)

    handler = StopFirst()
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2)
    # When it runs
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    # Then the two jobs in flight finished, and their threads took no other: the other 4
    # are where queued jobs wait (the worker queue or their integration's list), none in
    # RQ's intermediate list, none started
    assert len(handler.ran) == 2
    assert len(finished_jobs(redis)) == 2
    queue = Queue(QUEUE, connection=redis)
    waiting = queue.count + sum(FairFeed(redis, Keys("dispatcher"), QUEUE).waiting().values())
    assert waiting == 4
    assert redis.llen(intermediate_key(QUEUE)) == 0
    assert queue.started_job_registry.count == 0


def test_a_job_taken_with_a_success_runs_though_the_bookkeeping_after_it_raised(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 6 orders, 2 threads, and the worker's own bookkeeping after the first job raising
    # (the job's success and its thread's next take were sent before it)
    from dispatcher.worker.burst import BurstSummary

    ids = dispatch(redis, 6)
    count = BurstSummary.count
    raised: list[str] = []

    def flaky(self: BurstSummary, job: Any, *, refresh: bool = True) -> None:
        if not raised:
            raised.append(job.id)
            raise RuntimeError("bookkeeping lost")
        count(self, job, refresh=refresh)

    monkeypatch.setattr(BurstSummary, "count", flaky)
    handler = Record()
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2)
    # When it runs them
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    # Then the job its thread took with that success ran too: all 6 done, none left behind in
    # RQ's intermediate list
    assert raised
    assert sorted(order for order, _ in handler.ran) == sorted(ids)
    assert len(finished_jobs(redis)) == 6
    assert redis.llen(intermediate_key(QUEUE)) == 0
