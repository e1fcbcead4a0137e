"""What the dispatcher adds to RQ's workers, shared by every worker class: the mixin over
RQ's workers (:class:`DispatcherWorkerMixin`). The queue that takes jobs off for it and the
checks of a taken job are in :mod:`dispatcher.worker.admission`, the count of what a burst
did in :mod:`dispatcher.worker.burst`.

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
from types import TracebackType
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, worker_registration
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.timeouts import BaseTimeoutException, JobTimeoutException
from rq.utils import now

from dispatcher.handler import PermanentFailure, RetryLater
from dispatcher.logs import set_order_context
from dispatcher.store.failures import Failure, clean_traceback, job_timeout_reason, parse_failure
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    WorkerBase,
    call_exception_handlers,
    clean_registries_but_started,
    save_meta,
)
from dispatcher.worker.admission import (
    OrderQueue,
    fair_feed,
    job_integration,
    log_context,
    release_lease,
)
from dispatcher.worker.burst import BurstSummary
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
)
from dispatcher.worker.retry import DispatcherJob
from dispatcher.worker.rq_chatter import QuietRqLog, demote_rq_chatter

__all__ = [
    "HEARTBEAT_GRACE",
    "HEARTBEAT_INTERVAL",
    "PUBSUB_WAIT",
    "RECOVERY_BOUND",
    "REDIS_LOST",
    "STRANDED_AFTER",
    "WORKER_TTL",
    "DispatcherWorkerMixin",
    "demote_rq_chatter",
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


def _record_failure(job: Job, exc_string: str) -> Failure:
    """Keep the failed attempt in the job's meta: RQ stores an attempt's error only when it is
    the last (no retry left), and ``dispatcher show`` / ``failed`` need every one."""
    failure = _live_failure(job) or parse_failure(exc_string)
    # This run's attempt number, which process_order saves with its next Redis write: kept
    # if the run failed before that (a Redis error recording a step).
    attempt = (job.meta or {}).get("attempt")
    try:
        meta = job.get_meta(refresh=True)
        if attempt is not None:
            meta["attempt"] = attempt
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
        if kwargs.get("queue_class") in (None, Queue):
            # RQ's worker pool passes Queue itself: its workers would skip the checks of a
            # taken job and the fair feeder's top-up (a pool stalled with its queue empty).
            kwargs["queue_class"] = OrderQueue
        # Never RQ's default (pickle): a job planted in Redis would run code as it is read.
        kwargs["serializer"] = JOB_SERIALIZER
        if kwargs.get("job_class") in (None, Job):  # RQ's worker pool passes Job itself
            kwargs["job_class"] = DispatcherJob
        if kwargs["queue_class"] is OrderQueue:
            # RQ insists every queue be of the worker's queue class: pass plain ones by name.
            queues = [
                q.name if isinstance(q, Queue) and not isinstance(q, OrderQueue) else q
                for q in queues
            ]
        # RQ takes a mix of names and queues, whatever its annotation says.
        super().__init__(queues, *args, **kwargs)  # type: ignore[arg-type]
        self.log = QuietRqLog(self.log)  # type: ignore[assignment]  # a Logger's interface

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
        done = self._record_success(job, queue, started_job_registry, execution)
        release_lease(job, self.connection)
        steps = _steps_text(job)
        log.info("%s done in %s%s", _who(job), _seconds(job), f": {steps}" if steps else "")
        return done

    def _record_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> Any:
        """RQ's bookkeeping of a job that succeeded (the threaded worker's is leaner)."""
        return super().handle_job_success(job, queue, started_job_registry, execution)

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
        release_lease(job, self.connection)
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
