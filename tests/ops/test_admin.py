"""`dispatcher failed`, `show` and `forget` against a real Redis after a real pipeline."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from dispatcher import Settings
from dispatcher._text import ago
from dispatcher.handler import RetryLater
from dispatcher.kombo.models import Order
from dispatcher.ops.forget import ForgetRefused, forget_order
from dispatcher.store.failures import parse_failure
from dispatcher.store.keys import Keys, job_id_for
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator
from support.ops import FailsFor, Returns, env_for, invoke, settings_for, sweep, work

INTEGRATIONS = ["greenhouse:AdminOne", "lever:AdminTwo"]
# An age as the CLI prints it (dispatcher._text.duration): "4.2s ago", "42s ago", and past a
# minute, as a test on a loaded machine sees, "1m 01s ago" (two words).
AGO = r"(?:\d+\.\ds|\d+s|\d+[mhd] \d\d[smh]) ago"


@pytest.fixture
def sim() -> Simulator:
    return Simulator(INTEGRATIONS, 4, seed=5)


@pytest.fixture
def settings(redis_url: str, sim: Simulator, namespace: str) -> Settings:
    return settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="log,provision")


# -- parse_failure --------------------------------------------------------------------------

CHAINED = """Traceback (most recent call last):
  File "/app/dispatcher/jobs.py", line 117, in _run_step
    output = handler.handle(order, context)
dispatcher.plugins.PermanentFailure: vendor said 400

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/app/rq/job.py", line 1539, in _execute
dispatcher.worker.jobs.HandlerFailed: handler provision_http failed on order Ab12 (integration \
lever:x (eu)): vendor said 400: unknown package
"""


def test_parse_failure_reads_the_handler_and_reason_from_a_chained_traceback() -> None:
    failure = parse_failure(CHAINED)
    assert (failure.handler, failure.reason) == (
        "provision_http",
        "vendor said 400: unknown package",
    )


def test_parse_failure_falls_back_to_the_last_line() -> None:
    timeout = (
        "Traceback (most recent call last):\n  ...\n"
        "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (600 seconds)\n"
    )
    assert parse_failure(timeout).handler is None
    # RQ's line for a work horse past its timeout names the setting (issue 23)
    assert parse_failure(timeout).reason == (
        "job timed out: the chain ran past DISPATCHER_JOB_TIMEOUT (600s)"
    )
    assert parse_failure("Work-horse terminated unexpectedly; waitpid returned 9").reason == (
        "Work-horse terminated unexpectedly; waitpid returned 9"
    )
    assert parse_failure(None).reason == "unknown (no error was recorded)"
    bare = parse_failure("handler notify failed on order X (integration a:b): smtp said 550")
    assert (bare.handler, bare.reason) == ("notify", "smtp said 550")


# -- failed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 4.25, 42.0, 61.0, 3725.0, 90061.0])
def test_the_age_pattern_of_these_tests_matches_every_age_the_cli_prints(seconds: float) -> None:
    # The tests below parse ages with AGO: one that took more than a minute on a loaded
    # machine failed when they expected "4.2s ago" (one word).
    now = time.time()
    assert re.fullmatch(AGO, ago(now - seconds, now)), seconds


def test_failed_lists_order_integration_handler_reason_attempts_and_when(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    started = time.time()
    sweep(redis, settings, sim)
    bad = {sim.orders(INTEGRATIONS[0])[1]["id"], sim.orders(INTEGRATIONS[1])[2]["id"]}
    work(redis, settings, [Returns("log"), FailsFor("provision", bad, "vendor said no")])
    env = env_for(redis_url, settings)
    result = invoke(["failed"], env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FAILED", "ORDER", "INTEGRATION", "HANDLER", "ATTEMPTS", "REASON"]
    # The FAILED column is an age ("4.2s ago", "1m 01s ago" on a loaded machine): it may
    # hold a space, so the order id is found after it, not by its position.
    rows = {re.sub(rf"^{AGO}\s+", "", line).split()[0]: line for line in lines[1:3]}
    assert set(rows) == bad
    for order_id, line in rows.items():
        integration = next(i for i in INTEGRATIONS if order_id in {o["id"] for o in sim.orders(i)})
        assert re.match(
            rf"^{AGO}\s+{order_id}\s+{re.escape(integration)}\s+provision\s+1\s+"
            r"vendor said no \(\w+\)$",
            line,
        ), line
    assert lines[-1] == (
        f"2 failed jobs on {settings.queue} (all); "
        "details: dispatcher show ORDER_ID --integration ID"
    )
    records = [json.loads(line) for line in invoke(["failed", "--json"], env).stdout.splitlines()]
    assert {r["order_id"] for r in records} == bad
    assert all(r["handler"] == "provision" and r["attempts"] == 1 for r in records)
    # Between the test's start and now, however long a loaded machine took.
    assert all(started - 1 <= r["failed_at"] <= time.time() + 1 for r in records)
    limited = invoke(["failed", "--limit", "1"], env).stdout
    assert "2 failed jobs on" in limited and "showing the newest 1, --limit 0 for all" in limited


def test_failed_counts_attempts_of_a_retried_job(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim, integration_ids=[INTEGRATIONS[0]])
    bad = sim.orders(INTEGRATIONS[0])[0]["id"]
    job = Job.fetch(
        job_id_for(settings.namespace, INTEGRATIONS[0], bad),
        connection=redis,
        serializer=JOB_SERIALIZER,
    )
    job.retries_left, job.retry_intervals = 2, [0, 0]  # two immediate retries
    job.save()
    # RetryLater: a PermanentFailure is never retried.
    work(redis, settings, [FailsFor("provision", {bad}, "still broken", error=RetryLater)])
    (record,) = [
        json.loads(line)
        for line in invoke(["failed", "--json"], env_for(redis_url, settings)).stdout.splitlines()
    ]
    assert record["order_id"] == bad and record["attempts"] == 3


def test_failed_reads_rq_results_of_jobs_run_by_a_plain_rq_worker(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim, integration_ids=[INTEGRATIONS[1]])
    bad = sim.orders(INTEGRATIONS[1])[3]["id"]
    work(redis, settings, [FailsFor("provision", {bad}, "plain")], plain=True)
    (record,) = [
        json.loads(line)
        for line in invoke(["failed", "--json"], env_for(redis_url, settings)).stdout.splitlines()
    ]
    assert (record["order_id"], record["handler"], record["attempts"]) == (bad, "provision", 1)
    assert record["reason"].startswith("plain (")


def test_failed_says_so_when_there_are_none(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    result = invoke(["failed"], env_for(redis_url, settings))
    assert (result.exit_code, result.stdout) == (0, f"no failed jobs on {settings.queue}\n")


# -- show -----------------------------------------------------------------------------------


def test_show_prints_seen_job_steps_outputs_and_last_error(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim)
    good, bad = (o["id"] for o in sim.orders(INTEGRATIONS[0])[:2])
    work(redis, settings, [Returns("log", {"package": "p"}), FailsFor("provision", {bad})])
    keys = Keys(settings.namespace)
    # The handler chain records each completed step (see dispatcher.worker.jobs); write them here.
    done = time.time() - 5
    redis.hset(
        keys.steps(INTEGRATIONS[0], bad),
        "log",
        json.dumps({"output": {"package": "p"}, "completed_at": done}),
    )
    env = env_for(redis_url, settings)

    failed = invoke(["show", bad], env)
    assert failed.exit_code == 0, failed.output
    lines = failed.stdout.splitlines()
    assert lines[0] == f"order {bad} · integration {INTEGRATIONS[0]}"
    job_id = job_id_for(settings.namespace, INTEGRATIONS[0], bad)
    assert re.match(r"^  seen         \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(.+ ago\)$", lines[1])
    assert lines[2].startswith(f"  job          {job_id} · failed · package ")
    assert "  attempts     1" in lines
    assert re.search(
        rf'^  steps        log        completed {AGO}  \{{"package": "p"\}}$',
        failed.stdout,
        re.MULTILINE,
    )
    assert re.search(r"^               provision  not completed$", failed.stdout, re.MULTILINE)
    assert re.search(
        r"^  last error   provision: vendor said no \(\w+\) \(.+ ago\)$",
        failed.stdout,
        re.MULTILINE,
    ), failed.stdout

    finished = invoke(["show", good, "--json"], env)
    data = json.loads(finished.stdout)
    assert data["order_id"] == good and data["integration_id"] == INTEGRATIONS[0]
    assert data["job"]["status"] == "finished" and data["job"]["attempts"] == 1
    # No step records for this one: the job's return value still tells the outputs.
    assert data["steps"]["log"]["output"] == {"package": "p"}
    assert data["steps"]["provision"]["output"] == {"passed": good}
    assert data["last_error"] is None
    assert "payload" not in data
    with_payload = json.loads(invoke(["show", good, "--json", "--payload"], env).stdout)
    assert with_payload["payload"]["id"] == good
    assert "candidate" in with_payload["payload"]


def test_show_finds_an_order_id_in_every_integration_that_knows_it(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    for integration in INTEGRATIONS:
        sim.add_order(integration, id="SharedOrderId1234567890")
    sweep(redis, settings, sim)
    env = env_for(redis_url, settings)
    both = invoke(["show", "SharedOrderId1234567890"], env).stdout
    assert [line for line in both.splitlines() if line.startswith("order ")] == [
        f"order SharedOrderId1234567890 · integration {i}" for i in INTEGRATIONS
    ]
    one = invoke(["show", "SharedOrderId1234567890", "--integration", INTEGRATIONS[1]], env)
    assert [line for line in one.stdout.splitlines() if line.startswith("order ")] == [
        f"order SharedOrderId1234567890 · integration {INTEGRATIONS[1]}"
    ]
    assert "· queued ·" in one.stdout


def test_show_of_an_unknown_order_is_a_one_line_error(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim)
    env = env_for(redis_url, settings)
    result = invoke(["show", "NoSuchOrder"], env)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "dispatcher: error: order NoSuchOrder is not known in any integration\n"
    scoped = invoke(["show", "NoSuchOrder", "--integration", INTEGRATIONS[0]], env)
    assert scoped.exit_code == 1
    assert scoped.stderr == (
        f"dispatcher: error: order NoSuchOrder is not known in integration {INTEGRATIONS[0]}\n"
    )


# -- forget ---------------------------------------------------------------------------------


def test_forget_asks_first_and_a_no_changes_nothing(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim)
    order_id = sim.orders(INTEGRATIONS[0])[0]["id"]
    before = sorted(redis.keys("*"))
    result = invoke(
        ["forget", order_id, "--integration", INTEGRATIONS[0]],
        env_for(redis_url, settings),
        input="n\n",
    )
    assert result.exit_code == 1
    assert f"order {order_id} (integration {INTEGRATIONS[0]}): seen " in result.stdout
    assert "Forget it? [y/N]" in result.stdout
    assert result.stderr == "dispatcher: error: not confirmed: nothing was changed\n"
    assert sorted(redis.keys("*")) == before
    assert redis.hexists(Keys(settings.namespace).seen(INTEGRATIONS[0]), order_id)


def test_forget_removes_seen_job_and_steps_and_the_next_sweep_dispatches_again(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim)
    bad = sim.orders(INTEGRATIONS[0])[0]["id"]
    work(redis, settings, [Returns("log"), FailsFor("provision", {bad})])
    keys = Keys(settings.namespace)
    job_id = job_id_for(settings.namespace, INTEGRATIONS[0], bad)
    redis.hset(
        keys.steps(INTEGRATIONS[0], bad), "log", json.dumps({"output": {}, "completed_at": 1})
    )
    redis.sadd(keys.effects(INTEGRATIONS[0], bad, "provision"), "created-account")
    queue = Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    assert job_id in FailedJobRegistry(queue=queue)
    # The same order id in the other integration must not be touched.
    other_job = job_id_for(
        settings.namespace, INTEGRATIONS[1], sim.orders(INTEGRATIONS[1])[0]["id"]
    )

    result = invoke(
        ["forget", bad, "--integration", INTEGRATIONS[0]], env_for(redis_url, settings), input="y\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        f"forgot order {bad} (integration {INTEGRATIONS[0]}): removed seen mark, failed job, "
        "1 step record(s), 1 effect record(s); the next sweep dispatches it again if it is "
        "still OPEN\n"
    )
    assert not redis.hexists(keys.seen(INTEGRATIONS[0]), bad)
    assert not redis.exists(f"rq:job:{job_id}", f"rq:results:{job_id}")
    assert job_id not in FailedJobRegistry(queue=queue)
    assert not redis.exists(keys.steps(INTEGRATIONS[0], bad))
    assert not redis.exists(keys.effects(INTEGRATIONS[0], bad, "provision"))
    assert redis.exists(f"rq:job:{other_job}")
    assert redis.hlen(keys.seen(INTEGRATIONS[0])) == 3

    again = sweep(redis, settings, sim)
    assert again.orders_new == 1
    assert queue.job_ids == [job_id]
    assert Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER).meta["order_id"] == bad
    shown = invoke(["show", bad], env_for(redis_url, settings)).stdout
    assert "· queued ·" in shown and "last error   -" in shown

    gone = invoke(
        ["forget", "NoSuch", "--integration", INTEGRATIONS[0], "--yes"],
        env_for(redis_url, settings),
    )
    assert gone.exit_code == 1
    assert (
        gone.stderr
        == f"dispatcher: error: order NoSuch is not known in integration {INTEGRATIONS[0]}\n"
    )


def test_forget_of_a_finished_order_clears_the_finished_registry(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim, integration_ids=[INTEGRATIONS[1]])
    work(redis, settings, [Returns("log")])
    order_id = sim.orders(INTEGRATIONS[1])[1]["id"]
    job_id = job_id_for(settings.namespace, INTEGRATIONS[1], order_id)
    queue = Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    assert job_id in FinishedJobRegistry(queue=queue)
    result = invoke(
        ["forget", order_id, "--integration", INTEGRATIONS[1], "--yes"],
        env_for(redis_url, settings),
    )
    assert result.exit_code == 0
    assert "removed seen mark, finished job, 1 step record(s);" in result.stdout
    assert job_id not in FinishedJobRegistry(queue=queue)
    assert FinishedJobRegistry(queue=queue).get_job_count(cleanup=False) == 3


def test_forget_racing_sweeps_leaves_seen_and_enqueued_in_step(
    redis: Redis, settings: Settings, sim: Simulator
) -> None:
    """Given a dispatcher dispatching the same order over and over, when the order is
    forgotten meanwhile, then it ends either seen with its job queued, or neither."""
    integration = INTEGRATIONS[0]
    raw = sim.orders(integration)[0]
    order = Order.model_validate(raw)
    queue = Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    ledger = Ledger(redis, queue, settings.namespace)
    keys = Keys(settings.namespace)
    job_id = job_id_for(settings.namespace, integration, order.id)
    for _ in range(15):
        redis.flushdb()
        ledger.dispatch(integration, [order])
        stop = threading.Event()

        def redispatch(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                ledger.dispatch(integration, [order])

        thread = threading.Thread(target=redispatch)
        thread.start()
        try:
            for _ in range(5):
                # Refused when the sweep had not re-dispatched it yet: nothing to forget.
                with contextlib.suppress(ForgetRefused):
                    forget_order(redis, settings.namespace, settings.queue, integration, order.id)
        finally:
            stop.set()
            thread.join()
        seen = redis.hexists(keys.seen(integration), order.id)
        assert seen == bool(redis.exists(f"rq:job:{job_id}"))
        assert queue.job_ids == ([job_id] if seen else [])


def test_show_and_status_of_an_order_waiting_for_its_retry(
    redis: Redis, redis_url: str, settings: Settings, sim: Simulator
) -> None:
    sweep(redis, settings, sim, integration_ids=[INTEGRATIONS[0]])
    flaky = sim.orders(INTEGRATIONS[0])[2]["id"]
    job = Job.fetch(
        job_id_for(settings.namespace, INTEGRATIONS[0], flaky),
        connection=redis,
        serializer=JOB_SERIALIZER,
    )
    job.retries_left, job.retry_intervals = 1, [3600]
    job.save()
    work(redis, settings, [FailsFor("provision", {flaky}, "vendor down", error=RetryLater)])
    env = env_for(redis_url, settings)
    data = json.loads(invoke(["show", flaky, "--json"], env).stdout)
    assert data["job"]["status"] == "scheduled"
    assert 3500 < data["job"]["retry_at"] - time.time() <= 3600
    assert data["job"]["attempts"] == 1
    assert data["last_error"]["handler"] == "provision"
    assert data["last_error"]["reason"].startswith("vendor down (")
    text = invoke(["show", flaky], env).stdout
    assert re.search(r"^  retry at     \d{4}-\d\d-\d\d \S+ UTC \(in 59m \d\ds\)$", text, re.M), text
    queue = json.loads(invoke(["status", "--json"], env).stdout)["queues"][settings.queue]
    assert (queue["scheduled"], queue["failed"], queue["finished"]) == (1, 0, 3)
    assert invoke(["failed"], env).stdout == f"no failed jobs on {settings.queue}\n"
