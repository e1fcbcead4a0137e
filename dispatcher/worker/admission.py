"""Taking a job off a queue: which taken jobs a worker runs (:func:`admit`), the queue class
that checks each one as RQ takes it (:class:`OrderQueue`), the fair feeder of the orders
queue and its in-flight leases, and the log context a job's lines are tagged with.

A job that is not JSON or not one of the dispatcher's is failed without being run; a job of
another namespace (a queue name shared by two namespaces) is put back on its queue untouched
for that namespace's workers; a job whose integration is at its in-flight cap waits at the
head of its list.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.utils import now

from dispatcher.logs import OrderLogContext, contact_values, escape_controls, set_order_context
from dispatcher.store.fair import FairFeed, FairOptions
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.store.results import RESULT_JOB_FUNCTIONS
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    intermediate_key,
    job_refusal,
    unreadable_job,
)
from dispatcher.worker.jobs import current_runtime
from dispatcher.worker.recovery import return_popped

__all__ = [
    "FOREIGN_PAUSE",
    "JOB_FUNCTIONS",
    "OrderQueue",
    "admit",
    "fair_feed",
    "job_integration",
    "log_context",
    "release_lease",
]

log = logging.getLogger("dispatcher.worker")


def log_context(job: Job) -> OrderLogContext | None:
    """What a job's log lines are tagged with (its order, integration, the candidate's
    contact data to mask), or None for a job that is not one of the dispatcher's."""
    meta: dict[str, Any] = job.meta or {}
    order_id, integration_id = meta.get("order_id"), meta.get("integration_id")
    if not isinstance(order_id, str) or not isinstance(integration_id, str):
        return None  # not one of ours: nothing to tag
    try:
        order = job.kwargs.get("order")
        contact = contact_values(order) if isinstance(order, dict) else ()
    except Exception:  # an unreadable payload fails the job later, with RQ's own report
        contact = ()
    return OrderLogContext(order_id, integration_id, job.id, contact)


# A worker that met a job of another namespace waits this long once the queue holds nothing
# else, before looking again (so that it does not spin on jobs it leaves alone).
FOREIGN_PAUSE = 1.0
_foreign_reported: set[tuple[str, str]] = set()


def _job_namespace(job: Job) -> str | None:
    namespace = (job.meta or {}).get("namespace")
    return namespace if isinstance(namespace, str) else None


# The functions a worker runs; RQ would import and call any name a job's data holds.
JOB_FUNCTIONS = frozenset({JOB_FUNCTION, *RESULT_JOB_FUNCTIONS})


class OrderQueue(Queue):
    """RQ's queue, but taking a job off it puts the worker in the job's log context at once,
    so that RQ's own lines about taking the job name the order too; a job of another
    namespace is put back, untouched, for that namespace's workers (jobs queued before the
    namespace was recorded are the worker's own); and a job that is not JSON or not one of
    the dispatcher's (``job_refusal``) is failed without being run."""

    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
        passed: set[str] = set()
        while True:
            result = super().dequeue_any(*args, **kwargs)
            if result is None:
                return None
            job, queue = result
            verdict = admit(job, queue, fed=False)
            if verdict == "run":
                set_order_context(log_context(job))
                return result
            if verdict != "foreign":
                continue  # refused, or its integration is at its cap: nothing to run
            if job.id in passed:
                # Round the queue once and nothing of ours: a burst is done; a long-running
                # worker waits before it looks again.
                if timeout is None:
                    return None
                time.sleep(FOREIGN_PAUSE)
                raise DequeueTimeout(timeout, [q.key for q in args[0]])
            passed.add(job.id)


def admit(job: Job, queue: Queue, *, fed: bool = True) -> str:
    """Whether this worker runs a job it just took off ``queue`` (into RQ's intermediate
    list): ``run``; or ``refused`` (not JSON or not one of the dispatcher's: failed, see
    ``job_refusal``), ``foreign`` (another namespace's: put back at the end of its queue),
    ``waiting`` (its integration is at its in-flight cap: back at the head of its list).
    ``fed``: the take topped the queue up already (FairFeed.take); else it is topped up
    here."""
    why = job_refusal(job, JOB_FUNCTIONS)
    if why is not None:
        _refuse(job, queue, why)
        return "refused"
    namespace = current_runtime().settings.namespace
    other = _job_namespace(job)
    if other is not None and other != namespace:
        _leave_foreign(job, queue, other, namespace)
        return "foreign"
    ours = queue.name == current_runtime().settings.queue
    if (
        ours
        and not fed
        and not fair_feed(queue.connection).after_take(job.id, job_integration(job))
    ):
        return "waiting"
    return "run"


def job_integration(job: Job) -> str | None:
    integration = (job.meta or {}).get("integration_id")
    return integration if isinstance(integration, str) else None


def fair_feed(connection: Redis) -> FairFeed:
    """The feeder of this worker's orders queue (dispatcher.store.fair)."""
    settings = current_runtime().settings
    return FairFeed(
        connection, Keys(settings.namespace), settings.queue, FairOptions.from_settings(settings)
    )


def release_lease(job: Job, connection: Redis) -> None:
    """A job of the orders queue ran (done, failed, or put back for a retry): its integration's
    in-flight lease, if capped, goes. A lost release only delays: the lease expires."""
    if job.origin != current_runtime().settings.queue:
        return
    try:
        fair_feed(connection).release(job.id, job_integration(job))
    except RedisError as exc:
        log.warning("job %s: its in-flight lease was not released: %s", job.id, exc)


def _refuse(job: Job, queue: Queue, why: str) -> None:
    """Fail a job the worker must not run, without running or deserializing anything: it
    leaves the intermediate list for the failed registry (its hash kept as it is, for the
    operator), and one line says which job, why and what to do."""
    registry = FailedJobRegistry(queue.name, connection=queue.connection, serializer=JOB_SERIALIZER)
    with queue.connection.pipeline() as pipe:
        pipe.lrem(intermediate_key(queue.name), 0, job.id)
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job.ended_at = now()
        if unreadable_job(job) is None and isinstance(job.meta, dict):
            # For `dispatcher failed` and the console (RQ keeps no reason for this failure).
            reason = {"handler": None, "reason": f"refused, not run: {why}", "at": time.time()}
            job.meta["last_failure"] = reason
            pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
        registry.add(job, ttl=job.failure_ttl, exc_string=f"refused, not run: {why}", pipeline=pipe)
        pipe.execute()
    log.error(
        "job %s refused, not run: %s; it is kept with the failed jobs. Queue its order again "
        "with `dispatcher replay` (docs/operations.md, Upgrading to JSON jobs)",
        escape_controls(job.id),
        why,
    )


def _leave_foreign(job: Job, queue: Queue, other: str, namespace: str) -> None:
    """Put a job of another namespace back at the end of its queue, untouched; say so once."""
    return_popped(queue.connection, queue.name, job.id)
    if (queue.name, other) not in _foreign_reported:
        _foreign_reported.add((queue.name, other))
        log.error(
            "queue %s holds jobs of namespace %s; this worker (namespace %s) leaves them to "
            "that namespace's workers: give each namespace its own DISPATCHER_QUEUE",
            queue.name,
            other,
            namespace,
        )
