"""Worker processes: RQ workers on the dispatcher queue, running the handler chain.

RQ recovers a job whose worker died (SIGKILL, OOM, a lost machine) only when some worker's
maintenance pass finds the job's heartbeat expired: by default 60 s after the last heartbeat,
by a pass that an idle worker runs about every 7 minutes. :class:`DispatcherWorker` shortens
all three so that an abandoned job is back on the queue within a bounded time (see
``RECOVERY_BOUND``), with its completed steps still skipped when it runs again. It also tags
log lines with the order in hand and records every failed attempt in the job's meta.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from dispatcher.logs import OrderLogContext, contact_values, set_order_context
from dispatcher.settings import Settings
from dispatcher.store.failures import Failure, clean_traceback, parse_failure
from dispatcher.store.rq_internals import (
    REQUEUE_ABANDONED,
    REQUEUE_STRANDED,
    GuardedScript,
    WorkerBase,
    first_seen_key,
    intermediate_job_ids,
    intermediate_key,
    job_key,
    queue_key,
    save_meta,
    started_job_id,
    started_key,
)
from dispatcher.store.rq_internals import first_seen as rq_first_seen
from dispatcher.store.rq_internals import mark_first_seen as rq_mark_first_seen
from dispatcher.store.wrongtype import WrongKeyTypeError, key_types_checked
from dispatcher.worker.jobs import HandlerFailed, Runtime, install_runtime

__all__ = [
    "RECOVERY_BOUND",
    "DispatcherSimpleWorker",
    "DispatcherWorker",
    "InProcessWorker",
    "run_worker",
]

log = logging.getLogger("dispatcher.worker")

# What a Redis failover raises: the old primary gone (refused, reset, no primary known yet),
# or still answering as the replica it became.
REDIS_LOST = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

# Seconds between heartbeats of a running job, and how long past a missed heartbeat a job
# counts as abandoned.
HEARTBEAT_INTERVAL = 5
HEARTBEAT_GRACE = 10
# A worker's registration expires this long after its last heartbeat; an idle worker wakes
# from its blocking pop every WORKER_TTL - 15 seconds (RQ's rule) to run maintenance.
WORKER_TTL = 25
MAINTENANCE_INTERVAL = 10
# The longest wait between two dequeue tries while Redis is unreachable (RQ's default: 60 s).
RECONNECT_WAIT_MAX = 2.0
# Worst case from a worker's death to its job being queued again: the heartbeat runs out,
# then a live worker's next maintenance pass (an idle one wakes every WORKER_TTL - 15 s).
RECOVERY_BOUND = HEARTBEAT_INTERVAL + HEARTBEAT_GRACE + (WORKER_TTL - 15) + MAINTENANCE_INTERVAL


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


def _requeue(
    connection: Redis, script: GuardedScript, keys: list[str], args: list[Any], job_id: str
) -> bool:
    """Run a requeue script (rq_internals.py); a key of the wrong type is logged (naming it)
    and skipped, the job left where it is, rather than stopping the worker's maintenance."""
    try:
        with key_types_checked(keys, script.types):
            return bool(connection.eval(script.lua, len(keys), *keys, *args))
    except WrongKeyTypeError as exc:
        log.error("cannot requeue job %s: %s", job_id, exc)
        return False


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
    failure = _live_failure(job) or parse_failure(exc_string)
    try:
        meta = job.get_meta(refresh=True)
        meta["failures"] = int(meta.get("failures", 0)) + 1
        meta["last_failure"] = {
            "handler": failure.handler,
            "reason": failure.reason,
            "at": round(time.time(), 3),
        }
        save_meta(job)
    except (RedisError, ValueError, TypeError) as exc:
        log.warning("could not record the failure of job %s: %s", job.id, exc)


def _live_failure(job: Job) -> Failure | None:
    # RQ calls handle_job_failure in the block handling the job's exception: from the
    # exception itself the handler and reason are exact, whatever the ids in its text hold.
    exc = sys.exc_info()[1]
    if isinstance(exc, HandlerFailed) and exc.order_id == (job.meta or {}).get("order_id"):
        return Failure(exc.handler, exc.reason)
    return None


# How long a job may sit popped but not started before it counts as stranded (a live worker
# takes microseconds).
STRANDED_AFTER = 10


class _DispatcherWorkerMixin(WorkerBase):
    """What the dispatcher adds to RQ's workers: abandoned jobs are requeued within
    ``RECOVERY_BOUND`` seconds, log lines during a job carry its order and integration (and
    mask the candidate's contact data above DEBUG), and every failed attempt is recorded in
    the job's meta."""

    # RQ's dequeue waits 1, 2, 4, 8, ... up to 60 s between tries while Redis is away: a
    # failover of a few seconds cost up to 30 s more of stopped workers. A try every 2 s
    # at most (one BLMOVE) finds the new primary as soon as Sentinel names it.
    max_connection_wait_time = RECONNECT_WAIT_MAX

    def __init__(self, queues: Iterable[Queue | str], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        kwargs.setdefault("queue_class", _OrderQueue)
        if kwargs["queue_class"] is _OrderQueue:
            # RQ insists every queue be of the worker's queue class: pass plain ones by name.
            queues = [
                q.name if isinstance(q, Queue) and not isinstance(q, _OrderQueue) else q
                for q in queues
            ]
        # RQ takes a mix of names and queues, whatever its annotation says.
        super().__init__(queues, *args, **kwargs)  # type: ignore[arg-type]

    # RQ's loop checks for suspension, runs maintenance and beats outside its reconnect
    # handling (only the dequeue waits for Redis): a Redis lost there (a failover) would end
    # the worker ("unhandled exception, quitting"), and with --processes 1 the whole process.
    # Each is skipped instead; the next dequeue waits for the new primary.

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_LOST as exc:
            self.log.warning("Worker %s: heartbeat skipped, Redis lost: %s", self.name, exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_LOST as exc:
            self.log.warning("Worker %s: suspension check skipped, Redis lost: %s", self.name, exc)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ marks the worker idle before its reconnecting loop: a Redis lost there too.
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except REDIS_LOST as exc:
                self.log.warning("Worker %s: dequeue waits, Redis lost: %s", self.name, exc)
                time.sleep(1)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except REDIS_LOST as exc:
            self.log.warning("Worker %s: maintenance skipped, Redis lost: %s", self.name, exc)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ adds a fixed 60 s of grace; a job whose worker is gone waits that long.
        interval: float = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(interval) + HEARTBEAT_GRACE

    def clean_registries(self) -> None:
        # RQ would hand an abandoned job to its retry schedule, which only the scheduler
        # holding the queue's lock moves on; when that scheduler died with the worker, the
        # lock blocks everyone for a minute. The job did not fail, its worker vanished:
        # requeue it at once.
        for queue in self.queues:
            self.requeue_abandoned(queue)
            self.requeue_stranded(queue)
        super().clean_registries()  # type: ignore[no-untyped-call]  # RQ leaves it unannotated

    def requeue_stranded(self, queue: Queue) -> int:
        """Put back jobs a dead worker popped but never started; returns how many.

        RQ rescues them only after a minute, through the retry schedule (which a dead
        worker's scheduler lock can block for another minute).
        """
        connection = self.connection
        intermediate = intermediate_key(queue.name)
        job_ids = intermediate_job_ids(connection, queue.name)
        if not job_ids:
            return 0
        started = {
            started_job_id(entry)
            for entry in cast("list[bytes]", connection.zrange(started_key(queue.name), 0, -1))
        }
        requeued = 0
        for job_id in job_ids:
            if job_id in started:
                continue
            first_seen = rq_first_seen(connection, queue.name, job_id)
            if first_seen is None:
                rq_mark_first_seen(connection, queue.name, job_id)
                continue
            if time.time() - first_seen.timestamp() < STRANDED_AFTER:
                continue
            if _requeue(
                connection,
                REQUEUE_STRANDED,
                [intermediate, queue_key(queue.name)],
                [job_id],
                job_id,
            ):
                connection.delete(first_seen_key(queue.name, job_id))
                requeued += 1
                log.warning("requeued job %s: popped by a worker that never started it", job_id)
        return requeued

    def requeue_abandoned(self, queue: Queue) -> int:
        """Put jobs whose worker stopped heartbeating back on the queue; returns how many."""
        connection = self.connection
        registry = started_key(queue.name)
        requeued = 0
        entries = connection.zrangebyscore(registry, 0, time.time())
        for entry in cast("list[bytes]", entries):
            job_id = started_job_id(entry)
            if _requeue(
                connection,
                REQUEUE_ABANDONED,
                [registry, job_key(job_id), queue_key(queue.name)],
                [entry, job_id],
                job_id,
            ):
                requeued += 1
                log.warning("requeued job %s: its worker stopped heartbeating", job_id)
        return requeued

    def execute_job(self, job: Job, queue: Queue) -> Any:
        set_order_context(_log_context(job))
        try:
            return super().execute_job(job, queue)
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
        # RQ stores this text with the job and in its results stream: a vendor's error body
        # echoing a token, or megabytes of one, must not get there.
        exc_string = clean_traceback(exc_string)
        _record_failure(job, exc_string)
        return super().handle_job_failure(
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


class InProcessWorker(DispatcherWorker):
    """A DispatcherWorker that runs each job in its own process instead of a forked work horse
    (``DISPATCHER_FORK_PER_JOB=false``).

    Forking a horse per job costs about 15 ms of CPU per job (bench/dispatch.py); without it
    a job costs about 4 ms and the handlers keep their connections between jobs, so a pool of
    these reaches several times the throughput on the same cores. What is given up is the
    horse's isolation: a handler that leaks or corrupts state does so in the worker (the pool
    replaces a worker that dies). A thread keeps the job's heartbeat while it runs, as the
    forking worker's monitor loop does, so that ``RECOVERY_BOUND`` still holds.
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            execution = self.prepare_execution(job)
        except REDIS_LOST as exc:  # popped, not started: requeue_stranded puts it back
            self.log.warning("Worker %s: job %s: Redis lost at its start: %s", self.name,
                             job.id, exc)  # fmt: skip
            return
        done = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_until, args=(done, job, execution), name="rq-heartbeat"
        )
        beat.start()
        set_order_context(_log_context(job))
        try:
            self.perform_job(job, queue, execution)
        except REDIS_LOST as exc:
            # Redis went away while the job was being finished (RQ records the outcome, or
            # the failure, outside its reconnect handling): the worker stays up. The job is
            # left as the new primary knows it; a started job whose heartbeat runs out is
            # requeued (requeue_abandoned), and its recorded steps are not run again.
            self.log.warning("Worker %s: job %s: Redis lost while finishing it: %s", self.name,
                             job.id, exc)  # fmt: skip
            return
        finally:
            set_order_context(None)
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _heartbeat_until(self, done: threading.Event, job: Job, execution: Execution) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except RedisError as exc:  # the next beat may get through; the job goes on
                self.log.warning("heartbeat of job %s failed: %s", job.id, exc)


def run_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    processes: int = 1,
    runtime: Runtime | None = None,
    threads: int | None = None,
) -> None:
    """Run RQ worker(s) on the dispatcher queue until stopped (or until empty with ``burst``).

    With ``threads`` above 1 (default: ``DISPATCHER_WORKER_THREADS``) each process runs that
    many jobs at once (dispatcher/worker/threaded.py). The handler chain is loaded and
    checked first, so a missing or broken handler stops the worker at start with a
    HandlerConfigError instead of failing every order.
    """
    runtime = runtime or Runtime.from_settings(settings)
    install_runtime(runtime)
    queue = Queue(settings.queue, connection=redis)
    threads = settings.worker_threads if threads is None else threads
    worker_class: type[WorkerBase]
    if threads > 1:
        from dispatcher.worker.threaded import threaded_worker_class

        worker_class = threaded_worker_class(threads, settings.worker_shutdown_timeout)
    else:
        worker_class = DispatcherWorker if settings.fork_per_job else InProcessWorker
    try:
        if processes <= 1:
            worker = worker_class([queue], connection=redis)
            # The scheduler moves retried jobs back to the queue when their backoff expires.
            worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        else:
            # Forked children inherit the installed runtime.
            pool = WorkerPool(
                [queue], connection=redis, num_workers=processes, worker_class=worker_class
            )
            pool.start(burst=burst, logging_level=settings.log_level)
    finally:
        for handler in runtime.chain:
            close = getattr(handler, "close", None)  # optional: see BaseHandler.close
            if callable(close):
                close()
