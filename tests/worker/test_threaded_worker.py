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
from rq.registry import (
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from dispatcher import HandlerContext, PermanentFailure
from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker
from support import dispatch_orders as dispatch

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


def finished_jobs(redis: Redis) -> list[Job]:
    registry = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    return [
        j
        for j in Job.fetch_many(registry.get_job_ids(), connection=redis, serializer=JOB_SERIALIZER)
        if j
    ]


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


def test_rq_sees_every_job_in_flight_with_a_fresh_heartbeat(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one-second heartbeats and 5 jobs of 2.5 s in a worker with 5 threads
    import dispatcher.worker.base

    monkeypatch.setattr(dispatcher.worker.base, "HEARTBEAT_INTERVAL", 1)
    dispatch(redis, 5)
    queue = Queue(QUEUE, connection=redis)
    seen: list[tuple[float, list[float], int]] = []

    class Watch:
        name = "watch"

        def handle(self, order: Order, context: HandlerContext) -> None:
            # At least 2.5 s, and until the heartbeats have moved the expiries on (a loaded
            # machine may delay a beat past a fixed window; 15 s at most).
            started = time.monotonic()
            while time.monotonic() - started < 15:
                scores = [
                    s
                    for _, s in redis.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
                ]
                workers = Worker.all(connection=redis)
                running = sum(len(w.get_current_executions(refresh=True)) for w in workers)
                seen.append((time.time(), scores, running))
                so_far = [s for _, scores, _ in seen for s in scores]
                if time.monotonic() - started >= 2.5 and max(so_far) - min(so_far) >= 1.5:
                    break
                time.sleep(0.25)

    settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=5)
    # When it runs them
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [Watch()]))  # type: ignore[list-item]
    # Then while they ran, RQ's started registry and the worker's executions (what `rq info`
    # and rq-dashboard read) listed all 5, and their expiries moved on, never far ahead
    assert len(finished_jobs(redis)) == 5
    assert max(len(scores) for _, scores, _ in seen) == 5
    assert max(running for _, _, running in seen) == 5
    all_scores = [s for _, scores, _ in seen for s in scores]
    assert max(all_scores) - min(all_scores) >= 1.5
    assert all(s - now <= 1 + 10 + 1 for now, scores, _ in seen for s in scores)


def test_step_timeouts_retries_and_permanent_failures_hold_per_thread(
    redis: Redis, redis_url: str
) -> None:
    # Given 6 orders: two hang, two fail for good, two pass, in a worker with 6 threads
    ids = dispatch(redis, 6)
    hang, fail = set(ids[:2]), set(ids[2:4])

    class Mixed:
        name = "mixed"

        def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
            if order.id in hang:
                for _ in range(100):  # Python code: the deadline interrupts it
                    time.sleep(0.05)
            if order.id in fail:
                raise PermanentFailure(f"no package for {order.id}")
            return {"ok": order.id}

    settings = Settings(
        REDIS_URL=redis_url,
        DISPATCHER_WORKER_THREADS=6,
        DISPATCHER_HANDLER_TIMEOUT=0.5,
    )
    started = time.monotonic()
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [Mixed()]))  # type: ignore[list-item]
    # Then the passing ones finished; the hung ones wait for their retry, the refused ones
    # failed for good, each with its own reason
    assert time.monotonic() - started < 4
    assert sorted(j.return_value()["steps"]["mixed"]["ok"] for j in finished_jobs(redis)) == sorted(
        ids[4:]
    )
    queue = Queue(QUEUE, connection=redis)
    failed = FailedJobRegistry(queue=queue).get_job_ids()
    retrying = ScheduledJobRegistry(queue=queue).get_job_ids()
    reasons = {}
    for job in Job.fetch_many(failed + retrying, connection=redis, serializer=JOB_SERIALIZER):
        assert job is not None
        reasons[job.meta["order_id"]] = (job.id in failed, job.meta["last_failure"]["reason"])
    assert set(reasons) == hang | fail
    for order_id in hang:
        assert reasons[order_id] == (False, "timed out after 0.5s")
    for order_id in fail:
        assert reasons[order_id] == (True, f"no package for {order_id}")


def test_a_threaded_job_timeout_is_one_line_naming_the_setting(
    redis: Redis, redis_url: str
) -> None:
    # Issue 23: the failure read as a bare "JobTimeoutException".
    sim = Simulator(1, 1, closed=0, seed=9)
    integration_id = sim.integration_ids[0]
    batch = [Order.model_validate(o) for o in sim.orders(integration_id)]
    options = JobOptions(timeout=1, result_ttl=600, failure_ttl=600)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher", job_options=options)
    ledger.dispatch(integration_id, batch)

    class Slow:
        name = "slow"

        def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
            for _ in range(200):  # Python code: the job's deadline interrupts it
                time.sleep(0.05)
            return {}

    settings = Settings(
        REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=2, DISPATCHER_HANDLER_TIMEOUT=30
    )
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [Slow()]))  # type: ignore[list-item]
    job = Job.fetch(
        ledger.job_id(integration_id, batch[0].id), connection=redis, serializer=JOB_SERIALIZER
    )
    assert job.meta["last_failure"] == {
        "handler": "slow",
        "reason": "job timed out: the chain ran past DISPATCHER_JOB_TIMEOUT (1s)",
        "at": job.meta["last_failure"]["at"],
    }


def test_a_failure_raised_after_the_success_was_recorded_leaves_the_job_done(
    redis: Redis,
) -> None:
    # The threaded worker records a job's success in the round trip of its last step's
    # record; should the job's deadline fire in the instant after, RQ's failure handling
    # must not turn the finished job into a failed (or retried) one.
    from rq.utils import now

    from dispatcher.store import rq_jobs
    from dispatcher.worker.threaded import threaded_worker_class

    dispatch(redis, 1)
    queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
    job_id = redis.lpop(f"rq:queue:{QUEUE}")  # as a worker's pop takes it
    assert job_id is not None
    job = Job.fetch(job_id.decode(), connection=redis, serializer=JOB_SERIALIZER)
    worker = threaded_worker_class(2, 5.0)([queue], connection=redis, serializer=JOB_SERIALIZER)
    worker.register_birth()
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=False)
    pending = rq_jobs.PendingFinish(job, execution, worker.key, 500)
    redis.hset("steps-of-the-order", "provision", "{}")
    redis.script_load(rq_jobs._FINISH.source)
    commands = pending.after_step("steps-of-the-order", "provision", {})
    pending.settle([redis.execute_command(*command) for command in commands])
    job._dispatcher_finish = pending  # type: ignore[attr-defined]
    job.ended_at = now()
    worker.handle_job_failure(
        job, queue, started_job_registry=job.started_job_registry,
        exc_string="JobTimeoutException", execution=execution,
    )  # fmt: skip
    assert job.get_status(refresh=True) == "finished"
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == []
    assert FinishedJobRegistry(queue=queue).get_job_ids() == [job.id]
