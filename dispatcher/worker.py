"""Worker processes: RQ workers on the dispatcher queue, running the handler chain."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker_pool import WorkerPool

from .failures import parse_failure
from .jobs import Runtime, install_runtime
from .logs import OrderLogContext, contact_values, set_order_context
from .settings import Settings

__all__ = ["DispatcherSimpleWorker", "DispatcherWorker", "run_worker"]

log = logging.getLogger("dispatcher.worker")


def _log_context(job: Job) -> OrderLogContext | None:
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


class _OrderQueue(Queue):
    """RQ's queue, but taking a job off it puts the worker in the job's log context at once,
    so that RQ's own lines about taking the job name the order too."""

    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        result = super().dequeue_any(*args, **kwargs)
        if result is not None:
            set_order_context(_log_context(result[0]))
        return result


def _record_failure(job: Job, exc_string: str) -> None:
    """Keep the failed attempt in the job's meta: RQ stores an attempt's error only when it is
    the last (no retry left), and ``dispatcher show`` / ``failed`` need every one."""
    failure = parse_failure(exc_string)
    try:
        meta = job.get_meta(refresh=True)
        meta["failures"] = int(meta.get("failures", 0)) + 1
        meta["last_failure"] = {
            "handler": failure.handler,
            "reason": failure.reason,
            "at": round(time.time(), 3),
        }
        job.save_meta()  # type: ignore[no-untyped-call]
    except (RedisError, ValueError, TypeError) as exc:
        log.warning("could not record the failure of job %s: %s", job.id, exc)


def _by_name(queue: Queue | str) -> Queue | str:
    return queue.name if isinstance(queue, Queue) and not isinstance(queue, _OrderQueue) else queue


class _DispatcherWorkerMixin:
    """What the dispatcher adds to RQ's workers: log lines during a job carry its order and
    integration (and mask the candidate's contact data above DEBUG), and every failed attempt
    is recorded in the job's meta."""

    def __init__(self, queues: Iterable[Queue | str], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("queue_class", _OrderQueue)
        if kwargs["queue_class"] is _OrderQueue:
            # RQ insists every queue be of the worker's queue class: pass plain ones by name.
            queues = [
                q.name if isinstance(q, Queue) and not isinstance(q, _OrderQueue) else q
                for q in queues
            ]
        super().__init__(queues, *args, **kwargs)  # type: ignore[call-arg]

    def execute_job(self, job: Job, queue: Queue) -> Any:
        set_order_context(_log_context(job))
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            set_order_context(None)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> Any:
        _record_failure(job, exc_string)
        return super().handle_job_failure(  # type: ignore[misc]
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=exc_string,
            execution=execution,
        )


class DispatcherWorker(_DispatcherWorkerMixin, Worker):
    """RQ's forking worker with the dispatcher's additions (see the mixin)."""


class DispatcherSimpleWorker(_DispatcherWorkerMixin, SimpleWorker):
    """RQ's in-process worker with the dispatcher's additions (tests, the demo)."""


def run_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    processes: int = 1,
    runtime: Runtime | None = None,
) -> None:
    """Run RQ worker(s) on the dispatcher queue until stopped (or until empty with ``burst``).

    The handler chain is loaded and checked first, so a missing or broken handler stops the
    worker at start with a HandlerConfigError instead of failing every order.
    """
    install_runtime(runtime or Runtime.from_settings(settings))
    queue = Queue(settings.queue, connection=redis)
    if processes <= 1:
        worker = DispatcherWorker([queue], connection=redis)
        # The scheduler moves retried jobs back to the queue when their backoff expires.
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    else:
        # Forked children inherit the installed runtime.
        pool = WorkerPool(
            [queue], connection=redis, num_workers=processes, worker_class=DispatcherWorker
        )
        pool.start(burst=burst, logging_level=settings.log_level)
