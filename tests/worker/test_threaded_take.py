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
from dispatcher.store.lua import script
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


class TakesTwice(Record):
    """A handler whose first order, once the worker's main thread has stopped taking (its
    burst found the queue empty), dispatches ``more`` orders and leaves the server without
    the scripts that record a job's end, the take's alone loaded (a restart, a failover,
    another thread loading it first): the end of that first job takes two jobs (the round
    that met NOSCRIPT ran its take too). The others record when they ran."""

    def __init__(self, redis: Redis, more: int, main_done: threading.Event) -> None:
        super().__init__(wait=0.3)
        self.redis = redis
        self.more = more
        self.main_done = main_done
        self.later: list[str] = []
        self.spans: dict[str, tuple[float, float, int]] = {}
        self.in_hand: list[int] = []  # taken, not started: RQ's intermediate list

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        if not self.later:
            assert self.main_done.wait(30)
            self.later = dispatch(self.redis, self.more, seed=6)
            self.redis.script_flush()
            self.redis.script_load(script("fair_take").source)
            return {"ok": True}
        self.in_hand.append(self.redis.llen(intermediate_key(QUEUE)))
        started = time.monotonic()
        result = super().handle(order, context)
        self.spans[order.id] = (started, time.monotonic(), threading.get_ident())
        return result


def _main_thread_done(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the threaded worker's main thread waits for its threads (its burst is over)."""
    from dispatcher.worker.threaded_stop import GracefulStop

    done = threading.Event()
    drain = GracefulStop._drain

    def draining(self: Any, timeout: float | None) -> None:
        done.set()
        drain(self, timeout)

    monkeypatch.setattr(GracefulStop, "_drain", draining)
    return done


def test_jobs_a_repeated_take_brought_run_at_once_in_idle_threads(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker with 2 threads, one of them busy, whose job's end takes two jobs at
    # once (Redis had lost the scripts)
    dispatch(redis, 1)
    handler = TakesTwice(redis, 2, _main_thread_done(monkeypatch))
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2)
    # When it runs
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    # Then the two ran at the same time, each in a thread of its own (in one thread, one
    # after the other, the second started a whole job late), and each ran once
    assert sorted(handler.spans) == sorted(handler.later)
    spans = handler.spans.values()
    assert len({thread for _, _, thread in spans}) == 2
    assert max(start for start, _, _ in spans) < min(end for _, end, _ in spans)
    assert len(finished_jobs(redis)) == 3
    assert redis.llen(intermediate_key(QUEUE)) == 0


class HoldsOneThread(TakesTwice):
    """:class:`TakesTwice`, its very first order holding its thread until every later order
    has run: the worker's other thread is then the only one, and has no free thread to give
    the jobs it took to."""

    def __init__(self, redis: Redis, more: int) -> None:
        free = threading.Event()
        free.set()
        super().__init__(redis, more, free)
        self.holding = threading.Event()
        self.all_ran = threading.Event()

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        if not self.holding.is_set():
            self.holding.set()
            assert self.all_ran.wait(30)
            return {"ok": True}
        result = super().handle(order, context)
        if len(self.spans) == self.more:
            self.all_ran.set()
        return result


def test_a_thread_with_jobs_in_hand_takes_no_more_until_they_ran(
    redis: Redis, redis_url: str
) -> None:
    # Given a worker with 2 threads, one held by a long job, the other's job's end taking
    # two jobs at once of 10 more orders
    dispatch(redis, 2)
    handler = HoldsOneThread(redis, 10)
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2)
    # When it runs
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [handler]))  # type: ignore[list-item]
    # Then the job in its hand runs before it takes another: 1 waits behind the one running,
    # then none (each job's end takes the next). Had each job in hand taken one more, one
    # would have waited in hand until the queue ran dry, every job of the thread starting a
    # whole job late.
    assert handler.in_hand == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert sorted(handler.spans) == sorted(handler.later)
    assert len(finished_jobs(redis)) == 12
