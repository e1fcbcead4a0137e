"""Starting the workers (``dispatcher worker``): :func:`run_worker` picks the worker class
(forking, in-process or threaded), runs one worker or a pool of them on the dispatcher
queue, and at the end of a burst logs and returns what it did and left
(:class:`~dispatcher.worker.burst.BurstSummary`), waiting for due retries with
``--wait-retries``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from redis import Redis
from rq import Queue
from rq.worker_pool import WorkerPool

from dispatcher.settings import Settings
from dispatcher.store.fair import FairFeed
from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import JOB_SERIALIZER, WorkerBase, queue_key, scheduled_key
from dispatcher.worker.base import demote_rq_chatter
from dispatcher.worker.burst import BurstSummary
from dispatcher.worker.classes import DispatcherWorker, InProcessWorker
from dispatcher.worker.jobs import Runtime, install_runtime
from dispatcher.worker.threaded import threaded_worker_class

__all__ = ["WAIT_RETRIES_DEFAULT", "run_worker"]

log = logging.getLogger("dispatcher.worker")

# --wait-retries without a value: at most this many seconds.
WAIT_RETRIES_DEFAULT = 900.0


def run_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    processes: int = 1,
    runtime: Runtime | None = None,
    threads: int | None = None,
    wait_retries: float | None = None,
    clock: Any = time.monotonic,
) -> BurstSummary | None:
    """Run RQ worker(s) on the dispatcher queue until stopped (or until empty with ``burst``).

    With ``threads`` above 1 (default: ``DISPATCHER_WORKER_THREADS``) each process runs that
    many jobs at once (dispatcher/worker/threaded.py). The handler chain is loaded and
    checked first, so a missing or broken handler stops the worker at start with a
    HandlerConfigError instead of failing every order. A burst logs
    what it did and what it left, and returns that; with ``wait_retries`` (seconds) it also
    waits for jobs scheduled for a retry, working each once due, for at most that long.
    """
    runtime = runtime or Runtime.from_settings(settings)
    install_runtime(runtime)
    demote_rq_chatter()
    queue = Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    threads = settings.worker_threads if threads is None else threads
    worker_class: type[WorkerBase]
    if threads > 1:
        worker_class = threaded_worker_class(threads, settings.worker_shutdown_timeout)
    else:
        worker_class = DispatcherWorker if settings.fork_per_job else InProcessWorker
    try:
        if processes > 1:
            # Forked children inherit the installed runtime.
            pool = WorkerPool(
                [queue],
                connection=redis,
                num_workers=processes,
                worker_class=_reporting_burst(worker_class),
                serializer=JOB_SERIALIZER,
            )
            pool.start(burst=burst, logging_level=settings.log_level)
            summary = BurstSummary()
        elif not burst:
            worker = worker_class([queue], connection=redis)
            # The scheduler moves retried jobs back to the queue when their backoff expires.
            worker.work(burst=False, with_scheduler=True, logging_level=settings.log_level)
            return None
        else:
            # ThreadedWorker is a DispatcherWorker too (the same mixin over SimpleWorker).
            burst_class = cast("type[DispatcherWorker]", worker_class)
            summary = _burst(burst_class, queue, redis, settings, wait_retries, clock)
        if not burst:
            return None
        summary.look(redis, queue.name, time.time())
        # Orders still waiting their turn (an integration at its cap) are queued too.
        summary.queued += sum(
            FairFeed(redis, Keys(settings.namespace), queue.name).waiting().values()
        )
        level = logging.WARNING if summary.scheduled or summary.queued else logging.INFO
        log.log(level, "%s", summary.line(queue.name, counted=processes <= 1))
        return summary
    finally:
        for handler in runtime.chain:
            close = getattr(handler, "close", None)  # optional: see BaseHandler.close
            if callable(close):
                close()


def _reporting_burst(worker_class: type[WorkerBase]) -> type[WorkerBase]:
    """``worker_class`` whose burst ends with a line of what it did: a pool's children count
    their own jobs (the parent only sees what they left)."""

    class _Reporting(worker_class):  # type: ignore[valid-type,misc]
        def work(self, *args: Any, **kwargs: Any) -> bool:
            try:
                return bool(super().work(*args, **kwargs))
            finally:
                tally = getattr(self, "tally", None)
                if kwargs.get("burst") and isinstance(tally, BurstSummary):
                    log.info("burst of worker %s finished: %s", self.name, tally.did())

    _Reporting.__name__ = _Reporting.__qualname__ = worker_class.__name__
    return _Reporting


def _burst(
    worker_class: type[DispatcherWorker],
    queue: Queue,
    redis: Redis,
    settings: Settings,
    wait_retries: float | None,
    clock: Any,
) -> BurstSummary:
    """Burst workers, one after the other while retries are due within ``wait_retries``."""
    summary = BurstSummary()
    deadline = clock() + (wait_retries or 0.0)
    while True:
        worker = worker_class([queue], connection=redis)
        # In a burst the scheduler moves the retries already due to the queue, once.
        worker.work(burst=True, with_scheduler=True, logging_level=settings.log_level)
        summary.add(worker.tally)
        if wait_retries is None or worker._stop_requested:
            return summary
        first = redis.zrange(scheduled_key(queue.name), 0, 0, withscores=True)
        if not first and not redis.llen(queue_key(queue.name)):
            return summary
        due_in = max(0.0, float(first[0][1]) - time.time()) if first else 0.0
        if clock() + due_in > deadline:
            log.warning(
                "--wait-retries: the next retry is due in %.0fs, past the %gs allowed",
                due_in,
                wait_retries,
            )
            return summary
        log.info("waiting %.1fs for the next scheduled retry", due_in)
        # RQ's scheduler moves a job whose time has come on its next pass: a little past it.
        if not _wait_unless_stopped(worker, due_in + 0.05):
            log.info("stopped on request while waiting for retries")
            return summary


def _wait_unless_stopped(worker: DispatcherWorker, seconds: float) -> bool:
    """Sleep ``seconds`` unless a SIGTERM/SIGINT (the finished worker's handlers still run)
    asks the burst to stop first; False if it did."""
    deadline = time.monotonic() + seconds
    while not worker._stop_requested:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.1))
    return False
