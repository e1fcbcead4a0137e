"""The write job: one pending result of the outbox PUT to Kombo, with the guarantees of orders.

:func:`write_result` is the RQ job :meth:`dispatcher.store.results.Outbox.submit` queues on
``DISPATCHER_RESULTS_QUEUE``. It runs in the results workers (:func:`run_results_worker`: own
processes, see below) and:

1. reads the order's outbox hash; a job that does not own the pending write does nothing (a
   recovered duplicate, a write already ended);
2. takes one of the integration's write slots (:class:`~dispatcher.store.leases.WriteLeases`,
   ``DISPATCHER_KOMBO_WRITE_CONCURRENCY`` across every process; a lease expires when its
   holder dies) and, in the same step, counts the attempt and locks the body
   (:meth:`~dispatcher.store.results.Outbox.begin`: from then on Kombo may hold it); when no
   slot frees up within a moment it hands the write to a new job a moment later instead of
   blocking the worker;
3. PUTs the body once (the client's own retries are off: a result's retries span hours);
4. written: ends the write and gives the slot back in one step (``next``: a partial result
   was written and a new body waited, write it too, in the same job); otherwise the slot is
   given back first;
   429, 5xx, timeouts, connection errors: hands the write to a new job after Kombo's
   ``Retry-After`` or a jittered exponential backoff, until ``DISPATCHER_RESULT_RETRY_FOR``
   after the submit; any other refusal of a final result: reads the order back (``GET
   /assessment/orders?ids=``), and when Kombo already holds the submitted status the earlier
   attempt landed and its answer was lost: written (``lost_answer``), not failed, with what
   the read-back showed beyond the status (``read_back``: the same body, another body, or
   only the status, which cannot tell bodies apart); otherwise failed with Kombo's message.

Why results have their own workers: RQ takes a job off several queues with BLPOP, which
moves nothing to the intermediate list; a worker killed between that pop and the job's start
loses the job. Off one queue RQ uses BLMOVE into the intermediate list, which
:meth:`DispatcherWorker.requeue_stranded` recovers from. So each worker process listens on
one queue, and the Procfile has a ``results`` line.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue, Worker, get_current_job
from rq.job import Job
from rq.worker_pool import WorkerPool

from dispatcher import _text, tracing, tunables
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError
from dispatcher.kombo.results import AssessmentResult, InvalidResultError
from dispatcher.logs import escape_controls
from dispatcher.settings import Settings, load_settings
from dispatcher.store.connection import connect
from dispatcher.store.failures import clean_reason
from dispatcher.store.keys import Keys
from dispatcher.store.leases import WriteLeases
from dispatcher.store.results import (
    FINAL_STATUSES,
    Outbox,
    OutboxRecord,
    parse_result,
)
from dispatcher.store.rq_internals import JOB_SERIALIZER, WorkerBase
from dispatcher.worker._slot import ProcessSlot
from dispatcher.worker.classes import InProcessWorker
from dispatcher.worker.threaded import threaded_worker_class

__all__ = [
    "RESULTS_THREADS",
    "KomboView",
    "ResultWriter",
    "WriterRuntime",
    "current_writer",
    "install_writer",
    "results_workers_running",
    "run_results_worker",
    "write_claimed",
    "write_result",
]

log = logging.getLogger("dispatcher.results")

# A retried write waits Kombo's Retry-After, else a jittered delay under a ceiling that
# doubles per attempt from 1 s up to 5 min: the retries span DISPATCHER_RESULT_RETRY_FOR
# (hours), so a long outage costs a write every few minutes, not one a second. The Kombo
# client's own backoff (kombo/client.py) caps at 30 s instead: it retries within one
# request's KOMBO_RETRY_BUDGET.
_WRITE_RETRY_FIRST = 1.0
_WRITE_RETRY_CAP = 300.0
# A write slot's lease outlives the longest PUT (KOMBO_TIMEOUT) by this much: a live writer
# keeps its slot to the end of its request; a dead one's slot frees up this long after.
_LEASE_MARGIN = 10.0
# How long a write waits for a free slot of its integration before it lets another job try.
_LEASE_WAIT = 2.0
# Writes a results worker process has in flight when ``--threads`` is not given. A write
# mostly waits on Kombo, so one at a time left the Procfile's ``--processes 4`` with 4 writes
# in flight: 2.4x one PUT at a time against a 20 ms Kombo (issue 25). What Kombo sees stays
# bounded by the write cap (DISPATCHER_KOMBO_WRITE_CONCURRENCY per integration).
RESULTS_THREADS = 16
# New bodies submitted while one job writes: after this many rounds the job hands over.
_MAX_ROUNDS = 5
# What a round answers when the same job should go on with the order's pending body.
_AGAIN = frozenset({"next", "changed", "superseded"})
# Read-back verdicts after a lost answer (the record's ``read_back``).
READ_BACK_MATCHED = "matched"
READ_BACK_STATUS_ONLY = "status only: Kombo shows no result body, which body landed is unknown"
READ_BACK_OTHER = "another body: Kombo holds a different result"
# What of a result Kombo might show with an order, compared after a lost answer.
_COMPARED = ("result_url", "score", "max_score", "completed_at")
_KOMBO_RESULT_MAX = 4096


@dataclass(frozen=True, slots=True)
class KomboView:
    """What Kombo shows of an order when it is read back: its status and, when Kombo shows
    one (a ``result`` object or top-level ``result_url``), the result it holds."""

    status: str | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> KomboView:
        status = data.get("status")
        found = data.get("result")
        if not isinstance(found, dict):
            found = {k: data[k] for k in _COMPARED if k in data}
        # Attacker-controlled: keep scalars of the compared fields, bounded.
        result = {
            k: v
            for k, v in found.items()
            if k in _COMPARED
            and (isinstance(v, (int, float, str)) and not isinstance(v, bool))
            and len(str(v)) <= _KOMBO_RESULT_MAX
        }
        return cls(status if isinstance(status, str) else None, result or None)

    def compare(self, body: Mapping[str, Any]) -> str:
        """The read-back verdict for ``body`` (see READ_BACK_*)."""
        if self.result is None or "result_url" not in self.result:
            return READ_BACK_STATUS_ONLY
        for key, value in self.result.items():
            mine = body.get(key)
            if key == "completed_at":
                continue  # Kombo may render the instant its own way
            if isinstance(value, (int, float)) and isinstance(mine, (int, float)):
                if float(value) != float(mine):
                    return READ_BACK_OTHER
            elif value != mine:
                return READ_BACK_OTHER
        return READ_BACK_MATCHED


class ResultWriter:
    """Writes pending results of the outbox to Kombo (see the module doc)."""

    def __init__(
        self,
        outbox: Outbox,
        leases: WriteLeases,
        client: KomboClient,
        *,
        retry_for: float = tunables.RESULT_RETRY_FOR,
        lease_ttl: float = tunables.KOMBO_TIMEOUT + _LEASE_MARGIN,
        lease_wait: float = _LEASE_WAIT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.leases = leases
        self.client = client
        self.retry_for = retry_for
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    def run(self, integration_id: str, order_id: str, job_id: str) -> str:
        """One write job: returns what became of the write (``written``, ``failed``,
        ``rescheduled``, ``stale``). A body that waited behind the one written (``next``) is
        written by the same job, up to a few rounds, then handed to a new job: a write job
        never ends leaving a pending body without a job."""
        for _ in range(_MAX_ROUNDS):
            outcome = self._round(integration_id, order_id, job_id)
            if outcome not in _AGAIN:
                return outcome
        record = self.outbox.get(integration_id, order_id)
        if record is None or record.state != "pending" or record.job_id != job_id:
            return "stale"
        return self.outbox.reschedule(record, job_id, 0.0, count_attempt=False)

    def _round(self, integration_id: str, order_id: str, job_id: str) -> str:
        record = self.outbox.get(integration_id, order_id)
        if record is None or record.state != "pending" or record.job_id != job_id:
            return "stale"
        try:
            body = parse_result(record.body)
        except InvalidResultError as exc:  # stored by an older version with other rules
            return self.outbox.mark_failed(record, job_id, f"invalid result: {exc}")
        # One step takes a write slot and counts the attempt (the body is locked from here:
        # Kombo may hold it); it waits for a slot a moment, then lets another job try.
        began = self._begin(record, job_id)
        if began == "full":
            delay = self._rng.uniform(0.2, 1.0)
            return self.outbox.reschedule(record, job_id, delay, count_attempt=False)
        if began != "begun":
            return began  # "changed": read the new body; "stale": not ours any more
        try:
            warnings = self.client.put_result(integration_id, order_id, body)
        except KomboError as exc:
            self.leases.release(integration_id, job_id)
            return self._after_error(record, job_id, body, exc)
        except BaseException:
            self._release_quietly(integration_id, job_id)
            raise
        try:
            # Ended as written and the slot given back in one step.
            outcome = self.outbox.mark_written(record, job_id, warnings, release_slot=True)
        except BaseException:
            self._release_quietly(integration_id, job_id)
            raise
        if outcome in ("written", "next"):
            log.info(
                "order %s (integration %s): result %s written",
                escape_controls(order_id),
                escape_controls(integration_id),
                record.status,
            )
        return outcome

    def _begin(self, record: OutboxRecord, job_id: str) -> str:
        """:meth:`Outbox.begin` with a write slot, waiting up to ``lease_wait`` for one: the
        answer of the last try (``full`` when none freed up)."""
        deadline = self._clock() + self.lease_wait
        while True:
            slot = self.leases.slot(record.integration_id, self.lease_ttl)
            began = self.outbox.begin(record, job_id, slot)
            if began != "full" or self._clock() >= deadline:
                return began
            self._sleep(self._rng.uniform(0.01, 0.05))

    def _release_quietly(self, integration_id: str, holder: str) -> None:
        # On the way out of an unexpected error (Redis lost, the job's deadline): give the
        # slot back if Redis answers; if not, the lease expires by itself.
        try:
            self.leases.release(integration_id, holder)
        except Exception as exc:  # the error on its way out is the one to report
            log.debug("write slot of job %s not released: %s", escape_controls(holder), exc)

    def _after_error(
        self, record: OutboxRecord, job_id: str, body: AssessmentResult, error: KomboError
    ) -> str:
        if error.retryable:
            return self._retry(record, job_id, error)
        if str(body.status) in FINAL_STATUSES:
            # Refused: perhaps because an earlier attempt landed and its answer was lost
            # (the order is no longer OPEN). Kombo's own record decides.
            try:
                held = self._kombo_view(record.integration_id, record.order_id)
            except KomboError as read_error:
                if read_error.retryable:
                    return self._retry(record, job_id, error)
                held = None
            status = held.status if held is not None else None
            if held is not None and held.status == str(body.status):
                return self._lost_answer(record, job_id, body, held)
            if status is not None and status != "OPEN":
                reason = f"order is {status} in Kombo: {_kombo_reason(error)}"
                return self._fail(record, job_id, reason)
        return self._fail(record, job_id, _kombo_reason(error))

    def _lost_answer(
        self, record: OutboxRecord, job_id: str, body: AssessmentResult, held: KomboView
    ) -> str:
        # Kombo holds the submitted status. Which body? Compare what Kombo shows beyond the
        # status; Kombo's orders carry only the status today, and then the record says so
        # instead of claiming this body landed.
        verdict = held.compare(body.to_body())
        kombo_result = held.result if verdict == READ_BACK_OTHER else None
        outcome = self.outbox.mark_written(
            record, job_id, [], lost_answer=True, read_back=verdict, kombo_result=kombo_result
        )
        if outcome == "written":
            log.warning(
                "order %s (integration %s): Kombo refused the result but holds the status "
                "%s (read back: %s): an earlier attempt landed, its answer was lost",
                escape_controls(record.order_id),
                escape_controls(record.integration_id),
                held.status,
                verdict,
            )
        return outcome

    def _kombo_view(self, integration_id: str, order_id: str) -> KomboView | None:
        page = self.client.get_orders(integration_id, ids=[order_id])
        for raw in page.results:  # only what decides matters: the rest need not validate
            if raw.id == order_id:
                return KomboView.of(raw.data)
        return None

    def _retry(self, record: OutboxRecord, job_id: str, error: KomboError) -> str:
        now = self._clock()
        elapsed = now - record.submitted_at
        reason = _kombo_reason(error)
        if elapsed >= self.retry_for:
            attempts = record.attempts + 1
            return self._fail(
                record,
                job_id,
                f"gave up after {attempts} attempts over {_text.duration(elapsed)} "
                f"(DISPATCHER_RESULT_RETRY_FOR): {reason}",
            )
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            exponent = min(record.attempts, tunables.BACKOFF_MAX_EXPONENT)
            ceiling = min(_WRITE_RETRY_CAP, _WRITE_RETRY_FIRST * 2.0**exponent)
            delay = self._rng.uniform(0.1, ceiling)
        delay = min(delay, max(0.0, self.retry_for - elapsed))
        return self.outbox.reschedule(record, job_id, delay, error=reason)

    def _fail(self, record: OutboxRecord, job_id: str, reason: str) -> str:
        outcome = self.outbox.mark_failed(record, job_id, reason)
        if outcome == "failed":
            log.error(
                "order %s (integration %s): result write failed: %s",
                escape_controls(record.order_id),
                escape_controls(record.integration_id),
                reason,
            )
        return outcome


def _kombo_reason(error: KomboError) -> str:
    # Kombo's message is the vendor's to read, bounded and masked like any failure reason;
    # with the link to Kombo's log of the request when Kombo gave one.
    text = f"{error} (log: {error.log_url})" if error.log_url else str(error)
    return clean_reason(text)


@dataclass(frozen=True, slots=True)
class WriterRuntime:
    """What a results worker process needs: settings, Redis and the writer."""

    settings: Settings
    redis: Redis
    writer: ResultWriter

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: Redis | None = None, *, threads: int = 1
    ) -> WriterRuntime:
        """``threads``: write jobs this process runs at once (each may hold a connection)."""
        # Through connection.py like every process: a rediss:// or Sentinel REDIS_URL works
        # for a plain ``rq worker`` (which builds this on its first write job) too.
        redis = redis or connect(settings.redis_url.get_secret_value(), role="worker")
        client = KomboClient.from_settings(
            settings,
            retry_budget=0.0,  # the outbox retries, over hours
            max_connections=max(16, threads),
        )
        writer = ResultWriter(
            Outbox.from_settings(redis, settings),
            WriteLeases(redis, Keys(settings.namespace), settings.kombo_write_concurrency),
            client,
            retry_for=settings.result_retry_for,
            lease_ttl=settings.kombo_timeout + _LEASE_MARGIN,
        )
        return cls(settings=settings, redis=redis, writer=writer)


_writer: ProcessSlot[WriterRuntime] = ProcessSlot(
    lambda: WriterRuntime.from_settings(load_settings())
)


def install_writer(runtime: WriterRuntime | None) -> None:
    """Make ``runtime`` the one write jobs of this process use (``None`` to reset)."""
    _writer.install(runtime)


def current_writer() -> WriterRuntime:
    """The installed writer, built from the environment when none was installed."""
    return _writer.get()


def write_result(integration_id: str, order_id: str) -> str:
    """The RQ job: write the order's pending result (see :meth:`ResultWriter.run`); with
    tracing on, a span in the trace of the submission (a retry's job is its child)."""
    job = get_current_job()
    ids = {"dispatcher.integration_id": integration_id, "dispatcher.order_id": order_id}
    with tracing.job_span("write_result", job, ids) as span:
        outcome = current_writer().writer.run(integration_id, order_id, job.id if job else "")
        tracing.set_attributes(span, **{"dispatcher.outcome": outcome})
    return outcome


def results_workers_running(settings: Settings, redis: Redis) -> bool:
    """Whether a results worker is registered on ``DISPATCHER_RESULTS_QUEUE`` (a live one, or
    one that died less than RQ's worker TTL ago)."""
    queue = Queue(settings.results_queue, connection=redis, serializer=JOB_SERIALIZER)
    return bool(Worker.all(queue=queue))


def write_claimed(
    runtime: WriterRuntime,
    integration_id: str,
    order_id: str,
    *,
    scheduled: bool = False,
    clock: Callable[[], float] = time.time,
) -> str | None:
    """Work the order's pending write in this process, as a results worker would, if its job
    can be claimed: ``dispatcher result`` when no results worker takes it.

    The job is claimed by removing it from the results queue (LREM, atomic against a worker's
    BLMOVE: one of them gets it); with ``scheduled``, also a retry whose time has come, from
    the scheduled registry. Only claim scheduled jobs when no results worker (and so no RQ
    scheduler, which moves them without a claim) runs. Returns what became of the write (see
    :meth:`ResultWriter.run`), or None when there was nothing to claim (no pending write, a
    retry not yet due, or a worker has the job).
    """
    redis = runtime.redis
    record = runtime.writer.outbox.get(integration_id, order_id)
    if record is None or record.state != "pending" or not record.job_id:
        return None
    queue = Queue(runtime.settings.results_queue, connection=redis, serializer=JOB_SERIALIZER)
    claimed = bool(redis.lrem(queue.key, 1, record.job_id))
    if not claimed and scheduled:
        due = record.next_attempt_at is None or record.next_attempt_at <= clock()
        claimed = due and bool(redis.zrem(queue.scheduled_job_registry.key, record.job_id))
    if not claimed:
        return None
    try:
        return runtime.writer.run(integration_id, order_id, record.job_id)
    finally:
        redis.delete(Job.key_for(record.job_id))  # run here, not by RQ: no job left behind


def run_results_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    processes: int = 1,
    threads: int = 1,
    runtime: WriterRuntime | None = None,
) -> None:
    """Run RQ worker(s) on the results queue until stopped (or until empty with ``burst``),
    with the scheduler (which queues retries when their delay is up).

    With ``threads`` above 1 each process runs that many write jobs at once
    (:class:`~dispatcher.worker.threaded.ThreadedWorker`): a write mostly waits on Kombo.
    Write jobs are safe side by side: the write cap is a lease per job id in Redis, whichever
    thread or process holds it, every end of a write (written, failed, rescheduled) is one
    Lua script that checks the job still owns it, and the Kombo client and Redis pool are
    shared by the threads (the client's connection pool is sized to ``threads``). On SIGTERM a
    threaded worker lets the writes in flight finish for up to
    ``DISPATCHER_WORKER_SHUTDOWN_TIMEOUT`` seconds (a write is bounded by
    ``KOMBO_TIMEOUT``), then puts the rest back on the queue.
    """
    runtime = runtime or WriterRuntime.from_settings(settings, redis, threads=threads)
    install_writer(runtime)
    queue = Queue(settings.results_queue, connection=redis, serializer=JOB_SERIALIZER)
    worker_class: type[WorkerBase]
    if threads > 1:
        worker_class = threaded_worker_class(threads, settings.worker_shutdown_timeout)
    else:
        worker_class = InProcessWorker
    try:
        if processes <= 1:
            worker = worker_class([queue], connection=redis)
            worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        else:
            pool = WorkerPool(
                [queue],
                connection=redis,
                num_workers=processes,
                worker_class=worker_class,
                serializer=JOB_SERIALIZER,
            )
            pool.start(burst=burst, logging_level=settings.log_level)
    finally:
        runtime.writer.client.close()  # its Kombo connections (one per thread that wrote)
