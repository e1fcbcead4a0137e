"""A job's start and success as RQ records them, each in one script of the dispatcher's own.

RQ's ``prepare_execution`` and ``handle_job_success`` build their writes from Python objects
(the execution, the whole job hash re-saved, the result) into transactions of a dozen and
twenty commands; packing them was a third of a threaded worker's CPU per order. The scripts
write the same keys with the same values (``rq info``, rq-dashboard, ``Job.fetch`` and RQ's
maintenance read them as RQ's own), and the dispatcher decides their order:

- :func:`start`: the execution registered (its hash, the job's and the worker's executions,
  the started registry), the job marked started and taken out of the intermediate list, and
  the order's step records read (the first read of :class:`dispatcher.worker.steps.StepStore`).
- :func:`finish`: the success recorded only while the execution is still in the started
  registry: a job put back on the queue meanwhile (a warm shutdown's requeue, or the
  maintenance of another worker that found its heartbeat late) is finished by its requeued
  copy, not twice.

A job this does not cover (one that repeats, or keeps no result) goes through RQ's methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat

from dispatcher.store.lua import script
from dispatcher.store.rq_internals import (
    executions_key,
    finished_key,
    first_seen_key,
    intermediate_key,
    job_key,
    results_key,
    started_key,
)

__all__ = ["PendingFinish", "StepsRead", "finish", "start"]

_START = script("rq_job_start")
_FINISH = script("rq_job_finished")


@dataclass(frozen=True, slots=True)
class StepsRead:
    """The first read of an order's step records, done when its job starts: the steps hash,
    the field counting attempts and the hash's TTL."""

    key: str
    attempts_field: str
    ttl: int


def start(
    connection: Redis,
    job: Job,
    worker_name: str,
    heartbeat_ttl: int,
    *,
    leave_intermediate: bool,
    steps: StepsRead | None = None,
) -> tuple[Execution, list[Any] | None]:
    """Start ``job`` in one round trip: its execution, and (with ``steps``) its order's step
    records after this attempt is counted, as a flat list of fields and values (None when
    not read: the job function reads them itself)."""
    execution = Execution(
        id=uuid4().hex, job_id=job.id, connection=connection, worker_name=worker_name
    )
    execution._job = job
    started = execution.created_at
    job.worker_name = worker_name
    job.last_heartbeat = started
    job.started_at = started
    job._status = JobStatus.STARTED
    keys = [
        job.key,
        execution.key,
        executions_key(job.id),
        started_key(job.origin),
        execution.worker_executions_key,
        intermediate_key(job.origin),
        first_seen_key(job.origin, job.id),
        steps.key if steps is not None else "",
    ]
    args = [
        job.id,
        execution.id,
        repr(started.timestamp()),
        utcformat(started),
        heartbeat_ttl,
        worker_name,
        "1" if leave_intermediate else "0",
        steps.attempts_field if steps is not None else "",
        steps.ttl if steps is not None else 0,
    ]
    flat = _START(connection, keys, args)
    return execution, flat if isinstance(flat, list) else None


class PendingFinish:
    """The success of a started job, to be recorded by :func:`finish` or, sooner, in the round
    trip of its last step's record (:meth:`after_step`): the worker hands it to the job's
    run when it starts the job.

    ``take_next`` gives the command taking the worker thread's next job off the queue (or
    None: not now), sent after the success in the same round trip; what it took is in
    :attr:`taken` (the worker runs it next, its thread kept)."""

    def __init__(
        self,
        job: Job,
        execution: Execution,
        worker_key: str,
        result_ttl: int,
        *,
        take_next: Callable[[], tuple[Any, ...] | None] | None = None,
    ) -> None:
        self.job = job
        self.execution = execution
        self.worker_key = worker_key
        self.result_ttl = result_ttl
        self.sent = False
        self.dependents: int | None = None
        self.taken: list[Any] = []  # the take commands' replies
        self._take_next = take_next

    def after_step(self, steps_key: str, handler: str, result: Any) -> list[tuple[Any, ...]]:
        """The commands after the step ``handler``'s record (the job returns ``result``): the
        success, then the next job's take if any; :meth:`settle` takes their replies. A
        server that lost its scripts (restarted, failed over) answers NOSCRIPT: then
        :func:`finish` records the success on its own, loading the script."""
        self.job._result = result
        self.job.ended_at = now()
        keys, args = _finish_words(
            self.job, self.execution, self.worker_key, self.result_ttl, steps_key, handler
        )
        commands: list[tuple[Any, ...]] = [("EVALSHA", _FINISH.sha, len(keys), *keys, *args)]
        take = None if self._take_next is None else self._take_next()
        if take is not None:
            commands.append(take)
        return commands

    def settle(self, replies: list[Any]) -> None:
        """Take the replies of :meth:`after_step`'s commands (called once more when a round
        ran before the server had the scripts). An error, or a step record that was not
        written, leaves the success to :func:`finish` (or the job fails)."""
        success, *takes = replies
        self._keep_taken(takes)
        if self.sent or isinstance(success, Exception) or int(success) == -2:
            return
        self.sent = True
        self.dependents = _settled(self.job, int(success))

    def finish_now(self, connection: Redis) -> int | None:
        """Record the success on its own (no step record carried it: a write job, or a
        step's round trip that lost the script), with the next job's take in the same round
        trip; as :func:`finish`. What the take moved is in :attr:`taken`, also when the
        server lacked the script and the take ran twice."""
        take = None if self._take_next is None else self._take_next()
        if take is None:
            self.sent = True
            self.dependents = finish(
                connection, self.job, self.execution, self.worker_key, self.result_ttl
            )
            return self.dependents
        keys, args = _finish_words(self.job, self.execution, self.worker_key, self.result_ttl)
        repeated: list[list[Any]] = []
        success, *takes = _FINISH.followed_by(connection, keys, args, take, repeated=repeated)
        for earlier in repeated:
            self._keep_taken(earlier)
        self._keep_taken(takes)
        if isinstance(success, Exception):
            raise success
        self.sent = True
        self.dependents = _settled(self.job, int(success))
        return self.dependents

    def _keep_taken(self, replies: list[Any]) -> None:
        """The take commands' replies that moved jobs (an error moved nothing)."""
        self.taken.extend(reply for reply in replies if not isinstance(reply, Exception))


def finish(
    connection: Redis,
    job: Job,
    execution: Execution,
    worker_key: str,
    result_ttl: int,
) -> int | None:
    """Record ``job``'s success (see module); ``result_ttl`` > 0 or -1. Returns how many jobs
    depend on it (RQ's ``enqueue_dependents`` moves them), or None when the execution had
    left the started registry and nothing was written."""
    keys, args = _finish_words(job, execution, worker_key, result_ttl)
    return _settled(job, int(_FINISH(connection, keys, args)))


def _settled(job: Job, reply: int) -> int | None:
    if reply < 0:
        return None
    job._status = JobStatus.FINISHED
    return reply


def _finish_words(
    job: Job,
    execution: Execution,
    worker_key: str,
    result_ttl: int,
    steps_key: str = "",
    handler: str = "",
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of rq_job_finished.lua; ``steps_key`` and ``handler`` name the step
    whose record must be there (empty: a success on its own)."""
    assert job.started_at is not None and job.ended_at is not None
    ended: datetime = job.ended_at
    entry = Result(
        job_id=job.id,
        type=Result.Type.SUCCESSFUL,
        connection=job.connection,
        return_value=job._result,
        worker_name=execution.worker_name,
        serializer=job.serializer,
        execution_id=execution.id,
        execution_started_at=execution.created_at,
        execution_ended_at=ended,
    ).serialize()
    keys = [
        started_key(job.origin),
        job_key(job.id),
        execution.key,
        executions_key(job.id),
        execution.worker_executions_key,
        worker_key,
        finished_key(job.origin),
        results_key(job.id),
        job.dependents_key,
        job.dependencies_key,
        steps_key,
    ]
    args: list[Any] = [
        job.id,
        execution.id,
        int(time.time()),
        utcformat(ended),
        repr((ended - job.started_at).total_seconds()),
        result_ttl,
        handler,
    ]
    for field, value in entry.items():
        args.extend((field, value))
    return keys, args
