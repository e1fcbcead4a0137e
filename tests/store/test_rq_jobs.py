"""A job's start and success in the dispatcher's own scripts (dispatcher.store.rq_jobs, issue
25): Redis holds exactly what RQ's own ``prepare_execution`` and ``handle_job_success`` leave
(every key, type, field, member and TTL, but the execution's id and the clocks), and a
success met after the execution was put back on the queue writes nothing; against a real
Redis."""

from __future__ import annotations

import re
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.utils import now
from rq.worker import WorkerStatus

from dispatcher.store import rq_jobs
from dispatcher.store.rq_internals import JOB_SERIALIZER, intermediate_key, queue_key
from dispatcher.worker.recovery import requeue_entry

QUEUE = "rq-jobs-test"
JOB_ID = "order-1"
STEPS = rq_jobs.StepsRead("test:steps:greenhouse:AAAA:o1", "_attempts", 600)
RESULT = {"order_id": "o1", "steps": {"provision": {"test_url": "https://t.example/1"}}}
_HEX32 = re.compile(rb"[0-9a-f]{32}")
_CLOCK = re.compile(rb"\d{4}-\d\d-\d\dT[\d:.]+Z|\d{9,}(\.\d+)?(-\d+)?")


def _popped(redis: Redis) -> tuple[Queue, Job, SimpleWorker]:
    """A job as a worker's pop leaves it: in the intermediate list, with a first-seen mark."""
    queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
    queue.enqueue("builtins.print", "x", job_id=JOB_ID, result_ttl=500)
    redis.lmove(queue_key(QUEUE), intermediate_key(QUEUE), "LEFT", "RIGHT")
    redis.set(f"{intermediate_key(QUEUE)}:first_seen:{JOB_ID}", "1")
    worker = SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER, name="w1")
    worker.register_birth()
    job = Job.fetch(JOB_ID, connection=redis, serializer=JOB_SERIALIZER)
    return queue, job, worker


def _snapshot(redis: Redis, execution_id: str) -> dict[bytes, Any]:
    """Every key: its type, content and whether it expires; the execution id and the clocks
    masked (they differ between two runs)."""

    def mask(value: bytes) -> bytes:
        return _CLOCK.sub(b"<t>", value.replace(execution_id.encode(), b"<x>"))

    shot: dict[bytes, Any] = {}
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"hash":
            content: Any = {k: mask(v) for k, v in redis.hgetall(key).items()}
        elif kind == b"zset":
            content = sorted(mask(m) for m in redis.zrange(key, 0, -1))
        elif kind == b"set":
            content = sorted(mask(m) for m in redis.smembers(key))
        elif kind == b"list":
            content = [mask(m) for m in redis.lrange(key, 0, -1)]
        elif kind == b"stream":
            content = [{k: mask(v) for k, v in e.items()} for _, e in redis.xrange(key)]
        else:
            content = mask(redis.get(key) or b"")
        shot[mask(key)] = (kind, content, redis.ttl(key) > 0)
    return shot


def _worker_times_masked(shot: dict[bytes, Any]) -> dict[bytes, Any]:
    # The worker's total working time is a duration: it differs between the runs.
    for kind, content, _expires in shot.values():
        if kind == b"hash" and b"total_working_time" in content:
            content[b"total_working_time"] = b"<d>"
    return shot


def test_start_writes_what_rqs_prepare_execution_writes(redis: Redis) -> None:
    _, job, worker = _popped(redis)
    execution = worker.prepare_execution(job)  # RQ's own, as a stock worker runs them
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    redis.delete(f"{intermediate_key(QUEUE)}:first_seen:{JOB_ID}")
    redis.hincrby(STEPS.key, STEPS.attempts_field, 1)
    redis.expire(STEPS.key, STEPS.ttl)
    rqs = _snapshot(redis, execution.id)

    redis.flushdb()
    _, job, worker = _popped(redis)
    worker.set_state(WorkerStatus.BUSY)  # the threaded worker's, when its state changes
    ttl = worker.get_heartbeat_ttl(job)
    mine, steps = rq_jobs.start(redis, job, worker.name, ttl, leave_intermediate=True, steps=STEPS)
    assert _snapshot(redis, mine.id) == rqs
    assert steps == [b"_attempts", b"1"]
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert StartedJobRegistry(QUEUE, connection=redis).get_job_ids() == [JOB_ID]


def test_finish_writes_what_rqs_handle_job_success_writes(redis: Redis) -> None:
    queue, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    job.ended_at, job._result = now(), RESULT
    SimpleWorker.handle_job_success(worker, job, queue, job.started_job_registry, execution)
    rqs = _worker_times_masked(_snapshot(redis, execution.id))

    redis.flushdb()
    queue, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    job.ended_at, job._result = now(), RESULT
    assert rq_jobs.finish(redis, job, execution, worker.key, 500) == 0
    assert _worker_times_masked(_snapshot(redis, execution.id)) == rqs
    fetched = Job.fetch(JOB_ID, connection=redis, serializer=JOB_SERIALIZER)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == RESULT
    assert FinishedJobRegistry(QUEUE, connection=redis).get_job_ids() == [JOB_ID]


def test_finish_after_a_requeue_writes_nothing(redis: Redis) -> None:
    # A warm shutdown (or another worker's maintenance) put the execution back on the queue
    # while the job was still running here: its requeued copy finishes it, not this one.
    _, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    assert requeue_entry(redis, QUEUE, execution.composite_key, JOB_ID)
    before = _snapshot(redis, execution.id)
    job.ended_at, job._result = now(), RESULT
    assert rq_jobs.finish(redis, job, execution, worker.key, 500) is None
    assert _snapshot(redis, execution.id) == before
    assert redis.lrange(queue_key(QUEUE), 0, -1) == [JOB_ID.encode()]
    assert FinishedJobRegistry(QUEUE, connection=redis).get_job_ids() == []


def test_a_success_after_the_last_step_is_written_only_with_that_steps_record(
    redis: Redis,
) -> None:
    # The threaded worker records the success in the round trip of the last step's record,
    # after it: if that record was not written (its script refused a key of another type),
    # neither is the success, and the job fails with the refusal instead.
    _, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    pending = rq_jobs.PendingFinish(job, execution, worker.key, 500)
    redis.script_load(rq_jobs._FINISH.source)  # the script runs, and refuses
    redis.set(STEPS.key, "not a hash")
    pending.settle(_replies(redis, pending.after_step(STEPS.key, "provision", RESULT)))
    assert not pending.sent
    redis.delete(STEPS.key)
    redis.hset(STEPS.key, "_attempts", 1)  # the hash, without the step's record
    pending.settle(_replies(redis, pending.after_step(STEPS.key, "provision", RESULT)))
    assert not pending.sent
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert FinishedJobRegistry(QUEUE, connection=redis).get_job_ids() == []

    redis.hset(STEPS.key, "provision", "{}")
    pending.settle(_replies(redis, pending.after_step(STEPS.key, "provision", RESULT)))
    assert pending.sent and pending.dependents == 0
    fetched = Job.fetch(JOB_ID, connection=redis, serializer=JOB_SERIALIZER)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == RESULT
    assert StartedJobRegistry(QUEUE, connection=redis).get_job_ids() == []


def test_a_server_without_the_script_gets_the_success_on_its_own(redis: Redis) -> None:
    # Redis restarted (or failed over) since the script was loaded: the command riding with
    # the last step answers NOSCRIPT, and the worker records the success with finish().
    from redis.exceptions import NoScriptError

    _, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    pending = rq_jobs.PendingFinish(job, execution, worker.key, 500)
    redis.hset(STEPS.key, "provision", "{}")
    redis.script_flush()
    with redis.pipeline(transaction=False) as pipe:
        [command] = pending.after_step(STEPS.key, "provision", RESULT)
        pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], NoScriptError)
    pending.settle(replies)
    assert not pending.sent
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert rq_jobs.finish(redis, job, execution, worker.key, 500) == 0
    fetched = Job.fetch(JOB_ID, connection=redis, serializer=JOB_SERIALIZER)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == RESULT


def _replies(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    return [redis.execute_command(*command) for command in commands]


def test_a_success_on_its_own_carries_the_next_take_even_when_the_script_was_missing(
    redis: Redis,
) -> None:
    # A write job has no step record to carry its success: finish_now records it with the
    # thread's next take in one round trip. On a server that lost the script, the take ran
    # in both rounds: both replies are reported, so that every job taken off the queue runs.
    _, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    redis.rpush("next-jobs", "a", "b", "c")
    take = ("LPOP", "next-jobs")
    pending = rq_jobs.PendingFinish(job, execution, worker.key, 500, take_next=lambda: take)
    job.ended_at, job._result = now(), RESULT
    redis.script_flush()
    assert pending.finish_now(redis) == 0
    assert pending.sent
    assert pending.taken == [b"a", b"b"]
    fetched = Job.fetch(JOB_ID, connection=redis, serializer=JOB_SERIALIZER)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == RESULT
    # With the script loaded (a flushdb keeps it): one round, one take
    redis.flushdb()
    redis.rpush("next-jobs", "c")
    _, job, worker = _popped(redis)
    execution, _ = rq_jobs.start(redis, job, worker.name, 420, leave_intermediate=True)
    job.ended_at, job._result = now(), RESULT
    pending = rq_jobs.PendingFinish(job, execution, worker.key, 500, take_next=lambda: take)
    assert pending.finish_now(redis) == 0
    assert pending.taken == [b"c"]
