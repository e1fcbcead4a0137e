"""Every RQ internal that dispatcher/store/rq_internals.py lists still holds in the installed RQ.

Each failure names the internal that changed and where the dispatcher depends on it: after an
RQ upgrade, this is the file that says what to fix.
"""

from __future__ import annotations

import inspect
import re
import time
import tomllib
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis import Redis
from rq import Callback, Queue, Retry, SimpleWorker, Worker
from rq.executions import ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.worker import BaseWorker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from dispatcher.kombo.models import Order
from dispatcher.store import rq_internals as rqi
from dispatcher.store.job_options import JobOptions
from dispatcher.store.key_schema import SCHEMA
from dispatcher.store.ledger import JOB_FUNCTION, Ledger
from dispatcher.testing.sim import Simulator
from dispatcher.worker import base as dispatcher_worker
from dispatcher.worker.admission import OrderQueue
from dispatcher.worker.base import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL, WORKER_TTL
from dispatcher.worker.classes import DispatcherSimpleWorker, DispatcherWorker, InProcessWorker
from dispatcher.worker.retry import DispatcherJob
from dispatcher.worker.scheduler import ThreadScheduler
from dispatcher.worker.threaded import ThreadedWorker

QUEUE = "dispatcher-orders"
JOB_ID = "order-0123456789abcdef0123456789abcdef"


def changed(internal: str, where: str) -> str:
    return (
        f"RQ internal changed: {internal}. The dispatcher depends on it in {where}; "
        "see dispatcher/store/rq_internals.py"
    )


# -- version --------------------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_rq_is_a_supported_version() -> None:
    installed = _version(metadata.version("rq"))
    low, high = rqi.SUPPORTED_RQ
    assert low <= installed < high, changed(
        f"RQ version {metadata.version('rq')} is outside the supported range "
        f"{low} <= version < {high}",
        "every item of rq_internals.py: check them, then widen SUPPORTED_RQ and pyproject.toml",
    )


def test_pyproject_pins_rq_to_the_supported_range() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (requirement,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("rq")]
    low, high = rqi.SUPPORTED_RQ
    expected = f"rq>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    assert requirement.replace(" ", "") == expected, (
        f"pyproject.toml requires {requirement!r}, rq_internals.SUPPORTED_RQ says {expected!r}"
    )


# -- keys -----------------------------------------------------------------------------------


def _keys_rq_builds(redis: Any) -> dict[str, tuple[str, str, str]]:
    """name -> (ours, RQ's, where we use it)."""
    queue = Queue(QUEUE, connection=redis)
    intermediate = IntermediateQueue(queue.key, redis)
    return {
        "Queue.key (rq:queue:<queue>)": (
            rqi.queue_key(QUEUE),
            queue.key,
            "the dispatch and requeue scripts, status, forget",
        ),
        "Queue.redis_queues_keys (rq:queues)": (
            rqi.QUEUES_KEY,
            queue.redis_queues_keys,
            "the dispatch script, key_types.shared_keys",
        ),
        "IntermediateQueue.get_intermediate_queue_key": (
            rqi.intermediate_key(QUEUE),
            queue.intermediate_queue.key,
            "worker.requeue_stranded, forget",
        ),
        "IntermediateQueue.get_first_seen_key": (
            rqi.first_seen_key(QUEUE, JOB_ID),
            intermediate.get_first_seen_key(JOB_ID),
            "worker.requeue_stranded",
        ),
        "Job.key_for (rq:job:<id>)": (
            rqi.job_key(JOB_ID),
            Job.key_for(JOB_ID),
            "the dispatch and requeue scripts, forget",
        ),
        "Job.dependents_key_for": (
            rqi.dependents_key(JOB_ID),
            Job.dependents_key_for(JOB_ID),
            "forget",
        ),
        "Result.get_key (rq:results:<id>)": (
            rqi.results_key(JOB_ID),
            Result.get_key(JOB_ID),
            "failed, show, forget",
        ),
        "ExecutionRegistry key (rq:executions:<id>)": (
            rqi.executions_key(JOB_ID),
            ExecutionRegistry(JOB_ID, connection=redis).key,
            "forget",
        ),
        "StartedJobRegistry key (rq:wip:<queue>)": (
            rqi.started_key(QUEUE),
            StartedJobRegistry(QUEUE, connection=redis).key,
            "worker.requeue_abandoned, requeue_stranded, status",
        ),
        "FinishedJobRegistry key": (
            rqi.finished_key(QUEUE),
            FinishedJobRegistry(QUEUE, connection=redis).key,
            "status, forget",
        ),
        "FailedJobRegistry key": (
            rqi.failed_key(QUEUE),
            FailedJobRegistry(QUEUE, connection=redis).key,
            "failed, status, forget",
        ),
        "ScheduledJobRegistry key": (
            rqi.scheduled_key(QUEUE),
            ScheduledJobRegistry(QUEUE, connection=redis).key,
            "show (retry at), status, forget",
        ),
        "DeferredJobRegistry key": (
            rqi.deferred_key(QUEUE),
            DeferredJobRegistry(QUEUE, connection=redis).key,
            "status, forget",
        ),
        "CanceledJobRegistry key": (
            rqi.canceled_key(QUEUE),
            CanceledJobRegistry(QUEUE, connection=redis).key,
            "status, forget",
        ),
        "worker_registration.WORKERS_BY_QUEUE_KEY": (
            rqi.workers_key(QUEUE),
            WORKERS_BY_QUEUE_KEY % QUEUE,
            "status",
        ),
    }


def test_every_key_name_is_the_one_rq_uses(fake_redis: fakeredis.FakeRedis) -> None:
    for internal, (ours, theirs, where) in _keys_rq_builds(fake_redis).items():
        assert ours == theirs, changed(f"{internal}: RQ now uses {theirs!r}, not {ours!r}", where)


def test_the_documented_key_table_names_the_same_rq_keys(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # docs/redis-keys.md (key_schema.SCHEMA) describes RQ's keys too: it must describe these.
    patterns = [spec.regex("dispatcher", QUEUE) for spec in SCHEMA]
    for internal, (ours, _, _) in _keys_rq_builds(fake_redis).items():
        assert any(p.match(ours) for p in patterns), (
            f"{internal}: {ours!r} is not in key_schema.SCHEMA (docs/redis-keys.md)"
        )


def test_a_started_registry_entry_is_job_id_and_execution_id() -> None:
    assert rqi.started_job_id(f"{JOB_ID}:exec-1".encode()) == JOB_ID, changed(
        "StartedJobRegistry.parse_job_id no longer splits '<job id>:<execution id>'",
        "worker.requeue_abandoned, requeue_stranded",
    )


# -- job hash -------------------------------------------------------------------------------


def _order(sim: Simulator) -> tuple[str, Order]:
    integration_id = sim.integration_ids[0]
    return integration_id, Order.model_validate(sim.orders(integration_id)[0])


@pytest.mark.redis
def test_the_dispatch_script_writes_the_fields_queue_enqueue_writes(redis: Redis) -> None:
    # Given one order dispatched by the ledger, and the same job enqueued by RQ itself
    integration_id, order = _order(Simulator(1, 1, closed=0, seed=5))
    options = JobOptions()
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher", job_options=options)
    assert ledger.dispatch(integration_id, [order]).enqueued == [order.id]
    ours = redis.hgetall(rqi.job_key(ledger.job_id(integration_id, order.id)))
    rq_queue = Queue("rq-own", connection=redis)
    job = rq_queue.enqueue(
        JOB_FUNCTION,
        kwargs={"integration_id": integration_id, "order": order.to_payload()},
        job_id="rq-own-job",
        description="d",
        meta={"order_id": order.id},
        job_timeout=options.timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.failure_ttl,
        retry=Retry(max=len(options.retry_intervals), interval=list(options.retry_intervals)),
    )
    theirs = redis.hgetall(job.key)
    # Then the fields are the same: what Job.to_dict() gives, and what Queue.enqueue saves
    assert set(ours) == set(theirs), changed(
        f"the job hash Queue.enqueue writes: fields {sorted(set(theirs) - set(ours))} are "
        f"new, {sorted(set(ours) - set(theirs))} are gone",
        "the dispatch script (ledger.py, store/lua/_rq_enqueue.lua and rq_internals.job_hash_items)",
    )
    to_dict = {key.encode() for key in job.to_dict()}
    assert {f.encode() for f in rqi.JOB_OWN_FIELDS} <= to_dict, changed(
        f"Job.to_dict() lost one of {sorted(rqi.JOB_OWN_FIELDS)}",
        "ledger.Ledger._job_hashes (the fields written per order)",
    )
    for field_name in (b"status", b"enqueued_at", b"ended_at", b"meta", b"origin"):
        assert field_name in theirs, changed(
            f"the job hash has no {field_name.decode()!r} field",
            "the abandoned requeue script (status), status (enqueued_at, ended_at), forget",
        )
    # and RQ pushes a new job at the tail of its queue and registers the queue
    assert redis.lrange(rq_queue.key, -1, -1) == [b"rq-own-job"], changed(
        "Queue.enqueue no longer RPUSHes the job id", "store/lua/_rq_enqueue.lua"
    )
    assert redis.sismember(rqi.QUEUES_KEY, rq_queue.key), changed(
        "Queue.enqueue no longer adds the queue key to rq:queues", "store/lua/_rq_enqueue.lua"
    )


def test_job_data_is_the_tuple_rq_serializes_and_reads_uncompressed(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    kwargs = {"integration_id": "acme:1", "order": {"id": "o1"}}
    job = Job.create(
        JOB_FUNCTION, kwargs=kwargs, connection=fake_redis, id=JOB_ID, serializer=rqi.JOB_SERIALIZER
    )
    data = rqi.job_data(job.serializer.dumps, JOB_FUNCTION, kwargs)
    assert zlib.decompress(job.to_dict()["data"]) == data, changed(
        "Job.data is no longer the serialized (function, instance, args, kwargs)",
        "rq_internals.job_data (ledger.py writes it per order)",
    )
    hash_items = dict(zip(*[iter(rqi.job_hash_items(job))] * 2, strict=True))
    hash_items["data"] = data  # as the dispatch script stores it: uncompressed
    fake_redis.hset(rqi.job_key(JOB_ID), mapping=hash_items)
    restored = Job.fetch(JOB_ID, connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    assert (restored.func_name, restored.args, restored.kwargs) == (JOB_FUNCTION, [], kwargs), (
        changed("Job.restore no longer reads uncompressed data", "rq_internals.job_data")
    )


def test_job_refusal_reads_what_rq_keeps_of_a_job_it_cannot_read_and_its_callbacks(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # A job of before JSON jobs (RQ's default serializer, pickle), read as JSON
    Queue(QUEUE, connection=fake_redis).enqueue_call(
        JOB_FUNCTION, kwargs={"order": {}}, meta={"order_id": "o"}, job_id="old"
    )
    job = Job.fetch("old", connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    assert getattr(job, "_unreadable_meta", None) is not None, changed(
        "Job.restore no longer keeps the meta bytes it cannot read in Job._unreadable_meta",
        "rq_internals.unreadable_job (a worker would run a job with a pickled meta)",
    )
    assert rqi.job_refusal(job, {JOB_FUNCTION}) == (
        "its meta is a pickle (a job queued by a dispatcher before JSON jobs), never loaded"
    )
    fake_redis.hset(rqi.job_key("old"), "meta", b"{}")
    job = Job.fetch("old", connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    assert rqi.unreadable_job(job) == (
        "its data is a pickle (a job queued by a dispatcher before JSON jobs), never loaded"
    ), changed(
        "Job.func_name no longer raises DeserializationError for data its serializer refuses",
        "rq_internals.unreadable_job",
    )
    # A JSON job of ours is run; one with a callback (RQ imports it by name) is not
    json_queue = Queue(QUEUE, connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    json_queue.enqueue_call(JOB_FUNCTION, kwargs={}, job_id="ours")
    ours = Job.fetch("ours", connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    assert rqi.job_refusal(ours, {JOB_FUNCTION}) is None
    json_queue.enqueue_call(
        JOB_FUNCTION, kwargs={}, job_id="hooked", on_failure=Callback("os.system")
    )
    hooked = Job.fetch("hooked", connection=fake_redis, serializer=rqi.JOB_SERIALIZER)
    assert hooked._failure_callback_name == "os.system", changed(
        "Job keeps a callback's name elsewhere than _failure_callback_name",
        "rq_internals.job_refusal (a worker would import and call it)",
    )
    assert rqi.job_refusal(hooked, {JOB_FUNCTION}) == (
        "it names callbacks or webhooks, which the dispatcher never sets"
    )


def test_the_job_statuses_the_scripts_compare_are_rqs() -> None:
    ours = ("queued", "started", "scheduled", "failed", "finished")
    theirs = tuple(
        status.value
        for status in (
            JobStatus.QUEUED,
            JobStatus.STARTED,
            JobStatus.SCHEDULED,
            JobStatus.FAILED,
            JobStatus.FINISHED,
        )
    )
    assert theirs == ours, changed(
        f"JobStatus values {theirs}, not {ours}",
        "store/lua/_rq_where.lua (Lua compares the status field), forget",
    )


# -- registry semantics ---------------------------------------------------------------------


@pytest.mark.redis
def test_a_started_job_is_in_the_started_registry_until_its_heartbeat_deadline(
    redis: Redis,
) -> None:
    # Given a job taken by the dispatcher's worker
    queue = Queue(QUEUE, connection=redis)
    job = queue.enqueue(JOB_FUNCTION, job_id=JOB_ID, job_timeout=600)
    worker = DispatcherSimpleWorker([queue], connection=redis)
    before = time.time()
    # When RQ prepares its execution, as it does before running it
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    # Then the registry holds "<job id>:<execution id>" scored by the heartbeat deadline
    entries = redis.zrange(rqi.started_key(QUEUE), 0, -1, withscores=True)
    assert [entry for entry, _ in entries] == [f"{JOB_ID}:{execution.id}".encode()], changed(
        "the started registry's members are no longer '<job id>:<execution id>'",
        "worker.requeue_abandoned (ZREM of the entry), requeue_stranded",
    )
    deadline = entries[0][1]
    ttl = HEARTBEAT_INTERVAL + HEARTBEAT_GRACE
    assert before + ttl - 1 <= deadline <= time.time() + ttl + 1, changed(
        f"the started registry's score is no longer now + heartbeat TTL ({deadline - before:.0f}"
        f" s from now, expected {ttl})",
        "worker.requeue_abandoned (a score in the past means abandoned), RECOVERY_BOUND",
    )
    assert redis.hget(rqi.job_key(JOB_ID), "status") == b"started", changed(
        "a running job's status field is no longer 'started'", "rq_internals.REQUEUE_ABANDONED"
    )
    assert redis.exists(rqi.executions_key(JOB_ID)), changed(
        "a running job's executions no longer live in rq:executions:<id>", "forget"
    )


def _started_state(redis: Redis, job: Job, worker: BaseWorker, execution_id: str) -> dict[str, Any]:
    """What a started job leaves in Redis, ids and times left out."""
    execution_key = f"{rqi.PREFIX}:execution:{job.id}:{execution_id}"
    return {
        "job fields": sorted(redis.hgetall(job.key)),
        "status": redis.hget(job.key, "status"),
        "worker_name": redis.hget(job.key, "worker_name") == worker.name.encode(),
        "job ttl": redis.ttl(job.key),
        "started entry": redis.zscore(rqi.started_key(QUEUE), f"{job.id}:{execution_id}")
        is not None,
        "execution fields": sorted(redis.hgetall(execution_key)),
        "execution ttl": redis.ttl(execution_key) > 0,
        "job executions": redis.zrange(rqi.executions_key(job.id), 0, -1)
        == [execution_id.encode()],
        "worker executions": redis.smembers(f"{worker.key}:executions")
        == {f"{job.id}:{execution_id}".encode()},
        "intermediate": redis.lrange(rqi.intermediate_key(QUEUE), 0, -1),
        "first seen": redis.exists(rqi.first_seen_key(QUEUE, job.id)),
        "worker state": redis.hget(worker.key, "state"),
    }


@pytest.mark.redis
def test_the_threaded_workers_one_transaction_prepares_a_job_as_rqs_two_do(redis: Redis) -> None:
    # Given a job popped into the intermediate list (with its first-seen mark) for RQ's own
    # preparation, and one for the threaded worker's
    states = []
    for worker_class in (DispatcherSimpleWorker, ThreadedWorker):
        redis.flushall()
        queue = Queue(QUEUE, connection=redis, serializer=rqi.JOB_SERIALIZER)
        queue.enqueue(JOB_FUNCTION, job_id=JOB_ID, job_timeout=600)
        redis.lrem(rqi.queue_key(QUEUE), 0, JOB_ID)
        redis.rpush(rqi.intermediate_key(QUEUE), JOB_ID)
        rqi.mark_first_seen(redis, QUEUE, JOB_ID)
        redis.expire(rqi.job_key(JOB_ID), 3600)  # RQ persists a started job's hash
        worker = worker_class([queue], connection=redis)
        worker.register_birth()
        job = Job.fetch(JOB_ID, connection=redis, serializer=rqi.JOB_SERIALIZER)
        # When each prepares it as its loop does (prepare_execution, then perform_job's
        # prepare_job_execution)
        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
        states.append(_started_state(redis, job, worker, execution.id))
    # Then Redis holds the same
    assert states[0] == states[1], changed(
        "what prepare_execution and prepare_job_execution write",
        "ThreadedWorker.prepare_execution (worker/threaded.py), which does both at once",
    )
    assert states[1]["status"] == b"started" and states[1]["intermediate"] == []


def _finished_state(redis: Redis, job_id: str, worker: BaseWorker) -> dict[str, Any]:
    """What a finished job leaves in Redis, ids and times left out."""
    results = redis.xrange(rqi.results_key(job_id))
    return {
        "job fields": sorted(redis.hgetall(rqi.job_key(job_id))),
        "status": redis.hget(rqi.job_key(job_id), "status"),
        "job ttl": redis.ttl(rqi.job_key(job_id)),
        "results": [sorted(fields) for _, fields in results],
        "result value": [fields[b"return_value"] for _, fields in results],
        "results ttl": redis.ttl(rqi.results_key(job_id)),
        "finished": redis.zscore(rqi.finished_key(QUEUE), job_id) is not None,
        "started": redis.zcard(rqi.started_key(QUEUE)),
        "executions": redis.exists(rqi.executions_key(job_id)),
        "execution hashes": redis.keys(f"{rqi.PREFIX}:execution:*"),
        "worker executions": redis.scard(f"{worker.key}:executions"),
        "worker counts": (
            redis.hget(worker.key, "successful_job_count"),
            redis.hexists(worker.key, "total_working_time"),
        ),
    }


@pytest.mark.redis
def test_the_threaded_workers_one_transaction_finishes_a_job_as_rqs_handle_job_success(
    redis: Redis,
) -> None:
    # Given a started job, for RQ's own handle_job_success and for the threaded worker's
    states = []
    for worker_class in (DispatcherSimpleWorker, ThreadedWorker):
        redis.flushall()
        queue = Queue(QUEUE, connection=redis, serializer=rqi.JOB_SERIALIZER)
        queue.enqueue(JOB_FUNCTION, job_id=JOB_ID, job_timeout=600, result_ttl=500)
        worker = worker_class([queue], connection=redis)
        worker.register_birth()
        job = Job.fetch(JOB_ID, connection=redis, serializer=rqi.JOB_SERIALIZER)
        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
        job.ended_at = datetime.now(UTC)
        job._result = {"steps": {"a": 1}}
        job._status = JobStatus.FINISHED
        # When each records its success
        worker.handle_job_success(job, queue, queue.started_job_registry, execution)
        states.append(_finished_state(redis, JOB_ID, worker))
    # Then Redis holds the same
    assert states[0] == states[1], changed(
        "what handle_job_success writes",
        "ThreadedWorker._record_success (worker/threaded.py), which does it in one transaction",
    )
    assert states[1]["status"] == b"finished" and states[1]["finished"]


@pytest.mark.redis
def test_a_dependent_of_a_job_the_threaded_worker_finishes_is_enqueued(redis: Redis) -> None:
    # Given a started job that another job depends on (the dispatcher makes none)
    queue = Queue(QUEUE, connection=redis, serializer=rqi.JOB_SERIALIZER)
    queue.enqueue(JOB_FUNCTION, job_id=JOB_ID, job_timeout=600)
    worker = ThreadedWorker([queue], connection=redis)
    worker.register_birth()
    job = Job.fetch(JOB_ID, connection=redis, serializer=rqi.JOB_SERIALIZER)
    execution = worker.prepare_execution(job)
    dependent = queue.enqueue(JOB_FUNCTION, job_id="dependent", depends_on=JOB_ID)
    assert dependent.get_status() == JobStatus.DEFERRED
    job.ended_at = datetime.now(UTC)
    job._result = None
    job._status = JobStatus.FINISHED
    # When the threaded worker records the job's success
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    # Then the dependent is queued
    assert dependent.get_status() == JobStatus.QUEUED, changed(
        "how RQ moves a finished job's dependents (Queue.enqueue_dependents)",
        "ThreadedWorker._record_success",
    )
    assert b"dependent" in redis.lrange(rqi.queue_key(QUEUE), 0, -1)


@pytest.mark.redis
def test_failed_and_scheduled_registries_are_scored_by_expiry_and_by_run_time(
    redis: Redis,
) -> None:
    queue = Queue(QUEUE, connection=redis)
    job = queue.enqueue(JOB_FUNCTION, job_id=JOB_ID)
    now = time.time()
    FailedJobRegistry(QUEUE, connection=redis).add(job, ttl=1000)
    score = redis.zscore(rqi.failed_key(QUEUE), JOB_ID)
    assert score is not None and now + 999 <= score <= now + 1002, changed(
        "the failed registry's score is no longer the entry's expiry (now + TTL)",
        "failed (newest first, live ones only), status",
    )
    at = now + 3600
    ScheduledJobRegistry(QUEUE, connection=redis).schedule(job, datetime.fromtimestamp(at, UTC))
    score = redis.zscore(rqi.scheduled_key(QUEUE), JOB_ID)
    assert score is not None and abs(score - at) <= 1, changed(
        "the scheduled registry's score is no longer the unix time the job runs",
        "show (retry at)",
    )


@pytest.mark.redis
def test_first_seen_marks_are_rqs_and_read_back(redis: Redis) -> None:
    before = time.time()
    rqi.mark_first_seen(redis, QUEUE, JOB_ID)
    seen = rqi.first_seen(redis, QUEUE, JOB_ID)
    assert seen is not None and before - 1 <= seen.timestamp() <= time.time() + 1, changed(
        "IntermediateQueue.set_first_seen / get_first_seen", "worker.requeue_stranded"
    )
    assert redis.exists(rqi.first_seen_key(QUEUE, JOB_ID)), changed(
        "IntermediateQueue.get_first_seen_key", "worker.requeue_stranded"
    )
    redis.rpush(rqi.intermediate_key(QUEUE), JOB_ID)
    assert rqi.intermediate_job_ids(redis, QUEUE) == [JOB_ID], changed(
        "IntermediateQueue.get_job_ids", "worker.requeue_stranded"
    )


# -- classes and methods --------------------------------------------------------------------


def _accepts(ours: inspect.Signature, theirs: inspect.Signature) -> list[str]:
    """What a call RQ makes with ``theirs`` would fail on with ``ours``."""
    problems = []
    params = list(ours.parameters.values())
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind is not p.VAR_POSITIONAL}
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, param in enumerate(theirs.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_OR_KEYWORD and index < len(positional):
            if positional[index] != param.name and not var_pos:
                problems.append(f"parameter {index} is {param.name!r}, ours {positional[index]!r}")
        elif param.name not in names and not var_kw:
            problems.append(f"parameter {param.name!r} is new")
    ours_only = [
        p.name
        for p in params
        if p.name not in theirs.parameters
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    problems.extend(f"our required parameter {name!r} is not RQ's" for name in ours_only)
    return problems


_OVERRIDES: dict[tuple[str, str], Callable[..., Any]] = {
    ("rq.worker.BaseWorker", "__init__"): DispatcherWorker.__init__,
    ("rq.worker.BaseWorker", "get_heartbeat_ttl"): DispatcherWorker.get_heartbeat_ttl,
    ("rq.worker.BaseWorker", "clean_registries"): DispatcherWorker.clean_registries,
    ("rq.worker.Worker", "execute_job"): InProcessWorker.execute_job,
    ("rq.worker.SimpleWorker", "execute_job"): DispatcherSimpleWorker.execute_job,
    ("rq.worker.BaseWorker", "handle_job_failure"): DispatcherWorker.handle_job_failure,
    ("rq.worker.BaseWorker", "handle_job_success"): DispatcherWorker.handle_job_success,
    ("rq.worker.BaseWorker", "handle_exception"): DispatcherWorker.handle_exception,
    ("rq.queue.Queue", "dequeue_any"): OrderQueue.dequeue_any,
    ("rq.worker.BaseWorker", "work"): ThreadedWorker.work,
    ("rq.worker.BaseWorker", "set_state"): ThreadedWorker.set_state,
    ("rq.worker.BaseWorker", "_shutdown"): ThreadedWorker._shutdown,
    ("rq.worker.BaseWorker", "request_force_stop"): ThreadedWorker.request_force_stop,
    ("rq.worker.BaseWorker", "prepare_execution"): ThreadedWorker.prepare_execution,
    ("rq.worker.BaseWorker", "handle_execution_ended"): ThreadedWorker.handle_execution_ended,
    ("rq.worker.BaseWorker", "_start_scheduler"): ThreadedWorker._start_scheduler,
    ("rq.worker.BaseWorker", "stop_scheduler"): ThreadedWorker.stop_scheduler,
    ("rq.scheduler.RQScheduler", "start"): ThreadScheduler.start,
    ("rq.scheduler.RQScheduler", "_install_signal_handlers"): (
        ThreadScheduler._install_signal_handlers
    ),
    ("rq.worker.BaseWorker", "prepare_job_execution"): DispatcherWorker.prepare_job_execution,
    ("rq.worker.BaseWorker", "subscribe"): DispatcherWorker.subscribe,
    ("rq.worker.BaseWorker", "teardown"): DispatcherWorker.teardown,
    ("rq.job.Job", "retry"): DispatcherJob.retry,
    ("rq.job.Job", "_handle_retry_result"): DispatcherJob._handle_retry_result,
    ("rq.job.Job", "set_status"): DispatcherJob.set_status,
}


def test_the_list_of_overrides_is_the_one_in_rq_internals() -> None:
    assert set(_OVERRIDES) == set(rqi.OVERRIDDEN)


@pytest.mark.parametrize("owner, method", rqi.OVERRIDDEN, ids=lambda v: str(v))
def test_each_overridden_method_still_exists_with_a_compatible_signature(
    owner: str, method: str
) -> None:
    module, _, name = owner.rpartition(".")
    cls = getattr(import_module(module), name)
    theirs = inspect.getattr_static(cls, method, None)
    assert theirs is not None, changed(
        f"{owner}.{method} no longer exists (our override is never called)",
        "dispatcher/worker/ (base.py, classes.py, threaded.py)",
    )
    problems = _accepts(
        inspect.signature(_OVERRIDES[(owner, method)]), inspect.signature(getattr(cls, method))
    )
    assert not problems, changed(
        f"the signature of {owner}.{method}: " + "; ".join(problems),
        "dispatcher/worker/ (base.py, classes.py, threaded.py: its override)",
    )


def _binds(function: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    "internal, function, args, kwargs, where",
    [
        (
            "BaseWorker.prepare_execution(job)",
            BaseWorker.prepare_execution,
            ("w", "job"),
            {},
            "InProcessWorker.execute_job",
        ),
        (
            "BaseWorker.perform_job(job, queue, execution)",
            BaseWorker.perform_job,
            ("w", "job", "queue", "execution"),
            {},
            "InProcessWorker.execute_job",
        ),
        (
            "BaseWorker.set_state(state)",
            BaseWorker.set_state,
            ("w", "idle"),
            {},
            "InProcessWorker.execute_job",
        ),
        (
            "BaseWorker.maintain_heartbeats(job, execution)",
            BaseWorker.maintain_heartbeats,
            ("w", "job", "execution"),
            {},
            "InProcessWorker._heartbeat_until",
        ),
        ("Job.save_meta()", Job.save_meta, ("job",), {}, "rq_internals.save_meta"),
        (
            "Job._handle_success(ttl, pipeline=, worker_name=, execution_id=, ...)",
            Job._handle_success,
            ("job", 1),
            {
                "pipeline": None,
                "worker_name": "w",
                "execution_id": "e",
                "execution_started_at": None,
                "execution_ended_at": None,
            },
            "ThreadedWorker._record_success",
        ),
        (
            "Job.cleanup(ttl, pipeline=, remove_from_queue=)",
            Job.cleanup,
            ("job", 1),
            {"pipeline": None, "remove_from_queue": False},
            "ThreadedWorker._record_success",
        ),
        (
            "BaseWorker.cleanup_execution(job, pipeline=, execution=)",
            BaseWorker.cleanup_execution,
            ("w", "job"),
            {"pipeline": None, "execution": None},
            "ThreadedWorker._record_success",
        ),
        (
            "BaseWorker.increment_total_working_time(delta, pipeline)",
            BaseWorker.increment_total_working_time,
            ("w", 1.0, None),
            {},
            "ThreadedWorker._record_success",
        ),
        (
            "BaseWorker.increment_successful_job_count(pipeline=)",
            BaseWorker.increment_successful_job_count,
            ("w",),
            {"pipeline": None},
            "ThreadedWorker._record_success",
        ),
        (
            "Queue.enqueue_dependents(job)",
            Queue.enqueue_dependents,
            ("queue", "job"),
            {},
            "ThreadedWorker._record_success",
        ),
        ("rate_limit.release_slot(job)", rqi.release_slot, ("job",), {}, "ThreadedWorker"),
        (
            "Result.restore(job_id, result_id, payload, connection=)",
            Result.restore,
            ("job", "1-0", {}),
            {"connection": None},
            "ops/failed.py, ops/order_record.py (failed, show)",
        ),
        (
            "StartedJobRegistry.parse_job_id(entry)",
            StartedJobRegistry.parse_job_id,
            ("entry",),
            {},
            "rq_internals.started_job_id",
        ),
    ],
)
def test_each_rq_method_the_dispatcher_calls_takes_the_arguments_it_passes(
    internal: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    where: str,
) -> None:
    problem = _binds(function, *args, **kwargs)
    assert problem is None, changed(f"{internal}: {problem}", where)


def test_an_idle_worker_wakes_every_worker_ttl_less_15_seconds(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    worker = DispatcherSimpleWorker([QUEUE], connection=fake_redis, prepare_for_work=False)
    assert worker.worker_ttl == WORKER_TTL
    assert worker.dequeue_timeout == WORKER_TTL - 15, changed(
        f"BaseWorker.dequeue_timeout is {worker.dequeue_timeout}, not worker_ttl - 15",
        "worker/base.py, RECOVERY_BOUND",
    )


def test_the_worker_classes_are_rqs_with_the_mixin_first() -> None:
    # The mixin's overrides win over RQ's (SimpleWorker has its own get_heartbeat_ttl).
    for ours, theirs in ((DispatcherWorker, Worker), (DispatcherSimpleWorker, SimpleWorker)):
        mro = ours.__mro__
        assert mro.index(dispatcher_worker.DispatcherWorkerMixin) < mro.index(theirs)
        assert ours.get_heartbeat_ttl is dispatcher_worker.DispatcherWorkerMixin.get_heartbeat_ttl


def test_rq_still_logs_each_lifecycle_message_the_worker_keeps_at_info() -> None:
    import rq.worker.base

    source = inspect.getsource(rq.worker.base)
    for prefix in rqi.RQ_LIFECYCLE_MESSAGES:
        assert f"'{prefix}" in source or f'"{prefix}' in source, changed(
            f"RQ no longer logs a line starting {prefix!r}", "RQ_LIFECYCLE_MESSAGES"
        )


def _calls(function: Callable[..., Any]) -> set[str]:
    """The names ``function``'s source calls (``name(`` or ``.name(``)."""
    return set(re.findall(r"(\w+)\(", inspect.getsource(function)))


def test_the_worker_cleans_every_registry_rqs_maintenance_cleans_but_the_started_one() -> None:
    import rq.registry

    theirs = set(re.findall(r"\b(\w+Registry)\b", inspect.getsource(rq.registry.clean_registries)))
    ours = {cls.__name__ for cls in rqi._CLEANED_HERE} | {"RateLimitRegistry"}
    assert theirs == ours | {"StartedJobRegistry"}, changed(
        f"rq.registry.clean_registries now cleans {sorted(theirs)}",
        "rq_internals.clean_registries_but_started (clean the new one too)",
    )
    worker_calls = _calls(BaseWorker.clean_registries)
    expected = {
        "acquire_maintenance_lock",
        "clean_registries",
        "clean_worker_registry",
        "cleanup",  # queue.intermediate_queue.cleanup: not run (RQ_CLEANED_ELSEWHERE)
        "release_maintenance_lock",
        "now",
        "info",
    }
    assert worker_calls == expected, changed(
        f"BaseWorker.clean_registries now calls {sorted(worker_calls - expected)} "
        f"(no longer {sorted(expected - worker_calls)})",
        "_DispatcherWorkerMixin.clean_registries (it replaces RQ's)",
    )


def test_rq_writes_a_retried_jobs_status_through_set_status() -> None:
    # DispatcherJob catches the write there; a direct HSET would bypass it.
    for method in (Job.retry, Job._handle_retry_result):
        source = inspect.getsource(method)
        assert "self.set_status(JobStatus.SCHEDULED)" in source and "hset" not in source, changed(
            f"Job.{method.__name__} no longer writes the status through self.set_status",
            "worker/retry.py DispatcherJob",
        )


def test_rqs_subscribe_is_what_the_workers_override_repeats() -> None:
    source = inspect.getsource(BaseWorker.subscribe)
    for part in (
        "self.connection.pubsub()",
        "self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})",
        "run_in_thread(",
        "exception_handler=self._pubsub_exception_handler",
    ):
        assert part in source, changed(
            f"BaseWorker.subscribe no longer does {part!r}", "_DispatcherWorkerMixin.subscribe"
        )
