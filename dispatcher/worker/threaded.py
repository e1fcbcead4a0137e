"""A worker process that runs up to N jobs at once, each in a thread (``--threads N``).

Handlers mostly wait on vendor APIs and SMTP, so one process can keep many jobs in flight:
the GIL is released while they wait. Each job keeps the guarantees of the one-job workers
because it runs through the same RQ code paths (``prepare_execution``, ``perform_job``,
``handle_job_failure``...):

- it is a real RQ execution: a member ``<job id>:<execution id>`` of the started registry,
  listed in the worker's execution set (``rq info``, rq-dashboard), with a heartbeat. One
  heartbeat thread beats for every job in flight, in one pipeline, every
  ``HEARTBEAT_INTERVAL`` seconds;
- the job timeout and the per-step timeouts are deadlines kept by one watcher thread
  (:mod:`dispatcher.worker.deadlines`), not SIGALRM (main thread only);
- retries, failure reasons and step records are those of :mod:`dispatcher.worker.jobs`;
  the job's start and success are written in fewer round trips than RQ's
  (:mod:`dispatcher.worker.threaded_records`).

One main thread takes a job off the queue only when a thread is free, and runs RQ's
maintenance (the requeue of abandoned and stranded jobs) while all are busy, so a saturated
worker still recovers the jobs of dead ones. If the process dies (SIGKILL, OOM), its N
executions stop heartbeating and every live worker's maintenance requeues each of them
(``requeue_abandoned`` handles every member of the registry on its own) within
``RECOVERY_BOUND``.

SIGTERM (or SIGINT): take no new job, let those in flight finish for up to
``DISPATCHER_WORKER_SHUTDOWN_TIMEOUT`` seconds, then put the rest back on the queue (their
completed steps are kept and skipped when they run again) and exit. A second signal
requeues at once.
"""

from __future__ import annotations

import queue as stdlib_queue
import threading
import time
from typing import Any, ClassVar

import redis.exceptions
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now
from rq.worker import WorkerStatus

from dispatcher.logs import set_order_context
from dispatcher.store import lua
from dispatcher.store.fair import FairFeed, FairOptions, taken_jobs
from dispatcher.store.keys import Keys
from dispatcher.store.rq_jobs import PendingFinish
from dispatcher.worker.admission import admit, fair_feed, job_integration, log_context
from dispatcher.worker.base import RECONNECT_WAIT_MAX, REDIS_LOST, DispatcherWorkerMixin
from dispatcher.worker.deadlines import DeadlinePenalty
from dispatcher.worker.jobs import current_runtime
from dispatcher.worker.scheduler import ThreadScheduler
from dispatcher.worker.threaded_records import ScriptedRecords
from dispatcher.worker.threaded_stop import GracefulStop

__all__ = ["ThreadedWorker", "threaded_worker_class"]

# How often the main thread, waiting for a free thread, wakes to run maintenance.
_SLOT_POLL = 1.0
# The most jobs taken off the queue in one round trip when threads are idle.
_BATCH = 16


class ThreadedWorker(GracefulStop, ScriptedRecords, DispatcherWorkerMixin, SimpleWorker):
    """An RQ worker running up to ``threads`` jobs at once in its own process (see module)."""

    threads: ClassVar[int] = 8
    shutdown_timeout: ClassVar[float] = 25.0
    death_penalty_class = DeadlinePenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.Semaphore(self.threads)
        self._handoff: stdlib_queue.SimpleQueue[tuple[Job, Queue] | None] = (
            stdlib_queue.SimpleQueue()
        )
        self._pool: list[threading.Thread] = []
        self._in_flight: dict[str, tuple[Job, Execution]] = {}  # by execution id
        self._in_flight_lock = threading.Lock()
        self._taken = 0  # jobs handed to threads and not yet done
        self._requeued: set[str] = set()  # execution ids put back at shutdown
        self._idle = threading.Condition(self._in_flight_lock)
        self._interruptible = False
        self._beat_stop = threading.Event()
        self._tally_lock = threading.Lock()
        self._batch: FairFeed | None = None  # see _batch_feed
        self._one_by_one = False
        self._threads_take = True  # see _next_take
        self._thread_chain = threading.local()  # .waiting: jobs behind the one a thread runs

    # -- state: BUSY while any job is in flight ---------------------------------------------

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if state == WorkerStatus.IDLE and getattr(self, "_in_flight", None):
            state = WorkerStatus.BUSY
        if state == self._state and pipeline is None:
            return  # a round trip saved per job: the state did not change
        super().set_state(state, pipeline=pipeline)

    # -- the scheduler: a thread, not a forked process (dispatcher.worker.scheduler) -----------

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ's own method, with the scheduler's class the only change.
        self.scheduler = ThreadScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
            finally:
                self.scheduler.release_locks()  # type: ignore[no-untyped-call]
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def stop_scheduler(self) -> None:
        if isinstance(self.scheduler, ThreadScheduler):
            self.scheduler.stop_thread()
        else:
            super().stop_scheduler()  # type: ignore[no-untyped-call]

    # -- the main loop -------------------------------------------------------------------------

    def work(  # type: ignore[override]  # the same parameters, typed
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str | None = None,
        log_format: str | None = None,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        **kwargs: Any,
    ) -> bool:
        """Take jobs off the queues and run up to ``threads`` at once until stopped (or, with
        ``burst``, until the queues are empty and every job in flight has finished)."""
        options = {k: v for k, v in (("date_format", date_format), ("log_format", log_format)) if v}
        self.bootstrap(logging_level, **options)
        self._dequeue_strategy = kwargs.get("dequeue_strategy")
        self._threads_take = max_jobs is None  # the main thread counts jobs against max_jobs
        if with_scheduler:
            self._start_scheduler(burst, logging_level, **options)
        self._install_signal_handlers()  # type: ignore[no-untyped-call]
        beat = threading.Thread(target=self._beat, name="rq-heartbeat", daemon=True)
        beat.start()
        self._load_scripts()
        taken = 0
        try:
            while not self._stop_requested:
                if not self._wait_for_slot():
                    break
                limit = None if max_jobs is None else max_jobs - taken
                started = self._start_batch(limit)
                if started:
                    taken += started
                    if max_jobs is not None and taken >= max_jobs:
                        break
                    continue
                job_and_queue = self._dequeue(None if burst else self.dequeue_timeout)
                if job_and_queue is None:
                    self._slots.release()
                    if burst:
                        break
                    continue
                self._start(job_and_queue)
                taken += 1
                if max_jobs is not None and taken >= max_jobs:
                    break
        except StopRequested:
            pass
        except redis.exceptions.TimeoutError:
            self.log.error("Worker %s: Redis connection timeout, quitting...", self.name)
        finally:
            self._interruptible = False
            try:
                self._drain(self.shutdown_timeout if self._stop_requested else None)
            finally:
                self._beat_stop.set()
                for _ in self._pool:
                    self._handoff.put(None)
                self.teardown()
        return taken > 0

    def _load_scripts(self) -> None:
        """Every script at once: the first jobs' ends meet no NOSCRIPT (each would run its
        thread's take twice, dispatcher.store.lua.LuaScript.followed_by)."""
        try:
            lua.load_all(self.connection)
        except redis.exceptions.RedisError as exc:  # they then load as they are used
            self.log.warning("Worker %s: scripts not loaded ahead: %s", self.name, exc)

    def _wait_for_slot(self) -> bool:
        """Block until a thread is free, running maintenance meanwhile; False when stopping."""
        self._interruptible = True
        try:
            while not self._slots.acquire(timeout=_SLOT_POLL):
                if self._stop_requested:
                    return False
                if self.should_run_maintenance_tasks:
                    self._interruptible = False
                    self._maintain()
                    self._interruptible = True
        finally:
            self._interruptible = False
        return not self._stop_requested or self._release_slot_false()

    def _maintain(self) -> None:
        # RQ's maintenance meets a Redis failover like any command: skipped until the next
        # pass instead of taking the worker down.
        try:
            self.run_maintenance_tasks()
        except REDIS_LOST as exc:
            self.log.warning("Worker %s: maintenance skipped, Redis lost: %s", self.name, exc)

    def _release_slot_false(self) -> bool:
        self._slots.release()
        return False

    def _start_batch(self, limit: int | None) -> int:
        """With a slot held: take as many jobs as there are idle threads (at most ``_BATCH``)
        in one round trip (FairFeed.take) and hand them to threads; returns how many started.
        0 (every slot beyond the held one given back) when the queue is empty or the batch
        held none of ours, and whenever capped integrations need each job's lease checked:
        then the one-job pop decides, and blocks when there is nothing to take."""
        feed = self._batch_feed()
        if feed is None or self._stop_requested:
            return 0
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        wanted = 1
        most = _BATCH if limit is None else min(_BATCH, limit)
        while wanted < most and self._slots.acquire(blocking=False):
            wanted += 1
        try:
            taken = feed.take(wanted)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self.log.error("Worker %s: cannot reach Redis (%s), retrying", self.name, exc)
            taken = []
        queue = self.queues[0]
        started = 0
        for job_id, fields in taken:
            job = self._restore(job_id, fields, queue)
            if job is None:
                continue
            self._start((job, queue))
            started += 1
        # The held slot goes back only when nothing started: the caller then pops one job.
        for _ in range(wanted - max(started, 1)):
            self._slots.release()
        return started

    def _batch_feed(self) -> FairFeed | None:
        """The feeder to take batches with: the orders queue's (no caps), or a plain one for
        the results queue (window 0: it feeds nothing); None when jobs go one at a time."""
        if self._one_by_one or len(self.queues) != 1:
            return None
        if self._batch is None:
            settings = current_runtime().settings
            name = self.queues[0].name
            if name == settings.queue:
                self._batch = fair_feed(self.connection)
                self._one_by_one = self._batch.options.any_cap
            else:
                keys = Keys(settings.namespace)
                self._batch = FairFeed(self.connection, keys, name, FairOptions(window=0))
        return None if self._one_by_one else self._batch

    def _restore(self, job_id: str, fields: dict[bytes, bytes], queue: Queue) -> Job | None:
        """A job taken in a batch, as RQ's pop and fetch would give it, or None when it is
        not to run here (its hash gone, refused, or another namespace's: dealt with as the
        one-job pop deals with them)."""
        if not fields:
            return None  # RQ skips an id without a hash; the stranded-job pass drops it
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.restore(fields)
        if admit(job, queue) != "run":
            return None
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        return job

    def _dequeue(self, timeout: int | None) -> tuple[Job, Queue] | None:
        """One blocking pop (RQ's ``dequeue_any``), without the per-job worker heartbeats of
        ``dequeue_job_and_maintain_ttl``: the heartbeat thread keeps the worker alive."""
        wait = 1.0
        while True:
            if self.should_run_maintenance_tasks:
                self._maintain()
            if self._stop_requested:
                return None
            self._interruptible = True
            try:
                # In the try: marking the worker idle is the first command a Redis failover
                # meets here, and it took the worker down (the results workers' failover).
                self.set_state(WorkerStatus.IDLE)
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    timeout,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                return None
            except REDIS_LOST as exc:
                self.log.error("Worker %s: cannot reach Redis (%s), retrying", self.name, exc)
                time.sleep(wait)
                wait = min(wait * 2, RECONNECT_WAIT_MAX)
                continue
            finally:
                self._interruptible = False
                set_order_context(None)  # the queue class tags the main thread; jobs tag theirs
            if result is not None:
                job, queue = result
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
                self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
            return result

    def _start(self, job_and_queue: tuple[Job, Queue]) -> None:
        """Hand a job to a free thread; start one more thread while all are busy."""
        with self._in_flight_lock:
            self._taken += 1
            spawn = self._taken > len(self._pool)
        if spawn:
            thread = threading.Thread(
                target=self._run_jobs, name=f"rq-job-{len(self._pool) + 1}", daemon=True
            )
            self._pool.append(thread)
            thread.start()
        self._handoff.put(job_and_queue)

    # -- job threads --------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        while (item := self._handoff.get()) is not None:
            chain, queue = [item[0]], item[1]
            try:
                while chain:
                    job = chain.pop(0)
                    self._thread_chain.waiting = len(chain)
                    try:
                        self._run_one(job, queue)
                    except Exception:  # RQ handles a job's own failures; this is RQ's bookkeeping
                        self.log.exception("Worker %s: job %s: unexpected error", self.name, job.id)
                    try:
                        chain.extend(self._spread(self._taken_after(job, queue), queue))
                    except Exception:  # Redis lost: what was taken waits in RQ's intermediate
                        # list for the stranded-job pass; the thread lives on
                        self.log.exception("Worker %s: the job taken after %s", self.name, job.id)
            finally:
                with self._idle:
                    self._taken -= 1
                    self._idle.notify_all()
                self._slots.release()

    def _next_take(self) -> tuple[Any, ...] | None:
        """The take of this thread's next job, sent after its job's success in the same round
        trip (dispatcher.store.rq_jobs.PendingFinish): a busy worker's thread goes on to its
        next job without a round trip, a wake of the main thread and a handoff per job. Not
        when stopping, when the main thread counts jobs (``max_jobs``), or when capped
        integrations need each job's lease checked (the main thread's one-job pop)."""
        if self._stop_requested or not self._threads_take:
            return None
        if getattr(self._thread_chain, "waiting", 0):
            return None  # this thread has jobs in hand already: they are its next
        feed = self._batch_feed()
        return None if feed is None else feed.take_command(1)

    def _taken_after(self, job: Job, queue: Queue) -> list[Job]:
        """The jobs taken with ``job``'s success, to run next in this thread: once taken off
        the queue (into RQ's intermediate list) a job runs here, stopping or not, as one the
        main thread handed over does."""
        pending: PendingFinish | None = getattr(job, "_dispatcher_finish", None)
        if pending is None or not pending.taken:
            return []
        taken = [pair for reply in pending.taken for pair in taken_jobs(reply)]
        restored = (self._restore(job_id, fields, queue) for job_id, fields in taken)
        return [next_job for next_job in restored if next_job is not None]

    def _spread(self, taken: list[Job], queue: Queue) -> list[Job]:
        """The jobs this thread runs next, of those taken with a success: the first; each
        other (a take that ran twice because the server lacked a script, after a restart or a
        failover) goes to an idle thread if one is free, else waits its turn here. Kept in one
        thread, each extra job waited a whole job longer, and the thread's chain never
        shrank (each of its jobs took one more), for as long as the queue held jobs."""
        kept = taken[:1]
        for job in taken[1:]:
            if not self._stop_requested and self._slots.acquire(blocking=False):
                self._start((job, queue))
            else:
                kept.append(job)
        return kept

    def _run_one(self, job: Job, queue: Queue) -> None:
        set_order_context(log_context(job))
        try:
            execution = self.prepare_execution(job)
            with self._in_flight_lock:
                self._in_flight[execution.id] = (job, execution)
            try:
                self.perform_job(job, queue, execution)
            finally:
                with self._idle:
                    self._in_flight.pop(execution.id, None)
                    self._idle.notify_all()
                # The burst summary counts what the threads did (it said "0 done" after 48),
                # by the status the job's own bookkeeping just gave it (no round trip).
                with self._tally_lock:
                    if execution.id in self._requeued:
                        self.tally.retried += 1
                    else:
                        self.tally.count(job, refresh=False)
        finally:
            set_order_context(None)

    # -- heartbeats ---------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._beat_stop.wait(self.job_monitoring_interval):
            try:
                self.beat_all()
            except RedisError as exc:  # the next beat may get through; the jobs go on
                self.log.warning("Worker %s: heartbeat failed: %s", self.name, exc)

    def beat_all(self) -> None:
        """One pipeline: the worker's heartbeat and that of every job in flight (RQ's
        ``maintain_heartbeats`` for each, in one round trip)."""
        with self._in_flight_lock:
            in_flight = list(self._in_flight.values())
        worker_ttl = self.job_monitoring_interval + 60
        feed = fair_feed(self.connection)
        with self.connection.pipeline() as pipeline:
            self.heartbeat(worker_ttl, pipeline=pipeline)
            for job, execution in in_flight:
                if job.origin == feed.queue:
                    feed.renew(pipeline, job.id, job_integration(job))
                working = (now() - job.started_at).total_seconds() if job.started_at else 0.0
                ttl = self.get_heartbeat_ttl(job, working_time=working)
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
            pipeline.execute()


def threaded_worker_class(threads: int, shutdown_timeout: float) -> type[ThreadedWorker]:
    """A ThreadedWorker class with these settings (RQ's worker pool builds workers from a
    class, so the settings travel as class attributes)."""
    return type(
        "ThreadedWorker",
        (ThreadedWorker,),
        {"threads": threads, "shutdown_timeout": shutdown_timeout, "__module__": __name__},
    )
