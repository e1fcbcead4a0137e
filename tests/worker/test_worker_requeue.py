"""Abandoned and stranded jobs are put back by where they are, not by their status; a retried
job's status commits with its registry move; first-seen marks live one visit (issue 21)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry, SimpleWorker, Worker
from rq.job import Job, JobStatus

from dispatcher.store import rq_internals as rqi
from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.worker import recovery
from dispatcher.worker.classes import DispatcherSimpleWorker, DispatcherWorker, InProcessWorker
from dispatcher.worker.retry import DispatcherJob
from dispatcher.worker.threaded import threaded_worker_class

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"
JOB = "order-requeue"

# (status written, where the job is) -> left alone?
PLACES: list[tuple[str | None, str | None, bool]] = [
    ("finished", None, True),
    ("failed", "failed", True),
    ("failed", None, False),
    ("scheduled", "scheduled", True),
    ("scheduled", None, False),  # the retry gap: status written, registry move lost
    ("scheduled", "queue", False),  # a status that does not say where it is: put back
    ("queued", "queue", True),
    ("queued", "queue-far", True),  # past the first LRANGE page of the scan
    ("queued", "intermediate", True),  # popped by a worker that will start it
    ("queued", None, False),
    ("queued", "failed", False),
    ("started", None, False),
    ("stopped", None, False),
    ("canceled", None, False),
    (None, None, False),  # no status field
    ("missing", None, True),  # no job hash at all: nothing to put back (RQ would drop it)
]


def _place(redis: Redis, status: str | None, where: str | None) -> None:
    if status != "missing":
        redis.hset(rqi.job_key(JOB), mapping={"origin": QUEUE, "created_at": "x"})
        if status is not None:
            redis.hset(rqi.job_key(JOB), "status", status)
    if where == "failed":
        redis.zadd(rqi.failed_key(QUEUE), {JOB: time.time() + 1000})
    elif where == "scheduled":
        redis.zadd(rqi.scheduled_key(QUEUE), {JOB: time.time() + 1000})
    elif where == "queue":
        redis.rpush(rqi.queue_key(QUEUE), "other-1", JOB, "other-2")
    elif where == "queue-far":
        redis.rpush(rqi.queue_key(QUEUE), *[f"other-{i}" for i in range(1500)], JOB)
    elif where == "intermediate":
        redis.rpush(rqi.intermediate_key(QUEUE), JOB)


def _queue_count(redis: Redis) -> int:
    return sum(1 for v in redis.lrange(rqi.queue_key(QUEUE), 0, -1) if v == JOB.encode())


@pytest.fixture(params=["lpos", "scan"])
def search_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the scripts find a job in a list: LPOS (Redis >= 6.0.6) and the LRANGE scan
    (Redis 5.0 to 6.0.5, which the dispatcher supports)."""
    mode: str = request.param
    monkeypatch.setattr(recovery, "list_search_mode", lambda connection: mode)
    return mode


@pytest.mark.parametrize("status, where, left_alone", PLACES, ids=str)
def test_an_abandoned_job_is_put_back_unless_it_is_where_its_status_says(
    redis: Redis, search_mode: str, status: str | None, where: str | None, left_alone: bool
) -> None:
    # Given a started-registry entry whose heartbeat ran out, for a job in this state
    _place(redis, status, where)
    redis.zadd(rqi.started_key(QUEUE), {f"{JOB}:exec-1": time.time() - 1})
    in_queue = _queue_count(redis)
    # When a worker's maintenance finds it
    requeued = recovery.requeue_abandoned(redis, QUEUE)
    # Then the entry is gone either way, and the job is on its queue once more only if it
    # was nowhere a worker would find it
    assert redis.zcard(rqi.started_key(QUEUE)) == 0
    assert requeued == (0 if left_alone else 1)
    assert _queue_count(redis) == in_queue + (0 if left_alone else 1)
    if status == "missing":
        assert not redis.exists(rqi.job_key(JOB))  # no half job hash created
        assert _queue_count(redis) == 0
    elif not left_alone:
        assert redis.hget(rqi.job_key(JOB), "status") == b"queued"
    else:
        assert redis.hget(rqi.job_key(JOB), "status") == status.encode()  # type: ignore[union-attr]


@pytest.mark.parametrize("status, where, left_alone", PLACES, ids=str)
def test_a_stranded_job_is_put_back_unless_it_is_where_its_status_says(
    redis: Redis, search_mode: str, status: str | None, where: str | None, left_alone: bool
) -> None:
    # Given a job in the intermediate list, popped long ago by a worker that never started it
    if where == "intermediate" and status != "missing":
        left_alone = False  # that copy is the stranded one: it is taken off, then nowhere
    _place(redis, status, None if where == "intermediate" else where)
    redis.rpush(rqi.intermediate_key(QUEUE), JOB)
    redis.set(rqi.first_seen_key(QUEUE, JOB), time.time() - 60)
    in_queue = _queue_count(redis)
    # When a worker's maintenance finds it
    requeued = recovery.requeue_stranded(redis, QUEUE)
    # Then it is off the intermediate list with its mark, and on its queue once more only if
    # it was nowhere else a worker would find it
    assert redis.llen(rqi.intermediate_key(QUEUE)) == 0
    assert not redis.exists(rqi.first_seen_key(QUEUE, JOB))
    assert requeued == (0 if left_alone else 1)
    assert _queue_count(redis) == in_queue + (0 if left_alone else 1)
    if status == "missing":
        assert not redis.exists(rqi.job_key(JOB))


def test_maintenance_puts_back_an_expired_job_rqs_own_cleanup_would_drop(redis: Redis) -> None:
    # Given the state a kill between RQ's status write and its registry move leaves: status
    # scheduled, in no registry but the started one, heartbeat run out
    queue = Queue(QUEUE, connection=redis)
    job = queue.enqueue(JOB_FUNCTION, job_id=JOB, retry=Retry(max=2, interval=[1, 1]))
    redis.lrem(rqi.queue_key(QUEUE), 0, JOB)
    job.set_status(JobStatus.SCHEDULED)
    redis.zadd(rqi.started_key(QUEUE), {f"{JOB}:exec-1": time.time() - 1})
    worker = DispatcherSimpleWorker([queue], connection=redis)
    # When the worker's maintenance runs (with RQ's registry cleanups)
    worker.clean_registries()
    # Then the job is back on its queue (RQ's StartedJobRegistry.cleanup dropped it)
    assert redis.lrange(rqi.queue_key(QUEUE), 0, -1) == [JOB.encode()]
    assert redis.hget(rqi.job_key(JOB), "status") == b"queued"
    assert redis.zcard(rqi.started_key(QUEUE)) == 0


def _failing_job(redis: Redis) -> tuple[Queue, Job]:
    queue = Queue(QUEUE, connection=redis, job_class=DispatcherJob)
    job = queue.enqueue(JOB_FUNCTION, job_id=JOB, retry=Retry(max=2, interval=[30, 60]))
    fetched = DispatcherJob.fetch(JOB, connection=redis)
    fetched.set_status(JobStatus.STARTED)
    assert job.id == fetched.id
    return queue, fetched


def test_a_retry_writes_the_status_only_when_its_pipeline_commits(redis: Redis) -> None:
    # Given a started job with retries left
    queue, job = _failing_job(redis)
    with redis.pipeline() as pipeline:
        # When RQ schedules its retry in the failure pipeline
        job.retry(queue, pipeline)
        # Then nothing is written before the pipeline runs (RQ wrote status=scheduled here)
        assert redis.hget(rqi.job_key(JOB), "status") == b"started"
        assert redis.zscore(rqi.scheduled_key(QUEUE), JOB) is None
        pipeline.execute()
    # And both are written together when it does
    assert redis.hget(rqi.job_key(JOB), "status") == b"scheduled"
    assert redis.zscore(rqi.scheduled_key(QUEUE), JOB) is not None
    # And a plain status write outside a retry still goes straight to Redis
    job.set_status(JobStatus.QUEUED)
    assert redis.hget(rqi.job_key(JOB), "status") == b"queued"


def test_a_failed_attempt_handled_by_the_worker_commits_status_and_registry_together(
    redis: Redis,
) -> None:
    # Given a job of the dispatcher's worker that failed with retries left
    queue, job = _failing_job(redis)
    worker = DispatcherSimpleWorker([queue], connection=redis)
    writes: list[tuple[Any, ...]] = []
    original = redis.execute_command

    def spy(*args: Any, **kwargs: Any) -> Any:
        writes.append(args)
        return original(*args, **kwargs)

    redis.execute_command = spy  # type: ignore[method-assign]
    try:
        worker.handle_job_failure(job, queue, exc_string="vendor busy")
    finally:
        redis.execute_command = original  # type: ignore[method-assign]
    # Then no status was written as a command of its own (only inside the pipeline)
    assert not [w for w in writes if w[:1] == ("HSET",) and "status" in w], writes
    assert redis.hget(rqi.job_key(JOB), "status") == b"scheduled"
    assert redis.zscore(rqi.scheduled_key(QUEUE), JOB) is not None


def test_every_worker_mode_runs_its_jobs_as_dispatcher_jobs(redis: Redis) -> None:
    classes: list[type[Worker] | type[SimpleWorker]] = [
        DispatcherWorker,
        DispatcherSimpleWorker,
        InProcessWorker,
        threaded_worker_class(4, 5.0),
    ]
    for cls in classes:
        # as run_worker builds them, and as RQ's worker pool does (job_class=Job)
        for kwargs in ({}, {"job_class": Job}):
            worker = cls([QUEUE], connection=redis, prepare_for_work=False, **kwargs)
            assert worker.job_class is DispatcherJob, (cls, kwargs)
            assert all(q.job_class is DispatcherJob for q in worker.queues), (cls, kwargs)


def test_a_retried_job_with_a_mark_from_its_last_visit_is_not_taken_for_stranded(
    redis: Redis,
) -> None:
    # Given a job a worker popped, that maintenance saw there (its first-seen mark), and that
    # the worker then started; the mark dates from a minute ago (a long backoff since)
    queue = Queue(QUEUE, connection=redis)
    job = queue.enqueue(JOB_FUNCTION, job_id=JOB)
    redis.lmove(rqi.queue_key(QUEUE), rqi.intermediate_key(QUEUE))
    assert recovery.requeue_stranded(redis, QUEUE) == 0  # first sighting: marked
    assert redis.exists(rqi.first_seen_key(QUEUE, JOB))
    redis.set(rqi.first_seen_key(QUEUE, JOB), time.time() - 60)
    worker = DispatcherSimpleWorker([queue], connection=redis)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    # When, its attempt over, the job is queued for its retry and popped again
    redis.delete(rqi.started_key(QUEUE))
    redis.rpush(rqi.queue_key(QUEUE), JOB)
    redis.lmove(rqi.queue_key(QUEUE), rqi.intermediate_key(QUEUE))
    # Then maintenance sees a first sighting, not a job stranded for a minute: it is not
    # queued a second time while the worker that popped it runs it
    assert recovery.requeue_stranded(redis, QUEUE) == 0
    assert redis.llen(rqi.queue_key(QUEUE)) == 0
    assert redis.lrange(rqi.intermediate_key(QUEUE), 0, -1) == [JOB.encode()]


def test_a_job_is_marked_first_seen_only_while_it_is_in_the_intermediate_list(
    redis: Redis, search_mode: str
) -> None:
    mark = rqi.MARK_FIRST_SEEN
    keys = [rqi.intermediate_key(QUEUE), rqi.first_seen_key(QUEUE, JOB)]
    # A job a worker started between maintenance reading the list and marking it: no mark
    assert mark(redis, keys, [JOB, time.time(), search_mode]) == 0
    assert not redis.exists(rqi.first_seen_key(QUEUE, JOB))
    # A job still there: marked once, the first time kept
    redis.rpush(rqi.intermediate_key(QUEUE), JOB)
    assert mark(redis, keys, [JOB, 100.0, search_mode]) == 1
    assert mark(redis, keys, [JOB, 200.0, search_mode]) == 0
    assert redis.get(rqi.first_seen_key(QUEUE, JOB)) == b"100.0"
    assert 0 < redis.ttl(rqi.first_seen_key(QUEUE, JOB)) <= 86400


def test_rqs_own_cleanups_never_drop_an_expired_entry_of_a_job_not_started(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an entry that ran out just after the worker's own requeue pass looked (its
    # job's status written, its registry move lost)
    queue = Queue(QUEUE, connection=redis)
    queue.enqueue(JOB_FUNCTION, job_id=JOB)
    redis.lrem(rqi.queue_key(QUEUE), 0, JOB)
    redis.hset(rqi.job_key(JOB), "status", "scheduled")
    redis.zadd(rqi.started_key(QUEUE), {f"{JOB}:exec-1": time.time() - 1})
    worker = DispatcherSimpleWorker([queue], connection=redis)
    monkeypatch.setattr(worker, "requeue_abandoned", lambda queue: 0)
    # When the rest of the maintenance pass (RQ's registry cleanups) runs
    worker.clean_registries()
    # Then the entry is still there for the next requeue pass (RQ's StartedJobRegistry
    # cleanup removed it, and with it the last trace of the job)
    assert redis.zrange(rqi.started_key(QUEUE), 0, -1) == [f"{JOB}:exec-1".encode()]
    monkeypatch.undo()
    assert worker.requeue_abandoned(queue) == 1
    assert redis.lrange(rqi.queue_key(QUEUE), 0, -1) == [JOB.encode()]


def test_an_id_without_a_job_is_dropped_from_the_intermediate_list_not_cycled(
    redis: Redis,
) -> None:
    # Given an id in the intermediate list whose job hash is gone (RQ's pop leaves it there)
    redis.rpush(rqi.intermediate_key(QUEUE), JOB)
    redis.set(rqi.first_seen_key(QUEUE, JOB), time.time() - 60)
    # When maintenance finds it stranded, then it is dropped: queued, RQ would only pop it
    # into the intermediate list again, every pass, for ever
    assert recovery.requeue_stranded(redis, QUEUE) == 0
    assert redis.llen(rqi.intermediate_key(QUEUE)) == 0
    assert redis.llen(rqi.queue_key(QUEUE)) == 0
    assert not redis.exists(rqi.first_seen_key(QUEUE, JOB))
