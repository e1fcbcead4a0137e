"""The reconciler (dispatcher/store/reconcile.py) against a real Redis, the simulator over a
socket and real workers: a job or a result's write job lost behind the dispatcher's back (as
an AOF ``everysec`` crash or a failover loses it) is put back with its id and then done;
orders and results in every legitimate place are left alone; ``--dry-run`` changes nothing;
a running poller reconciles by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry, FailedJobRegistry
from rq.utils import now

from dispatcher._text import as_str
from dispatcher.ops.status import take_snapshot
from dispatcher.settings import load_settings
from dispatcher.store.keys import Keys, job_id_for, order_ref
from dispatcher.store.ledger import Ledger
from dispatcher.store.reconcile import Reconciler
from dispatcher.store.reconcile_state import PeriodicReconcile, read_state
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.web.metrics import exposition
from support import dispatcher_env, kill_tree, queued_job_ids, wait_until
from support.ops import run

pytestmark = pytest.mark.redis
NS = "dispatcher"
QUEUE = "dispatcher-orders"
KEYS = Keys(NS)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(1, 12, seed=21)


def reconcile(*args: str) -> dict[str, Any]:
    done = run("reconcile", "--grace", "0", "--json", *args)
    assert done.exit_code == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def dispatched(redis: Redis, sim: Simulator) -> list[tuple[str, str, str]]:
    """Poll once; (integration, order, job id) of every order dispatched."""
    polled = run("poll", "--once")
    assert polled.exit_code == 0, polled.stderr
    integration = sim.integration_ids[0]
    orders = sorted(as_str(o) for o in redis.hkeys(KEYS.seen(integration)))
    assert orders
    return [(integration, o, job_id_for(NS, integration, o)) for o in orders]


def queued(redis: Redis) -> list[str]:
    return queued_job_ids(redis, QUEUE)


def lose(redis: Redis, job_id: str) -> None:
    """What an AOF everysec crash or a failover can leave: the seen mark without its job."""
    redis.delete(f"rq:job:{job_id}")
    redis.lrem(f"rq:queue:{QUEUE}", 0, job_id)


def provisioned(redis: Redis, integration: str, order: str) -> bool:
    return redis.zscore(KEYS.provisioned, order_ref(integration, order)) is not None


def test_a_job_lost_behind_the_dispatchers_back_is_rebuilt_with_its_id_and_provisioned(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    orders = dispatched(redis, sim)
    integration, order, job_id = orders[3]
    record = redis.hgetall(KEYS.dispatched(integration, order))
    assert set(record) == {b"data", b"description", b"meta"}
    data = redis.hget(f"rq:job:{job_id}", "data")
    lose(redis, job_id)
    assert job_id not in queued(redis)

    answer = reconcile()
    assert answer["orders_checked"] == len(orders)
    assert [(f["order_id"], f["job_id"], f["where"]) for f in answer["findings"]] == [
        (order, job_id, "no job")
    ]
    assert answer["repaired"] == {"order": 1}
    assert queued(redis).count(job_id) == 1
    assert len(queued(redis)) == len(orders)  # the others untouched, none doubled
    assert redis.hget(f"rq:job:{job_id}", "data") == data
    assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.QUEUED

    worked = run("worker", "--burst")
    assert worked.exit_code == 0, worked.stderr
    assert all(provisioned(redis, i, o) for i, o, _ in orders)
    # Done: a second pass finds nothing, and the dispatch records of done orders are dropped.
    again = reconcile()
    assert again["findings"] == [] and again["candidates"] == 0
    assert not redis.exists(KEYS.dispatched(integration, order))
    assert read_state(redis, KEYS)["reconciled"] == {"order": 1}
    metrics = exposition(lambda: take_snapshot(redis, load_settings())).decode()
    assert 'dispatcher_reconciled_total{kind="order"} 1.0' in metrics
    assert 'dispatcher_reconciled_total{kind="result"} 0.0' in metrics


def test_a_job_in_no_queue_or_registry_is_put_back_as_it_is(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    """The retry gap of issue 21: the job says scheduled, no registry holds it."""
    orders = dispatched(redis, sim)
    integration, order, job_id = orders[0]
    redis.lrem(f"rq:queue:{QUEUE}", 0, job_id)
    redis.hset(f"rq:job:{job_id}", "status", "scheduled")
    redis.hset(f"rq:job:{job_id}", "description", "kept as it was")

    answer = reconcile()
    assert [(f["order_id"], f["where"]) for f in answer["findings"]] == [
        (order, "job scheduled, in no queue or registry")
    ]
    assert queued(redis).count(job_id) == 1
    assert redis.hget(f"rq:job:{job_id}", "description") == b"kept as it was"
    assert run("worker", "--burst").exit_code == 0
    assert provisioned(redis, integration, order)


def test_orders_in_every_legitimate_place_are_left_alone(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    orders = dispatched(redis, sim)
    queue = Queue(QUEUE, connection=redis)
    jobs = {job_id: Job.fetch(job_id, connection=redis) for _, _, job_id in orders}
    ids = [job_id for _, _, job_id in orders]
    # In the intermediate list (popped, not started): RQ's own move.
    popped = redis.lmove(f"rq:queue:{QUEUE}", f"rq:queue:{QUEUE}:intermediate")
    assert popped is not None
    in_intermediate = as_str(popped)
    rest = [i for i in ids if i != in_intermediate]
    # Started, as a worker's prepare_execution and prepare_job_execution leave it.
    started = rest[0]
    with redis.pipeline() as pipe:
        Execution.create(jobs[started], 60, pipe, worker_name="w")
        jobs[started].prepare_for_execution("w", pipe)
        pipe.lrem(queue.key, 1, started)
        pipe.execute()
    # Scheduled for a retry, deferred, failed: RQ's registries.
    scheduled = rest[1]
    with redis.pipeline() as pipe:
        jobs[scheduled].set_status(JobStatus.SCHEDULED, pipeline=pipe)
        queue.scheduled_job_registry.schedule(
            jobs[scheduled], now() + timedelta(hours=1), pipeline=pipe
        )
        pipe.lrem(queue.key, 1, scheduled)
        pipe.execute()
    deferred = rest[2]
    with redis.pipeline() as pipe:
        jobs[deferred].set_status(JobStatus.DEFERRED, pipeline=pipe)
        DeferredJobRegistry(QUEUE, connection=redis).add(jobs[deferred], pipeline=pipe)
        pipe.lrem(queue.key, 1, deferred)
        pipe.execute()
    failed = rest[3]
    with redis.pipeline() as pipe:
        jobs[failed].set_status(JobStatus.FAILED, pipeline=pipe)
        FailedJobRegistry(QUEUE, connection=redis).add(jobs[failed], pipeline=pipe)
        pipe.lrem(queue.key, 1, failed)
        pipe.execute()
    # Finished long ago: its job expired, its chain recorded as provisioned.
    done_integration, done_order, done = next(o for o in orders if o[2] == rest[4])
    redis.delete(f"rq:job:{done}")
    redis.lrem(queue.key, 1, done)
    redis.zadd(KEYS.provisioned, {order_ref(done_integration, done_order): 1.0})
    # Every configured step recorded (the chain is "log"), its job gone too.
    steps_integration, steps_order, steps_done = next(o for o in orders if o[2] == rest[5])
    redis.delete(f"rq:job:{steps_done}")
    redis.lrem(queue.key, 1, steps_done)
    redis.hset(KEYS.steps(steps_integration, steps_order), "log", "{}")
    before = {
        "queue": queued(redis),
        "intermediate": redis.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1),
        "statuses": [redis.hget(f"rq:job:{i}", "status") for i in ids],
    }

    answer = reconcile()
    assert answer["orders_checked"] == len(orders)
    assert answer["findings"] == []
    assert before == {
        "queue": queued(redis),
        "intermediate": redis.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1),
        "statuses": [redis.hget(f"rq:job:{i}", "status") for i in ids],
    }


def test_a_pending_result_whose_write_job_vanished_is_put_back_and_written(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    integration = sim.integration_ids[0]
    outbox = Outbox(redis, NS, "dispatcher-results")
    orders = [str(o["id"]) for o in sim.orders(integration, "OPEN")[:3]]
    for order in orders:
        submitted = run(
            "result", order, "--integration", integration, "--status", "COMPLETED",
            "--result-url", "https://vendor.example/r/1", "--no-wait",
        )  # fmt: skip
        assert submitted.exit_code == 0, submitted.stderr
    lost = outbox.get(integration, orders[1])
    assert lost is not None
    redis.delete(f"rq:job:{lost.job_id}")
    redis.lrem("rq:queue:dispatcher-results", 0, lost.job_id)

    answer = reconcile()
    assert answer["results_checked"] == 3
    assert [(f["kind"], f["order_id"], f["job_id"], f["where"]) for f in answer["findings"]] == [
        ("result", orders[1], lost.job_id, "no write job")
    ]
    assert answer["repaired"] == {"result": 1}
    assert redis.lrange("rq:queue:dispatcher-results", 0, -1).count(lost.job_id.encode()) == 1
    assert redis.llen("rq:queue:dispatcher-results") == 3

    worked = run("worker", "--results", "--burst")
    assert worked.exit_code == 0, worked.stderr
    assert outbox.counts() == {"pending": 0, "written": 3, "failed": 0}
    assert all(sim.applied_writes[(integration, o)] == 1 for o in orders)


def test_a_pending_result_whose_write_job_finished_without_it_is_put_back(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    """Issue 21's stranded result: pending, its job finished."""
    integration = sim.integration_ids[0]
    order = str(sim.orders(integration, "OPEN")[0]["id"])
    submitted = run(
        "result", order, "--integration", integration, "--status", "COMPLETED",
        "--result-url", "https://vendor.example/r/1", "--no-wait",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    outbox = Outbox(redis, NS, "dispatcher-results")
    record = outbox.get(integration, order)
    assert record is not None
    redis.lrem("rq:queue:dispatcher-results", 0, record.job_id)
    redis.hset(f"rq:job:{record.job_id}", "status", "finished")

    answer = reconcile()
    assert [f["where"] for f in answer["findings"]] == [
        "write job finished, not queued, scheduled or running"
    ]
    assert run("worker", "--results", "--burst").exit_code == 0
    assert outbox.counts()["written"] == 1


def test_dry_run_says_what_it_would_put_back_and_changes_nothing(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    orders = dispatched(redis, sim)
    integration, order, job_id = orders[5]
    lose(redis, job_id)
    before = {key: redis.dump(key) for key in redis.keys("*")}

    answer = reconcile("--dry-run")
    assert set(answer) == {
        "dry_run", "started_at", "duration", "orders_checked", "results_checked",
        "candidates", "repaired", "findings",
    }  # fmt: skip
    assert answer["dry_run"] is True and answer["repaired"] == {}
    assert answer["findings"] == [
        {
            "kind": "order",
            "integration_id": integration,
            "order_id": order,
            "job_id": job_id,
            "where": "no job",
            "action": "would put back",
        }
    ]
    assert {key: redis.dump(key) for key in redis.keys("*")} == before

    text = run("reconcile", "--grace", "0", "--dry-run")
    assert text.exit_code == 0
    assert text.stdout.splitlines() == [
        f"{len(orders)} orders and 0 pending results checked in "
        + text.stdout.split(" in ", 1)[1].split(";")[0]
        + "; would put back 1 (dry run: nothing changed)",
        f"  order {order} (integration {integration}, job {job_id}): no job; would put back",
    ]
    # --integration: another integration's orders are not looked at.
    assert reconcile("--dry-run", "--integration", "other:one")["orders_checked"] == 0


def test_an_order_with_nothing_to_rebuild_from_is_unmarked_and_dispatched_again(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    orders = dispatched(redis, sim)
    integration, order, job_id = orders[2]
    lose(redis, job_id)
    redis.delete(KEYS.dispatched(integration, order))

    answer = reconcile()
    assert [f["action"].split(" ")[0] for f in answer["findings"]] == ["unmarked"]
    assert answer["repaired"] == {"unmarked": 1}
    assert redis.hget(KEYS.seen(integration), order) is None
    assert run("poll", "--once").exit_code == 0
    assert queued(redis).count(job_id) == 1
    assert run("worker", "--burst").exit_code == 0
    assert provisioned(redis, integration, order)


@pytest.mark.slow
def test_a_running_poller_reconciles_by_itself(
    env: dict[str, str], redis: Redis, redis_url: str, sim: Simulator
) -> None:
    orders = dispatched(redis, sim)
    integration, order, job_id = orders[7]
    lose(redis, job_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "poll"],
        env=dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=env["KOMBO_BASE_URL"],
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=integration,
            DISPATCHER_RECONCILE_INTERVAL="1",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: job_id.encode() in redis.lrange(f"rq:queue:{QUEUE}", 0, -1),
                   timeout=60, what="the poller's reconciler to put the job back")  # fmt: skip
        wait_until(lambda: read_state(redis, KEYS).get("reconciled") == {"order": 1},
                   what="the pass to be recorded")  # fmt: skip
    finally:
        kill_tree(proc.pid)
        _, stderr = proc.communicate(timeout=30)
    assert f"order {order} (integration {integration}, job {job_id}): no job" in stderr
    assert stderr.count(f"order {order} ") == 1  # logged once
    assert queued(redis).count(job_id) == 1
    status = json.loads(run("status", "--json").stdout)
    assert status["reconcile"]["reconciled"] == {"order": 1}


def test_the_periodic_pass_runs_once_per_interval_under_one_lease(
    env: dict[str, str], redis: Redis, sim: Simulator
) -> None:
    dispatched(redis, sim)
    settings = load_settings()
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NS)
    reconciler = Reconciler(ledger, Outbox.from_settings(redis, settings), ["log"], grace=0)
    first = PeriodicReconcile(reconciler, 3600, "poller-a")
    second = PeriodicReconcile(reconciler, 3600, "poller-b", lease_ttl=0.5)
    assert first.run_if_due() is not None
    assert second.run_if_due() is None  # not due for an hour
    assert not redis.exists(KEYS.reconcile_lease)  # released after the pass
    # Due again, but a poller that died mid-pass still holds the lease: nobody runs it ...
    redis.hset(KEYS.reconcile, "next_at", 0)
    redis.set(KEYS.reconcile_lease, "poller-dead", px=300)
    assert second.run_if_due() is None
    # ... until the lease runs out; then one poller does.
    wait_until(lambda: not redis.exists(KEYS.reconcile_lease), what="the dead lease to expire")
    assert second.run_if_due() is not None
    assert first.run_if_due() is None
