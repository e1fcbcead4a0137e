"""What the dispatcher adds to RQ's workers, shared by every worker class: the mixin over
RQ's workers (:class:`DispatcherWorkerMixin`), the queue that takes jobs off for it, and the
count of what a burst did (:class:`BurstSummary`).

RQ recovers a job whose worker died (SIGKILL, OOM, a lost machine) only when some worker's
maintenance pass finds the job's heartbeat expired: by default 60 s after the last heartbeat,
by a pass that an idle worker runs about every 7 minutes. The mixin shortens all three so
that an abandoned job is back on the queue within a bounded time (see ``RECOVERY_BOUND``),
with its completed steps still skipped when it runs again. It also tags log lines with the
order in hand and records every failed attempt in the job's meta.

Logs: one line per job outcome (INFO done, WARNING retried, ERROR failed; a traceback only
for an exception no handler meant) and RQ's own per-job lines at DEBUG. A job of another
namespace (a queue name shared by two namespaces) is put back on its queue untouched for
that namespace's workers.

The worker classes are in :mod:`dispatcher.worker.classes` (one job at a time) and
:mod:`dispatcher.worker.threaded` (N at once); :mod:`dispatcher.worker.run` starts them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.timeouts import BaseTimeoutException, JobTimeoutException
from rq.utils import now

from dispatcher.handler import PermanentFailure, RetryLater
from dispatcher.logs import OrderLogContext, contact_values, escape_controls, set_order_context
from dispatcher.store.failures import Failure, clean_traceback, job_timeout_reason, parse_failure
from dispatcher.store.fair import FairFeed, FairOptions
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.store.results import RESULT_JOB_FUNCTIONS
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    RQ_LIFECYCLE_MESSAGES,
    WorkerBase,
    call_exception_handlers,
    clean_registries_but_started,
    failed_key,
    intermediate_key,
    job_refusal,
    queue_key,
    save_meta,
    scheduled_key,
    unreadable_job,
)
from dispatcher.worker.jobs import (
    ForeignNamespace,
    HandlerFailed,
    HandlerTimeout,
    current_runtime,
    take_report,
)
from dispatcher.worker.recovery import (
    STRANDED_AFTER,
    forget_first_seen,
    requeue_abandoned,
    requeue_stranded,
    return_popped,
)
from dispatcher.worker.retry import DispatcherJob

__all__ = [
    "HEARTBEAT_GRACE",
    "HEARTBEAT_INTERVAL",
    "PUBSUB_WAIT",
    "RECOVERY_BOUND",
    "REDIS_LOST",
    "STRANDED_AFTER",
    "WORKER_TTL",
    "BurstSummary",
    "DispatcherWorkerMixin",
    "demote_rq_chatter",
    "fair_feed",
    "job_integration",
    "log_context",
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


class _DemoteRqChatter(logging.Filter):
    """RQ logs five INFO lines per job (taken, completed, OK, result kept...) and two per
    maintenance pass: those become DEBUG; its lifecycle lines stay INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or (
            isinstance(record.msg, str) and record.msg.startswith(RQ_LIFECYCLE_MESSAGES)
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_demote = _DemoteRqChatter()


def demote_rq_chatter() -> None:
    """Put RQ's per-job and maintenance INFO lines at DEBUG (idempotent)."""
    for name in ("rq.worker", "rq.job"):  # rq.job: "scheduled for retry at ..."
        rq_log = logging.getLogger(name)
        if _demote not in rq_log.filters:
            rq_log.addFilter(_demote)


# A worker that met a job of another namespace waits this long once the queue holds nothing
# else, before looking again (so that it does not spin on jobs it leaves alone).
FOREIGN_PAUSE = 1.0
_foreign_reported: set[tuple[str, str]] = set()


def _job_namespace(job: Job) -> str | None:
    namespace = (job.meta or {}).get("namespace")
    return namespace if isinstance(namespace, str) else None


# The functions a worker runs; RQ would import and call any name a job's data holds.
JOB_FUNCTIONS = frozenset({JOB_FUNCTION, *RESULT_JOB_FUNCTIONS})


class _OrderQueue(Queue):
    """RQ's queue, but taking a job off it puts the worker in the job's log context at once,
    so that RQ's own lines about taking the job name the order too; a job of another
    namespace is put back, untouched, for that namespace's workers (jobs queued before the
    namespace was recorded are the worker's own); and a job that is not JSON or not one of
    the dispatcher's (``job_refusal``) is failed without being run."""

    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        namespace = current_runtime().settings.namespace
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
        passed: set[str] = set()
        while True:
            result = super().dequeue_any(*args, **kwargs)
            if result is None:
                return None
            job, queue = result
            why = job_refusal(job, JOB_FUNCTIONS)
            if why is not None:
                _refuse(job, queue, why)
                continue
            other = _job_namespace(job)
            if other is None or other == namespace:
                if queue.name == current_runtime().settings.queue and not fair_feed(
                    queue.connection
                ).after_take(job.id, job_integration(job)):
                    continue  # its integration is at its cap: back on its list, parked
                set_order_context(log_context(job))
                return result
            _leave_foreign(job, queue, other, namespace)
            if job.id in passed:
                # Round the queue once and nothing of ours: a burst is done; a long-running
                # worker waits before it looks again.
                if timeout is None:
                    return None
                time.sleep(FOREIGN_PAUSE)
                raise DequeueTimeout(timeout, [q.key for q in args[0]])
            passed.add(job.id)


def job_integration(job: Job) -> str | None:
    integration = (job.meta or {}).get("integration_id")
    return integration if isinstance(integration, str) else None


def fair_feed(connection: Redis) -> FairFeed:
    """The feeder of this worker's orders queue (dispatcher.store.fair)."""
    settings = current_runtime().settings
    return FairFeed(
        connection, Keys(settings.namespace), settings.queue, FairOptions.from_settings(settings)
    )


def _release(job: Job, connection: Redis) -> None:
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


def _record_failure(job: Job, exc_string: str) -> Failure:
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
    return failure


# Exceptions a job is expected to meet (a handler said so, or ran out of time): their outcome
# line carries the reason, no traceback.
_EXPECTED = (RetryLater, PermanentFailure, HandlerTimeout, BaseTimeoutException, ForeignNamespace)


def _unexpected() -> BaseException | None:
    """The live exception of a failed job if no handler meant it (a bug, not an outcome):
    the handler's own exception for a HandlerFailed, so that its traceback is logged once."""
    exc = sys.exc_info()[1]
    if exc is None:
        return None
    cause = exc.__cause__ if isinstance(exc, HandlerFailed) else exc
    if cause is None or isinstance(cause, _EXPECTED):
        return None
    if isinstance(exc, HandlerFailed) and exc.__cause__ is None:
        return None  # the chain's own verdict (an output that is not a mapping...)
    return cause


def _exc_info(
    exc: BaseException,
) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    return type(exc), exc, exc.__traceback__


def _steps_text(job: Job, *, failed: bool = False) -> str:
    report = take_report(job.id)
    if report is None or (failed and not report.ran):
        return ""
    if failed:
        return "after steps " + ", ".join(report.ran)
    text = "steps " + (", ".join(report.ran) or "none")
    if report.skipped:
        text += f" (already done: {', '.join(report.skipped)})"
    return text


def _seconds(job: Job) -> str:
    if job.started_at is None or job.ended_at is None:
        return "?"
    return f"{(job.ended_at - job.started_at).total_seconds():.3f}s"


def _who(job: Job) -> str:
    meta: dict[str, Any] = job.meta or {}
    return f"order {meta.get('order_id', '?')} (integration {meta.get('integration_id', '?')})"


def _attempt(job: Job) -> str:
    attempt = (job.meta or {}).get("attempt")
    return f"attempt {attempt}" if isinstance(attempt, int) else "an attempt"


def _live_failure(job: Job) -> Failure | None:
    # RQ calls handle_job_failure in the block handling the job's exception: from the
    # exception itself the handler and reason are exact, whatever the ids in its text hold.
    exc = sys.exc_info()[1]
    if isinstance(exc, HandlerFailed) and exc.order_id == (job.meta or {}).get("order_id"):
        return Failure(exc.handler, exc.reason)
    if isinstance(exc, JobTimeoutException):
        # A threaded (or in-process) worker's deadline raises it bare: say what it means.
        return Failure(None, job_timeout_reason(job.timeout))
    return None


# Seconds RQ's pubsub thread waits for a command at a time; it bounds how long stopping it
# takes (RQ: 60).
PUBSUB_WAIT = 0.5


class DispatcherWorkerMixin(WorkerBase):
    """What the dispatcher adds to RQ's workers: abandoned jobs are requeued within
    ``RECOVERY_BOUND`` seconds, log lines during a job carry its order and integration (and
    mask the candidate's contact data above DEBUG), and every failed attempt is recorded in
    the job's meta."""

    # RQ's dequeue waits 1, 2, 4, 8, ... up to 60 s between tries while Redis is away: a
    # failover of a few seconds cost up to 30 s more of stopped workers. A try every 2 s
    # at most (one BLMOVE) finds the new primary as soon as Sentinel names it.
    max_connection_wait_time = RECONNECT_WAIT_MAX

    def __init__(self, queues: Iterable[Queue | str], *args: Any, **kwargs: Any) -> None:
        demote_rq_chatter()
        self.tally = BurstSummary()
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        kwargs.setdefault("queue_class", _OrderQueue)
        # Never RQ's default (pickle): a job planted in Redis would run code as it is read.
        kwargs["serializer"] = JOB_SERIALIZER
        if kwargs.get("job_class") in (None, Job):  # RQ's worker pool passes Job itself
            kwargs["job_class"] = DispatcherJob
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

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        super().maintain_heartbeats(job, execution)
        if job.origin == current_runtime().settings.queue:
            with self.connection.pipeline(transaction=False) as pipeline:
                fair_feed(self.connection).renew(pipeline, job.id, job_integration(job))
                if len(pipeline):
                    pipeline.execute()

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
            # Integrations whose leases expired (their holder died) are unparked; a queue
            # that lost a feed (a Redis error after a take) is topped up.
            if any(queue.name == current_runtime().settings.queue for queue in self.queues):
                fair_feed(self.connection).feed(unpark=True)
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
        # requeue it at once. RQ's own started-registry and intermediate-list passes are not
        # run: they decide by status and by stale marks (worker/recovery.py).
        for queue in self.queues:
            self.requeue_abandoned(queue)
            self.requeue_stranded(queue)
            if queue.acquire_maintenance_lock():
                clean_registries_but_started(queue)
                worker_registration.clean_worker_registry(queue)
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ annotates it None

    def requeue_stranded(self, queue: Queue) -> int:
        """Put back jobs a dead worker popped but never started; returns how many."""
        return requeue_stranded(self.connection, queue.name)

    def requeue_abandoned(self, queue: Queue) -> int:
        """Put jobs whose worker stopped heartbeating back on the queue; returns how many."""
        return requeue_abandoned(self.connection, queue.name)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        # Out of the intermediate list (RQ's LREM above): a mark of this visit must not make
        # the job's next visit (a retry) look stranded at once.
        forget_first_seen(self.connection, job.origin, job.id)

    def teardown(self) -> None:
        # From here on the worker takes no job: a SIGTERM (RQ's _shutdown raises StopRequested
        # in whatever the main thread is doing) would escape work() as a traceback.
        self._torn_down = True
        super().teardown()  # type: ignore[no-untyped-call]

    def _shutdown(self) -> None:
        if getattr(self, "_torn_down", False):
            self._stop_requested = True
            return
        super()._shutdown()  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        # RQ's pubsub thread waits up to 60 s per get_message, and with no subscription left
        # (RQ unsubscribes before it stops the thread) redis-py waits that long on an event;
        # redis-py 8.2's PubSubWorkerThread.stop() joins the thread without a timeout, so a
        # worker's shutdown took up to 60 s. A short wait bounds it (one poll per wait).
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_WAIT, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def execute_job(self, job: Job, queue: Queue) -> Any:
        set_order_context(log_context(job))
        try:
            return super().execute_job(job, queue)
        finally:
            set_order_context(None)
            self.tally.count(job)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ logs every failed attempt at ERROR with the whole (chained) traceback; the
        # dispatcher logs one outcome line in handle_job_failure instead.
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> Any:
        done = super().handle_job_success(job, queue, started_job_registry, execution)
        _release(job, self.connection)
        steps = _steps_text(job)
        log.info("%s done in %s%s", _who(job), _seconds(job), f": {steps}" if steps else "")
        return done

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
        failure = _record_failure(job, exc_string)
        retry_in = job.get_retry_interval() if job.should_retry else None
        unexpected = _unexpected()
        done = super().handle_job_failure(
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=exc_string,
            execution=execution,
        )
        _release(job, self.connection)
        where = f"handler {failure.handler}: " if failure.handler else ""
        steps = _steps_text(job, failed=True)
        steps = f" ({steps})" if steps else ""
        if retry_in is not None:
            log.warning(
                "%s: %s failed%s: %s%s; retry in %ss",
                _who(job), _attempt(job), steps, where, failure.reason, retry_in,
                exc_info=_exc_info(unexpected) if unexpected is not None else None,
            )  # fmt: skip
        else:
            log.error(
                "%s failed for good (%s)%s: %s%s: see `dispatcher failed`",
                _who(job), _attempt(job), steps, where, failure.reason,
                exc_info=_exc_info(unexpected) if unexpected is not None else None,
            )  # fmt: skip
        return done


@dataclass(slots=True)
class BurstSummary:
    """What a burst did (jobs done, failed for good, put back for a retry) and what it left
    on the queue."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    queued: int = 0
    scheduled: int = 0
    next_retry_in: float | None = None
    failed_on_queue: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def count(self, job: Job) -> None:
        """Count a job the worker just ran, by the status it ended in."""
        try:
            status = job.get_status(refresh=True)
        except (RedisError, ValueError):
            return
        if status == JobStatus.FINISHED:
            self.done += 1
        elif status == JobStatus.FAILED:
            self.failed += 1
        elif status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
            self.retried += 1

    def add(self, other: BurstSummary) -> None:
        self.done += other.done
        self.failed += other.failed
        self.retried += other.retried

    def look(self, redis: Redis, queue: str, now: float) -> None:
        """Read what is left on ``queue``."""
        with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue_key(queue))
            pipe.zcard(scheduled_key(queue))
            pipe.zrange(scheduled_key(queue), 0, 0, withscores=True)
            pipe.zcount(failed_key(queue), now, "+inf")
            self.queued, self.scheduled, first, self.failed_on_queue = pipe.execute()
        self.next_retry_in = max(0.0, float(first[0][1]) - now) if first else None

    def did(self) -> str:
        """What the jobs run came to: ``3 done, 1 failed, 0 put back for a retry``."""
        return f"{self.done} done, {self.failed} failed, {self.retried} put back for a retry"

    def line(self, queue: str, *, counted: bool = True) -> str:
        """The summary; without ``counted`` (a pool: its children counted their own jobs)
        only what is left."""
        did = f"{self.did()}; " if counted else ""
        text = (
            f"burst finished on {queue}: {did}left: {self.queued} queued, "
            f"{self.scheduled} scheduled for a retry"
        )
        if self.scheduled and self.next_retry_in is not None:
            text += (
                f" (next in {self.next_retry_in:.0f}s: `dispatcher worker --burst "
                "--wait-retries` waits for them)"
            )
        text += f", {self.failed_on_queue} failed"
        if self.failed_on_queue:
            text += " (`dispatcher failed`)"
        return text
