"""Lost-job recovery: a job whose worker is SIGKILLed runs again, on another worker, within a
bounded time, without repeating its completed steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.base import RECOVERY_BOUND
from support import dispatcher_env, kill_tree

pytestmark = pytest.mark.redis


@pytest.mark.slow  # waits out RQ's recovery of the dead worker's job (~20 s)
def test_a_job_of_a_killed_worker_is_finished_by_another_within_60s(
    vendor: VendorAPI, mailbox: Mailbox, redis: Redis, redis_url: str
) -> None:
    assert RECOVERY_BOUND <= 60
    sim = Simulator(1, 0, closed=0, seed=41)
    team = [
        {"remote_id": "1", "email": "rita@example.com", "first_name": "R", "last_name": None,
         "hiring_team_roles": ["RECRUITER"]},
        {"remote_id": "2", "email": "hank@example.com", "first_name": "H", "last_name": None,
         "hiring_team_roles": ["HIRING_MANAGER"]},
    ]  # fmt: skip
    sim.add_order(
        sim.integration_ids[0],
        job={"remote_id": "j", "name": "J", "job_code": None, "description": None,
             "location": None, "hiring_team": team},
    )  # fmt: skip
    with sim.serve() as server:
        env = dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=server.url, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=sim.integration_ids[0],
            DISPATCHER_HANDLERS="provision_http,notify_email",
            PROVISION_URL=vendor.url, SMTP_URL=mailbox.url, NOTIFY_FROM="t@acme.example",
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "dispatcher", "poll", "--once"], env=env, check=True,
            capture_output=True, timeout=60,
        )  # fmt: skip
        mailbox.hold.set()  # the first worker gets stuck mailing
        doomed = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker"], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert mailbox.stalled.wait(30), "the first worker never reached SMTP"
        started = StartedJobRegistry(queue=Queue("dispatcher-orders", connection=redis))
        assert started.count == 1, "the first worker should be stuck in the job"
        kill_tree(doomed.pid)  # the worker and its work horse: the job dies with them
        doomed.wait()
        killed_at = time.monotonic()
        mailbox.hold.clear()
        survivor = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker"], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        finished = FinishedJobRegistry(queue=Queue("dispatcher-orders", connection=redis))
        try:
            while finished.count < 1 and time.monotonic() - killed_at < 75:
                time.sleep(0.2)
            recovered_in = time.monotonic() - killed_at
        finally:
            os.killpg(survivor.pid, signal.SIGTERM)
            survivor.wait(30)
    assert finished.count == 1
    assert recovered_in < 60, f"recovered in {recovered_in:.1f}s"
    assert len(vendor.calls) == 1  # provisioning was not repeated
    assert mailbox.by_recipient() == {"rita@example.com": 1, "hank@example.com": 1}
    print(f"recovered in {recovered_in:.1f}s")


def test_a_job_popped_by_a_dead_worker_but_never_started_is_put_back(redis: Redis) -> None:
    """Given a job a worker moved to RQ's intermediate list and died before starting, when
    live workers' maintenance passes see it there twice, STRANDED_AFTER apart, it is queued
    again (once), instead of waiting a minute for RQ's retry schedule."""
    from dispatcher.worker.classes import DispatcherWorker

    queue = Queue("dispatcher-orders", connection=redis)
    redis.hset("rq:job:order-stranded", mapping={"status": "queued", "origin": queue.name})
    redis.rpush(queue.intermediate_queue.key, "order-stranded")
    first, second = (DispatcherWorker([queue], connection=redis) for _ in range(2))
    assert first.requeue_stranded(queue) == 0  # first sighting only
    assert queue.count == 0
    redis.set(queue.intermediate_queue.get_first_seen_key("order-stranded"), time.time() - 11)
    assert first.requeue_stranded(queue) == 1
    assert second.requeue_stranded(queue) == 0
    assert queue.job_ids == ["order-stranded"]
    assert redis.llen(queue.intermediate_queue.key) == 0
