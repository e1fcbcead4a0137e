"""The handler chain end to end: real Redis, a local vendor API, a real SMTP server, and
``dispatcher`` processes. Each step must happen once in effect, through retries and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.steps import step_key
from support import dispatcher_env, wait_until

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


def member(email: str | None, *roles: str) -> dict[str, Any]:
    return {"remote_id": email, "email": email, "first_name": "M", "last_name": None,
            "hiring_team_roles": list(roles)}  # fmt: skip


TEAMS = [
    [member("rita@example.com", "RECRUITER"), member("hank@example.com", "HIRING_MANAGER")],
    [member("rita@example.com", "RECRUITER"), member("ivy@example.com", "INTERVIEWER")],
    [member("RITA@example.com", "RECRUITER", "HIRING_MANAGER"), member(None, "RECRUITER"),
     member("zed@example.com", "HIRING_MANAGER")],
]  # fmt: skip
EXPECTED_MAIL = {  # (order index, recipient)
    (0, "rita@example.com"), (0, "hank@example.com"), (1, "rita@example.com"),
    (2, "rita@example.com"), (2, "zed@example.com"),
}  # fmt: skip


@pytest.fixture
def sim() -> Simulator:
    simulator = Simulator(["greenhouse:E2Echain0000000000000"], 0, closed=0, seed=3)
    integration = simulator.integration_ids[0]
    for index, team in enumerate(TEAMS):
        simulator.add_order(
            integration,
            id=f"ORDER{index}",
            job={"remote_id": f"j{index}", "name": f"Job {index}", "job_code": None,
                 "description": None, "location": None, "hiring_team": team},
        )  # fmt: skip
    return simulator


class Stack:
    """The processes and servers of one end-to-end run."""

    def __init__(self, sim_url: str, sim: Simulator, redis_url: str, **env: str) -> None:
        self.sim = sim
        self.redis = Redis.from_url(redis_url)
        self.env = dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=sim_url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
            DISPATCHER_HANDLERS="provision_http,notify_email",
            DISPATCHER_RETRY_BACKOFF="0",
            NOTIFY_FROM="Acme Tests <tests@acme.example>",
            PROVISION_TIMEOUT="1",
            **env,
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "dispatcher", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so the work horses can be killed with their worker
        )

    @property
    def queue(self) -> Queue:
        return Queue(QUEUE, connection=self.redis)

    def orders(self) -> list[dict[str, Any]]:
        return self.sim.orders(self.sim.integration_ids[0], status="OPEN")


def mail_received(mailbox: Mailbox) -> list[tuple[int, str]]:
    return sorted(
        (int(str(message["X-Kombo-Order-Id"]).removeprefix("ORDER")), rcpt.lower())
        for rcpts, message in mailbox.messages
        for rcpt in rcpts
    )


def provisioned_keys(sim: Simulator) -> set[str]:
    integration = sim.integration_ids[0]
    return {step_key("dispatcher", integration, f"ORDER{i}", "provision_http") for i in range(3)}


def test_every_order_provisioned_once_and_every_eligible_member_mailed_once(
    sim: Simulator, vendor: VendorAPI, mailbox: Mailbox, redis: Redis, redis_url: str
) -> None:
    vendor.failures = [503, "timeout", 429]  # the first three calls fail, then retried
    with sim.serve() as server:
        stack = Stack(server.url, sim, redis_url, PROVISION_URL=vendor.url, SMTP_URL=mailbox.url)
        assert stack.run("poll", "--once").returncode == 0
        worker = stack.run("worker", "--burst")
        assert worker.returncode == 0, worker.stderr

    assert FinishedJobRegistry(queue=stack.queue).count == 3
    assert FailedJobRegistry(queue=stack.queue).count == 0
    calls = vendor.calls_per_key()
    assert set(calls) == provisioned_keys(sim)  # one stable key per order
    assert sum(calls.values()) == 3 + 3  # the three failed attempts were repeated, no more
    assert mail_received(mailbox) == sorted(EXPECTED_MAIL)
    assert len(mailbox.message_ids()) == len(EXPECTED_MAIL)
    # The link in each mail is the one provisioning returned for that order.
    for _, message in mailbox.messages:
        order_id = str(message["X-Kombo-Order-Id"])
        key = step_key("dispatcher", sim.integration_ids[0], order_id, "provision_http")
        assert f"https://tests.example/t/{key}" in message.get_body(("plain",)).get_content()
    # Steps are recorded with their outputs, and counted.
    steps = redis.hgetall(f"dispatcher:steps:{sim.integration_ids[0]}:ORDER0")
    assert set(steps) == {b"_attempts", b"provision_http", b"notify_email"}
    assert json.loads(steps[b"notify_email"])["output"] == {
        "recipients": 2,
        "sent": 2,
        "refused": 0,
        "invalid": 0,
    }
    stats = redis.hgetall("dispatcher:step-stats")
    assert stats[b"provision_http:completed"] == b"3"
    assert stats[b"provision_http:failed"] == b"3"
    assert stats[b"notify_email:completed"] == b"3"
    assert 0 < redis.ttl(f"dispatcher:steps:{sim.integration_ids[0]}:ORDER0") <= 7 * 24 * 3600


@pytest.mark.slow
def test_a_worker_killed_between_provisioning_and_mail_repeats_neither(
    sim: Simulator, vendor: VendorAPI, mailbox: Mailbox, redis: Redis, redis_url: str
) -> None:
    integration = sim.integration_ids[0]
    mailbox.hold.set()  # SMTP stalls at RCPT: the worker is caught inside notify_email
    with sim.serve() as server:
        stack = Stack(server.url, sim, redis_url, PROVISION_URL=vendor.url, SMTP_URL=mailbox.url)
        assert stack.run("poll", "--once").returncode == 0
        worker = stack.start("worker")
        steps_key = f"dispatcher:steps:{integration}:ORDER0"
        wait_until(lambda: redis.hexists(steps_key, "provision_http"), what="provisioning")
        assert mailbox.stalled.wait(30), "the worker never reached SMTP"
        assert not redis.hexists(steps_key, "notify_email")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        mailbox.hold.clear()
        assert mailbox.messages == []

        # RQ's own recovery of an abandoned job (what its maintenance pass does once the
        # dead worker's heartbeat expires), brought forward in time.
        started = StartedJobRegistry(queue=stack.queue)
        assert started.count == 1
        started.cleanup(timestamp=time.time() + 3600)

        again = stack.run("worker", "--burst")
        assert again.returncode == 0, again.stderr

    assert FinishedJobRegistry(queue=stack.queue).count == 3
    assert vendor.calls_per_key() == {key: 1 for key in provisioned_keys(sim)}
    assert mail_received(mailbox) == sorted(EXPECTED_MAIL)


@pytest.mark.slow
def test_a_permanent_failure_is_not_retried_and_retry_finishes_it_later(
    sim: Simulator, vendor: VendorAPI, mailbox: Mailbox, redis: Redis, redis_url: str
) -> None:
    vendor.failures = [400]
    with sim.serve() as server:
        stack = Stack(server.url, sim, redis_url, PROVISION_URL=vendor.url, SMTP_URL=mailbox.url)
        stack.run("poll", "--once")
        assert stack.run("worker", "--burst").returncode == 0
        failed = FailedJobRegistry(queue=stack.queue)
        [job_id] = failed.get_job_ids()
        job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
        assert job.retries_left == 0
        assert len(vendor.calls) == 3  # no retry of the permanent failure
        result = job.latest_result()
        assert result is not None
        last_line = (result.exc_string or "").strip().splitlines()[-1]
        assert "handler provision_http failed on order ORDER0" in last_line
        assert "vendor API answered HTTP 400: vendor says no (400)" in last_line

        result = stack.run("retry", "--all-failed")
        assert result.returncode == 0, result.stderr
        assert f"re-queued {job_id} (order ORDER0" in result.stdout
        assert stack.run("worker", "--burst").returncode == 0

    assert FailedJobRegistry(queue=stack.queue).count == 0
    assert FinishedJobRegistry(queue=stack.queue).count == 3
    assert mail_received(mailbox) == sorted(EXPECTED_MAIL)


@pytest.mark.slow
def test_a_step_that_keeps_failing_lands_in_failed_and_completed_steps_are_skipped_on_retry(
    sim: Simulator, vendor: VendorAPI, mailbox: Mailbox, redis: Redis, redis_url: str
) -> None:
    with sim.serve() as server:
        stack = Stack(
            server.url, sim, redis_url, PROVISION_URL=vendor.url,
            SMTP_URL="smtp://127.0.0.1:1", DISPATCHER_MAX_RETRIES="2",
        )  # fmt: skip
        stack.run("poll", "--once")
        assert stack.run("worker", "--burst").returncode == 0
        failed = FailedJobRegistry(queue=stack.queue)
        assert failed.count == 3  # SMTP down: retried twice each, then failed
        assert len(vendor.calls) == 3  # provisioning ran once per order, not per attempt
        stats = redis.hgetall("dispatcher:step-stats")
        assert stats[b"notify_email:failed"] == b"9"

        # SMTP is back: the operator retries; provisioning is not repeated.
        stack.env["SMTP_URL"] = mailbox.url
        assert stack.run("retry", "--all-failed").returncode == 0
        assert stack.run("worker", "--burst").returncode == 0
    assert FinishedJobRegistry(queue=stack.queue).count == 3
    assert len(vendor.calls) == 3
    assert mail_received(mailbox) == sorted(EXPECTED_MAIL)


def test_retry_names_jobs_that_are_not_failed(redis: Redis, redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "retry", "order-nope"],
        env=dispatcher_env(redis_url), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "dispatcher: error: job order-nope is not in the failed registry"
    )
