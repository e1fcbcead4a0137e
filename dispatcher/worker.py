"""Worker processes: RQ workers on the dispatcher queue, running the handler chain.

RQ recovers a job whose worker died (SIGKILL, OOM, a lost machine) only when some worker's
maintenance pass finds the job's heartbeat expired: by default 60 s after the last heartbeat,
by a pass that an idle worker runs about every 7 minutes. :class:`DispatcherWorker` shortens
all three so that an abandoned job is back on the queue within a bounded time (see
``RECOVERY_BOUND``), with its completed steps still skipped when it runs again.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from .jobs import Runtime, install_runtime
from .settings import Settings

__all__ = ["RECOVERY_BOUND", "DispatcherWorker", "InProcessWorker", "run_worker"]

# Seconds between heartbeats of a running job, and how long past a missed heartbeat a job
# counts as abandoned.
HEARTBEAT_INTERVAL = 5
HEARTBEAT_GRACE = 10
# A worker's registration expires this long after its last heartbeat; an idle worker wakes
# from its blocking pop every WORKER_TTL - 15 seconds (RQ's rule) to run maintenance.
WORKER_TTL = 25
MAINTENANCE_INTERVAL = 10
# Worst case from a worker's death to its job being queued again: the heartbeat runs out,
# then a live worker's next maintenance pass (an idle one wakes every WORKER_TTL - 15 s).
RECOVERY_BOUND = HEARTBEAT_INTERVAL + HEARTBEAT_GRACE + (WORKER_TTL - 15) + MAINTENANCE_INTERVAL


# KEYS: 1 started registry, 2 job hash, 3 queue list. ARGV: 1 registry entry, 2 job id.
# Whoever removes the registry entry requeues the job: at most one worker does, and the job is
# never out of both the registry and the queue.
_REQUEUE_ABANDONED = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'started' then return 0 end
redis.call('HSET', KEYS[2], 'status', 'queued')
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


class DispatcherWorker(Worker):
    """An RQ worker that requeues abandoned jobs within ``RECOVERY_BOUND`` seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ adds a fixed 60 s of grace; a job whose worker is gone waits that long.
        interval = self.job_monitoring_interval
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
        super().clean_registries()  # type: ignore[no-untyped-call]

    def requeue_abandoned(self, queue: Queue) -> int:
        """Put jobs whose worker stopped heartbeating back on the queue; returns how many."""
        registry = queue.started_job_registry
        requeued = 0
        entries = self.connection.zrangebyscore(registry.key, 0, time.time())
        for entry in cast("list[bytes]", entries):
            job_id = registry.parse_job_id(entry)
            done = self.connection.eval(
                _REQUEUE_ABANDONED, 3, registry.key, Job.key_for(job_id), queue.key, entry, job_id
            )
            if done:
                requeued += 1
                self.log.warning("requeued job %s: its worker stopped heartbeating", job_id)
        return requeued


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
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_until, args=(done, job, execution), name="rq-heartbeat"
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
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
) -> None:
    """Run RQ worker(s) on the dispatcher queue until stopped (or until empty with ``burst``).

    The handler chain is loaded and checked first, so a missing or broken handler stops the
    worker at start with a HandlerConfigError instead of failing every order.
    """
    runtime = runtime or Runtime.from_settings(settings)
    install_runtime(runtime)
    queue = Queue(settings.queue, connection=redis)
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
            close = getattr(handler, "close", None)
            if callable(close):
                close()
