"""The results outbox from the command line, against a real Redis and the simulator over a
socket: `dispatcher result` (--wait, --no-wait, --timeout), `results`, `retry --results`,
`show`'s timeline and `worker --results`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from redis import Redis
from rq.job import Job

from dispatcher.store.results import Outbox, OutboxRecord
from dispatcher.store.rq_internals import JOB_SERIALIZER, intermediate_key
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator, SimulatorServer
from support import count_main_thread_takes, dispatcher_env, kill_tree, wait_until
from support.ops import run

pytestmark = pytest.mark.redis
URL = "https://vendor.example/r/1"
PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


@pytest.fixture
def sim() -> Simulator:
    return Simulator(2, 3, seed=11, faults=Faults(retry_after=0.05))


@pytest.fixture
def outbox(redis: Redis) -> Outbox:
    return Outbox(redis, "dispatcher", "dispatcher-results")


def order_of(sim: Simulator, n: int = 0, integration: int = 0) -> tuple[str, str]:
    integration_id = sim.integration_ids[integration]
    return integration_id, str(sim.orders(integration_id, "OPEN")[n]["id"])


def result(integration: str, order: str, *extra: str, status: str = "COMPLETED") -> Result:
    return run(
        "result", order, "--integration", integration, "--status", status, "--result-url", URL,
        *extra,
    )  # fmt: skip


def record_of(outbox: Outbox, integration: str, order: str) -> OutboxRecord:
    record = outbox.get(integration, order)
    assert record is not None
    return record


# -- 1. dispatcher result ----------------------------------------------------------------------


def test_no_wait_stores_and_queues_through_the_outbox_and_sends_nothing(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    integration, order = order_of(sim)
    first = result(integration, order, "--no-wait")
    assert first.exit_code == 0, first.stderr
    record = record_of(outbox, integration, order)
    assert record.state == "pending"
    assert first.stdout == (
        f"order {order} ({integration}): result COMPLETED submitted "
        f"(pending, submission {record.submission_id})\n"
    )
    again = result(integration, order, "--no-wait")  # completed_at defaulted both times
    assert again.stdout == (
        f"order {order} ({integration}): result COMPLETED already submitted "
        f"(pending, submission {record.submission_id})\n"
    )
    assert sim.request_count == 0
    assert outbox.counts()["pending"] == 1


def test_waiting_without_results_workers_writes_in_process_with_retries(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    integration, order = order_of(sim)
    sim.fail_next("rate_limit", 2)  # two retries, each a new job the command claims itself
    done = result(integration, order, "--score", "3", "--max-score", "4")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == f"order {order} ({integration}): result COMPLETED written\n"
    assert done.stderr == ""  # the writer's own log lines are not printed twice
    assert sim.results[(integration, order)]["score"] == 3
    assert sim.applied_writes[(integration, order)] == 1
    record = record_of(outbox, integration, order)
    assert record.state == "written" and record.attempts == 3  # every PUT sent counts
    assert outbox.queue.count == 0 and outbox.queue.scheduled_job_registry.count == 0


def test_a_lost_answer_is_written_and_said(env: dict[str, str], sim: Simulator) -> None:
    integration, order = order_of(sim, 1)
    sim.fail_next("drop_answer")
    done = result(integration, order, "--status", "CANCELLED", status="CANCELLED")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == (
        f"order {order} ({integration}): result CANCELLED written "
        "(Kombo's answer was lost; read back)\n"
    )
    assert sim.applied_writes[(integration, order)] == 1


def test_a_result_after_a_final_one_is_refused_in_one_line(
    env: dict[str, str], sim: Simulator
) -> None:
    integration, order = order_of(sim)
    assert result(integration, order).exit_code == 0
    refused = result(integration, order, status="CANCELLED")
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"dispatcher: error: order {order} (integration {integration}): a final result "
        "(COMPLETED) was already written; Kombo takes no further result\n"
    )
    assert sim.applied_writes[(integration, order)] == 1


def test_still_pending_at_the_timeout_exits_0_and_says_who_writes_it(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    integration, order = order_of(sim)
    sim.fail_next("server_error", 1000)
    done = result(integration, order, "--timeout", "1")
    assert done.exit_code == 0, done.stderr
    record = record_of(outbox, integration, order)
    assert record.state == "pending" and record.attempts >= 1
    # No results worker runs here: the message says so (it said "the workers keep trying").
    assert re.fullmatch(
        rf"order {order} \({integration}\): result COMPLETED still pending after 1s "
        r"\(attempts \d+, last error .*PLATFORM.UNKNOWN_ERROR.*\); no results worker is "
        r"running: `dispatcher worker --results` will write it\n",
        done.stdout,
    ), done.stdout
    # ... and the write keeps its job for that worker.
    assert record.job_id in outbox.queue.get_job_ids() + (
        outbox.queue.scheduled_job_registry.get_job_ids()
    )


def test_with_a_results_worker_running_the_command_leaves_the_write_to_it(
    env: dict[str, str], sim: Simulator, redis_url: str, kombo: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    import dispatcher.worker.results as results_worker

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command wrote the result itself")

    monkeypatch.setattr(results_worker, "write_claimed", never)
    procfile = dict(line.split(": ", 1) for line in PROCFILE.read_text().splitlines() if line)
    assert procfile["results"] == "dispatcher worker --results --processes 4"
    worker = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "worker", "--results", "--processes", "1"],
        env=dispatcher_env(redis_url, KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from dispatcher.settings import load_settings

    settings = load_settings(REDIS_URL=redis_url)
    redis = Redis.from_url(redis_url)
    try:
        wait_until(lambda: results_worker.results_workers_running(settings, redis), 30)
        integration, order = order_of(sim)
        done = result(integration, order, "--timeout", "30")
        assert done.exit_code == 0, done.stderr
        assert done.stdout == f"order {order} ({integration}): result COMPLETED written\n"
        assert sim.applied_writes[(integration, order)] == 1
    finally:
        kill_tree(worker.pid)
        worker.wait(10)
        redis.close()


# -- 2. dispatcher results ---------------------------------------------------------------------


def test_results_lists_the_outbox_by_state(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    assert run("results").stdout == "no results\n"
    first, written = order_of(sim)
    assert result(first, written).exit_code == 0
    assert result(first, "NO_SUCH_ORDER").exit_code == 1
    second, pending = order_of(sim, 0, 1)
    assert result(second, pending, "--no-wait").exit_code == 0

    every = run("results")
    assert every.exit_code == 0, every.stderr
    lines = every.stdout.splitlines()
    assert lines[0].split() == [
        "STATE", "INTEGRATION", "ORDER", "STATUS", "SUBMITTED", "ATTEMPTS", "DETAIL",
    ]  # fmt: skip
    assert [line.split()[:4] for line in lines[1:]] == [
        ["pending", second, pending, "COMPLETED"],
        ["written", first, written, "COMPLETED"],
        ["failed", first, "NO_SUCH_ORDER", "COMPLETED"],
    ]
    assert "PLATFORM.INPUT_INVALID" in lines[3]

    failed = run("results", "--state", "failed", "--json")
    [one] = [json.loads(line) for line in failed.stdout.splitlines()]
    assert (one["order_id"], one["state"]) == ("NO_SUCH_ORDER", "failed")
    only = run("results", "--integration", second)
    assert [line.split()[2] for line in only.stdout.splitlines()[1:]] == [pending]
    assert run("results", "--state", "written", "--integration", second).stdout == "no results\n"
    assert len(run("results", "--limit", "1").stdout.splitlines()) == 2


# -- 3. dispatcher retry --results -------------------------------------------------------------


def test_retry_results_requeues_failed_writes(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    integration = sim.integration_ids[0]
    assert result(integration, "NO_SUCH_ORDER").exit_code == 1
    assert result(integration, "OTHER_MISSING").exit_code == 1
    retried = run("retry", "--results", "NO_SUCH_ORDER")
    assert retried.exit_code == 0, retried.stderr
    record = record_of(outbox, integration, "NO_SUCH_ORDER")
    assert record.state == "pending"
    assert retried.stdout == (
        "requeued 1 failed result write\n"
        f"order NO_SUCH_ORDER ({integration}): submission {record.submission_id}\n"
    )
    assert record_of(outbox, integration, "OTHER_MISSING").state == "failed"
    rest = run("retry", "--results", "--integration", integration)
    assert rest.stdout.splitlines()[0] == "requeued 1 failed result write"
    assert run("retry", "--results").stdout == "requeued 0 failed result writes\n"
    bad = run("retry", "--results", "--all-failed")
    assert bad.exit_code == 2 and "--results and --all-failed" in bad.stderr


# -- 4. dispatcher show ------------------------------------------------------------------------


def test_show_appends_the_orders_timeline(env: dict[str, str], sim: Simulator) -> None:
    assert run("poll", "--once").exit_code == 0
    integration, order = order_of(sim)
    assert result(integration, order).exit_code == 0
    shown = run("show", order, "--integration", integration)
    assert shown.exit_code == 0, shown.stderr
    _, sep, timeline = shown.stdout.partition("\ntimeline:\n")
    assert sep, shown.stdout
    events = [line.split()[3] for line in timeline.splitlines()]
    assert events[0] == "first_seen" and "enqueued" in events
    assert events[-2:] == ["result_submitted", "result_written"]
    as_json = json.loads(run("show", order, "--integration", integration, "--json").stdout)
    assert [e["event"] for e in as_json["timeline"]] == events


# -- 5. dispatcher worker --results ------------------------------------------------------------


def test_worker_results_burst_writes_what_was_submitted(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    orders = [order_of(sim, n) for n in range(3)]
    for integration, order in orders:
        assert result(integration, order, "--no-wait").exit_code == 0
    assert sim.request_count == 0
    worked = run("worker", "--results", "--burst")
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 3, "failed": 0}
    assert all(sim.applied_writes[key] == 1 for key in orders)


def test_a_write_job_queued_under_the_old_module_path_is_run_after_an_upgrade(
    env: dict[str, str], sim: Simulator, outbox: Outbox, redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import dispatcher.store.results as store_results

    # Given a write job queued by a dispatcher before worker/writeback.py became
    # worker/results.py: its job names the function by the old path
    old = "dispatcher.worker.writeback.write_result"
    integration, order = order_of(sim)
    with monkeypatch.context() as before_the_upgrade:
        before_the_upgrade.setattr(store_results, "RESULT_JOB_FUNCTION", old)
        assert result(integration, order, "--no-wait").exit_code == 0
    job_id = record_of(outbox, integration, order).job_id
    assert Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER).func_name == old
    # When this version's results worker works the queue
    worked = run("worker", "--results", "--burst")
    # Then it runs the job (not refused as a foreign function): the result is written once
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 1, "failed": 0}
    assert sim.applied_writes[(integration, order)] == 1


def test_worker_results_with_threads_writes_each_result_once(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    # Given six results over two integrations, and a Kombo that takes 0.3 s per request
    orders = [order_of(sim, n, i) for i in range(2) for n in range(3)]
    for integration, order in orders:
        assert result(integration, order, "--no-wait").exit_code == 0
    sim.faults.latency = 0.3
    # When one process with 4 threads works the results queue
    worked = run("worker", "--results", "--threads", "4", "--burst")
    # Then every result is written, each with exactly one PUT applied by Kombo, and writes
    # of one integration were in flight at the same time (one at a time: never above 1)
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 6, "failed": 0}
    assert all(sim.applied_writes[key] == 1 for key in orders)
    assert max(sim.max_writes_in_flight.values()) >= 2


def test_busy_write_threads_take_their_next_job_with_the_success(
    env: dict[str, str], sim: Simulator, outbox: Outbox, redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given six results, a Kombo that takes 0.1 s per write, and the main thread's takes counted
    orders = [order_of(sim, n, i) for i in range(2) for n in range(3)]
    for integration, order in orders:
        assert result(integration, order, "--no-wait").exit_code == 0
    sim.faults.retry_after = 0.0
    sim.faults.latency = 0.1
    takes = count_main_thread_takes(monkeypatch)
    # When one process with 2 threads works the results queue
    worked = run("worker", "--results", "--threads", "2", "--burst")
    # Then each result is written once; the main thread took the first two, the threads the
    # other four, each with the success of the write before (the main thread's later takes
    # found the queue empty); nothing is left in RQ's intermediate list
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 6, "failed": 0}
    assert all(sim.applied_writes[key] == 1 for key in orders)
    assert takes[0] == 2 and sum(takes) == 2, takes
    assert redis.llen(intermediate_key("dispatcher-results")) == 0


def test_worker_results_writes_several_at_once_by_default(
    env: dict[str, str], sim: Simulator, outbox: Outbox
) -> None:
    # Given six results over two integrations, and a Kombo that takes 0.3 s per request
    orders = [order_of(sim, n, i) for i in range(2) for n in range(3)]
    for integration, order in orders:
        assert result(integration, order, "--no-wait").exit_code == 0
    sim.faults.latency = 0.3
    # When one results process works the queue without --threads (the Procfile's line)
    worked = run("worker", "--results", "--burst")
    # Then every result is written once, and writes were in flight at the same time (one
    # thread per process, the default until issue 25, never had two)
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 6, "failed": 0}
    assert all(sim.applied_writes[key] == 1 for key in orders)
    assert max(sim.max_writes_in_flight.values()) >= 2


def test_the_written_result_again_says_so_and_another_is_refused(
    env: dict[str, str], sim: Simulator, outbox: Outbox, redis: Redis
) -> None:
    integration, order = order_of(sim)
    first = result(integration, order, "--score", "3", "--max-score", "4")
    assert first.exit_code == 0, first.stderr
    submission = record_of(outbox, integration, order).submission_id
    redis.delete(outbox.keys.outbox(integration, order))  # expired: the results record answers
    again = result(integration, order, "--score", "3", "--max-score", "4")
    assert again.exit_code == 0, again.stderr
    assert again.stdout == (
        f"order {order} ({integration}): result COMPLETED already written "
        f"(submission {submission})\n"
    )
    other = result(integration, order, "--score", "4", "--max-score", "4")
    assert other.exit_code == 1 and "already written" in other.stderr
    assert sim.applied_writes[(integration, order)] == 1


def test_an_integration_id_that_cannot_be_a_header_is_one_line_and_stores_nothing(
    env: dict[str, str], redis: Redis
) -> None:
    done = result("greenhouse:\u00e9t\u00e9", "o1", "--no-wait")
    assert done.exit_code == 2
    assert done.stderr.startswith("dispatcher: error: --integration: contains U+00E9")
    assert len(done.stderr.splitlines()) == 1
    assert redis.keys("*") == []
