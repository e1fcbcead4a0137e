"""What a worker says and leaves (issue 14, items 6, 7 and 10): one log line per job
outcome, a summary when a burst ends, waiting for scheduled retries, and jobs that carry
their namespace. Real Redis, the dispatcher's workers, and real ``dispatcher`` / ``rq worker``
processes where the command line matters."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from dispatcher import HandlerContext, Order, RetryLater, Settings
from dispatcher.kombo.models import Order as OrderModel
from dispatcher.logs import configure_logging
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import JOB_FUNCTION, Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.worker.base import BurstSummary
from dispatcher.worker.classes import DispatcherSimpleWorker
from dispatcher.worker.jobs import Runtime, install_runtime
from dispatcher.worker.run import run_worker
from support import dispatcher_env, order_payload, wait_until

pytestmark = pytest.mark.redis
INTEGRATION = "lever:ops"
BIN = Path(sys.executable).parent


class Flaky:
    """Fails its first ``failures`` calls per order with ``error``, then succeeds."""

    def __init__(self, name: str = "flaky", failures: int = 0, error: Exception | None = None):
        self.name = name
        self.failures = failures
        self.error = error or RetryLater("vendor busy")
        self.calls: dict[str, int] = {}

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        self.calls[order.id] = self.calls.get(order.id, 0) + 1
        if self.calls[order.id] <= self.failures:
            raise self.error
        return {"ok": True}


def settings(redis_url: str, namespace: str = "ops", **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "DISPATCHER_NAMESPACE": namespace,
        "DISPATCHER_FORK_PER_JOB": False,
        "DISPATCHER_RETRY_BACKOFF": 0,
        "DISPATCHER_MAX_RETRIES": 2,
        **extra,
    }
    return Settings(**values)


def dispatch(redis: Redis, config: Settings, *ids: str) -> Ledger:
    ledger = Ledger(
        redis,
        Queue(config.queue, connection=redis),
        config.namespace,
        job_options=JobOptions.from_settings(config),
    )
    ledger.dispatch(INTEGRATION, [OrderModel.model_validate(order_payload(i)) for i in ids])
    return ledger


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    yield stream
    configure_logging("WARNING", "text")


def work(redis: Redis, config: Settings, *chain: Any, **kwargs: Any) -> BurstSummary:
    summary = run_worker(
        config, redis, burst=True, runtime=Runtime(settings=config, chain=list(chain)), **kwargs
    )
    assert summary is not None
    return summary


# -- item 6: one line per outcome -------------------------------------------------------------


def test_a_burst_logs_one_info_line_per_job_and_a_summary(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    # Given 12 orders and a chain of one handler that succeeds
    config = settings(redis_url)
    dispatch(redis, config, *(f"O{i}" for i in range(12)))
    # When a burst worker runs them
    summary = work(redis, config, Flaky("provision"))
    lines = logs.getvalue().splitlines()
    # Then each job is one INFO line naming the order, the integration, the steps and the time
    done = [line for line in lines if " done in " in line]
    assert len(done) == 12, lines
    assert all("INFO" in line and "dispatcher.worker" in line for line in done)
    assert any(
        f"order O3 (integration {INTEGRATION}) done in " in line and ": steps provision" in line
        for line in done
    )
    # RQ's five lines per job are at DEBUG; its start lines and the summary remain.
    assert len(lines) <= 12 + 4, lines
    assert not [line for line in lines if "Job OK" in line or "Successfully completed" in line]
    assert (summary.done, summary.failed, summary.scheduled) == (12, 0, 0)
    assert "burst finished on ops-orders: 12 done, 0 failed" in lines[-1]


def test_retry_later_is_a_warning_without_traceback_and_the_last_attempt_one_error(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    config = settings(redis_url)
    dispatch(redis, config, "A")
    summary = work(redis, config, Flaky(failures=99))
    lines = logs.getvalue().splitlines()
    assert "Traceback" not in logs.getvalue()
    warnings = [line for line in lines if "WARNING" in line and "retry in 0s" in line]
    errors = [line for line in lines if " ERROR " in line]
    assert len(warnings) == 2, lines  # DISPATCHER_MAX_RETRIES=2
    assert "order A (integration lever:ops): attempt 1 failed" in warnings[0]
    assert "handler flaky: vendor busy" in warnings[0]
    assert len(errors) == 1, lines
    assert "failed for good (attempt 3)" in errors[0] and "vendor busy" in errors[0]
    assert summary.failed == 1 and summary.failed_on_queue == 1


def test_an_unexpected_exception_logs_its_traceback_once(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    config = settings(redis_url, DISPATCHER_MAX_RETRIES=0)
    dispatch(redis, config, "A")
    work(redis, config, Flaky(failures=1, error=KeyError("test_url")))
    text = logs.getvalue()
    # One traceback: the handler's own (not HandlerFailed's chained on top of it)
    assert text.count("Traceback") == 1, text
    assert "direct cause" not in text
    assert "KeyError" in text


# -- item 7: what a burst leaves, and waiting for retries -------------------------------------


def test_a_burst_says_what_it_leaves_scheduled(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    # Given a job whose first attempt fails and whose retry is due in 30 s
    config = settings(redis_url, DISPATCHER_RETRY_BACKOFF=30)
    dispatch(redis, config, "A")
    summary = work(redis, config, Flaky(failures=1))
    # Then the burst says so when it exits
    assert (summary.done, summary.retried, summary.scheduled) == (0, 1, 1)
    last = logs.getvalue().splitlines()[-1]
    found = re.search(r"1 scheduled for a retry \(next in (\d+)s", last)
    assert "WARNING" in last and found is not None, last
    assert 15 <= int(found[1]) <= 30  # the 30 s backoff, less the time the burst took
    assert "scheduled for retry at" not in logs.getvalue()  # RQ's own line: DEBUG
    assert "--wait-retries" in last


def test_wait_retries_works_the_retries_once_they_are_due(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    config = settings(redis_url, DISPATCHER_RETRY_BACKOFF=1)
    dispatch(redis, config, "A", "B")
    handler = Flaky(failures=1)
    summary = work(redis, config, handler, wait_retries=20)
    assert handler.calls == {"A": 2, "B": 2}
    assert (summary.done, summary.scheduled, summary.queued) == (2, 0, 0)


def test_wait_retries_is_bounded(redis: Redis, redis_url: str, logs: io.StringIO) -> None:
    config = settings(redis_url, DISPATCHER_RETRY_BACKOFF=60)
    dispatch(redis, config, "A")
    summary = work(redis, config, Flaky(failures=1), wait_retries=1)
    assert summary.scheduled == 1
    assert "past the 1s allowed" in logs.getvalue()


def test_the_worker_command_prints_the_summary(redis: Redis, redis_url: str) -> None:
    config = settings(redis_url, DISPATCHER_FORK_PER_JOB=True)
    dispatch(redis, config, "A", "B", "C")
    env = dispatcher_env(redis_url, DISPATCHER_NAMESPACE="ops")
    run = subprocess.run(
        [str(BIN / "dispatcher"), "worker", "--burst", "--wait-retries"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "burst finished on ops-orders: 3 done, 0 failed" in run.stderr
    # Three outcome lines, three of the `log` handler's, RQ's start lines, the summary and
    # the start-up notice about the server (this test Redis keeps nothing on disk)
    assert len(run.stderr.splitlines()) <= 3 + 3 + 4 + 1, run.stderr
    refused = subprocess.run(
        [str(BIN / "dispatcher"), "worker", "--wait-retries", "5"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr == (
        "dispatcher: error: --wait-retries: only with --burst (a worker without it waits for "
        "everything)\n"
    )


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("threads", ["--threads", "4"]),
        ("in-process", []),
        ("forking", []),
    ],
)
def test_every_burst_mode_counts_what_it_did(
    redis: Redis, redis_url: str, mode: str, extra: list[str]
) -> None:
    # Issue 23: `worker --burst --threads 4` said "0 done, 0 failed" after 48 jobs.
    config = settings(redis_url)
    ids = [f"T{i:02d}" for i in range(12)]
    dispatch(redis, config, *ids)
    env = dispatcher_env(
        redis_url,
        DISPATCHER_NAMESPACE="ops",
        DISPATCHER_FORK_PER_JOB="true" if mode == "forking" else "false",
    )
    run = subprocess.run(
        [str(BIN / "dispatcher"), "worker", "--burst", *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "burst finished on ops-orders: 12 done, 0 failed, 0 put back for a retry" in (
        run.stderr
    ), run.stderr


@pytest.mark.parametrize("threads", ["1", "3"])
def test_each_child_of_a_burst_pool_says_what_it_did(
    redis: Redis, redis_url: str, threads: str
) -> None:
    config = settings(redis_url)
    ids = [f"P{i:02d}" for i in range(12)]
    dispatch(redis, config, *ids)
    env = dispatcher_env(redis_url, DISPATCHER_NAMESPACE="ops", DISPATCHER_FORK_PER_JOB="false")
    run = subprocess.run(
        [str(BIN / "dispatcher"), "worker", "--burst", "--processes", "2", "--threads", threads],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    children = re.findall(
        r"burst of worker \S+ finished: (\d+) done, (\d+) failed, (\d+) put back", run.stderr
    )
    assert len(children) == 2, run.stderr
    assert sum(int(done) for done, _, _ in children) == 12, children
    assert "left: 0 queued, 0 scheduled for a retry, 0 failed" in run.stderr


# -- item 10: jobs carry their namespace ------------------------------------------------------


def test_a_worker_of_another_namespace_leaves_the_job_untouched(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    # Given two namespaces that were given one queue name
    ours = settings(redis_url, "alpha", DISPATCHER_QUEUE="shared")
    theirs = settings(redis_url, "beta", DISPATCHER_QUEUE="shared")
    ledger = dispatch(redis, ours, "A", "B")
    job_id = ledger.job_id(INTEGRATION, "A")
    before = redis.hgetall(Job.key_for(job_id))
    # When a worker of the other namespace works the queue
    other = Flaky("other")
    summary = work(redis, theirs, other)
    # Then it ran nothing, changed no job, wrote no step, and said so once
    assert other.calls == {}
    assert redis.hgetall(Job.key_for(job_id)) == before
    assert redis.llen("rq:queue:shared") == 2
    assert not [key for key in redis.keys("beta:*")]
    errors = [line for line in logs.getvalue().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "namespace alpha" in errors[0] and "DISPATCHER_QUEUE" in errors[0]
    assert summary.done == 0 and summary.queued == 2
    # and its own namespace's worker runs both
    mine = Flaky("mine")
    assert work(redis, ours, mine).done == 2
    assert mine.calls == {"A": 1, "B": 1}


def test_a_job_queued_before_the_upgrade_is_the_workers_own(
    redis: Redis, redis_url: str, logs: io.StringIO
) -> None:
    config = settings(redis_url)
    # The job shape of before: no namespace in its kwargs or meta
    Queue(config.queue, connection=redis, serializer=JOB_SERIALIZER).enqueue(
        JOB_FUNCTION,
        kwargs={"integration_id": INTEGRATION, "order": order_payload("OLD")},
        meta={"order_id": "OLD", "integration_id": INTEGRATION},
    )
    handler = Flaky("provision")
    assert work(redis, config, handler).done == 1
    assert handler.calls == {"OLD": 1}


def test_a_stock_rq_worker_fails_another_namespaces_job_saying_why(
    redis: Redis, redis_url: str
) -> None:
    # Given a job of namespace alpha on a queue a stock `rq worker` listens to, without the
    # dispatcher's environment (so its namespace is the default, "dispatcher")
    config = settings(redis_url, "alpha", DISPATCHER_QUEUE="shared")
    ledger = dispatch(redis, config, "A")
    stock = subprocess.Popen(
        [str(BIN / "rq"), "worker", "--burst", "--serializer", "json", "--url", redis_url, "shared"],
        env=dispatcher_env(redis_url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    job = Job.fetch(ledger.job_id(INTEGRATION, "A"), connection=redis, serializer=JOB_SERIALIZER)
    try:
        # Waited on the job's outcome: a stock worker's teardown then waits out RQ's 60 s
        # read of its command channel (redis-py 8.2), which the test has no need to see.
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, timeout=120)
    finally:
        stock.kill()
        stock.wait()
    job = Job.fetch(job.id, connection=redis, serializer=JOB_SERIALIZER)
    # Then it failed, for good (no retry), with a reason that says whose job it is
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 0
    reason = (job.latest_result().exc_string or "").strip().splitlines()[-1]  # type: ignore[union-attr]
    assert "job of namespace alpha refused by a worker of namespace dispatcher" in reason
    assert "DISPATCHER_NAMESPACE=alpha dispatcher worker" in reason
    # and it wrote no step record under its own namespace
    assert not redis.keys("dispatcher:steps:*")


def test_a_burst_worker_stops_without_waiting_out_rqs_command_channel(
    redis: Redis, redis_url: str
) -> None:
    # RQ reads the worker's command channel for 60 s at a time and, with redis-py 8.2,
    # stopping the reader waits for that read: every worker's teardown (a burst's end, a
    # SIGTERM) took up to a minute. Ours reads for 1 s at a time.
    config = settings(redis_url)
    dispatch(redis, config, "A")
    install_runtime(Runtime(config, [Flaky()]))  # type: ignore[list-item]
    worker = DispatcherSimpleWorker([Queue(config.queue, connection=redis)], connection=redis)
    started = time.monotonic()
    worker.work(burst=True)
    assert worker.tally.done == 1
    assert time.monotonic() - started < 30  # 60 s and more before; about 1 s now
