"""DISPATCHER_FORK_PER_JOB: RQ's work horse per job (the default), or jobs in the worker's
own process, with the job's heartbeat kept by a thread."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry

import dispatcher.worker.base
from dispatcher.handler import HandlerContext
from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator
from dispatcher.worker.base import HEARTBEAT_GRACE
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


class PidHandler:
    name = "pid"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return {"pid": os.getpid()}


def dispatch(redis: Redis, orders: int) -> None:
    sim = Simulator(1, orders, closed=0, seed=5)
    integration_id = sim.integration_ids[0]
    batch = [Order.model_validate(o) for o in sim.orders(integration_id)]
    Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher").dispatch(integration_id, batch)


def finished_outputs(redis: Redis) -> list[dict[str, Any]]:
    registry = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    jobs = Job.fetch_many(registry.get_job_ids(), connection=redis, serializer=JOB_SERIALIZER)
    return [job.return_value()["steps"] for job in jobs if job is not None]


@pytest.mark.parametrize("fork", [True, False])
def test_jobs_run_in_a_work_horse_or_in_the_worker_itself(
    fork: bool, redis: Redis, redis_url: str
) -> None:
    dispatch(redis, 3)
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_FORK_PER_JOB=fork)
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [PidHandler()]))
    pids = [steps["pid"]["pid"] for steps in finished_outputs(redis)]
    assert len(pids) == 3
    if fork:
        assert os.getpid() not in pids
        assert len(set(pids)) == 3  # a fresh horse for every job
    else:
        assert set(pids) == {os.getpid()}


def test_the_heartbeat_of_a_job_in_the_worker_process_is_kept_short_and_fresh(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one-second heartbeats and a three-second job run without a work horse
    monkeypatch.setattr(dispatcher.worker.base, "HEARTBEAT_INTERVAL", 1)
    started = StartedJobRegistry(queue=Queue(QUEUE, connection=redis))
    expiries: list[tuple[float, float]] = []

    class SlowHandler:
        name = "slow"

        def handle(self, order: Order, context: HandlerContext) -> None:
            for _ in range(12):
                scores = redis.zrange(started.key, 0, -1, withscores=True)
                expiries.extend((time.time(), score) for _, score in scores)
                time.sleep(0.25)

    dispatch(redis, 1)
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_FORK_PER_JOB=False)
    # When a worker runs it
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [SlowHandler()]))  # type: ignore[list-item]
    # Then the job's expiry in the started registry moved on while it ran (a thread beat)
    # and stayed within interval + grace of now: a dead worker's job is found quickly.
    assert len(finished_outputs(redis)) == 1
    assert expiries
    assert max(score for _, score in expiries) - min(score for _, score in expiries) >= 1.5
    assert all(score - now <= 1 + HEARTBEAT_GRACE + 1 for now, score in expiries)
