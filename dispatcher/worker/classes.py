"""The worker classes of one job at a time: RQ's forking worker and its in-process worker
with the dispatcher's additions (:class:`~dispatcher.worker.base.DispatcherWorkerMixin`), and
:class:`InProcessWorker` (``DISPATCHER_FORK_PER_JOB=false``). The threaded worker (N jobs at
once) is :mod:`dispatcher.worker.threaded`.
"""

from __future__ import annotations

import threading

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

from dispatcher.logs import set_order_context
from dispatcher.worker.admission import log_context
from dispatcher.worker.base import REDIS_LOST, DispatcherWorkerMixin

__all__ = ["DispatcherSimpleWorker", "DispatcherWorker", "InProcessWorker"]


class DispatcherWorker(DispatcherWorkerMixin, Worker):
    """RQ's forking worker with the dispatcher's additions (see the mixin)."""


class DispatcherSimpleWorker(DispatcherWorkerMixin, SimpleWorker):
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
        set_order_context(log_context(job))
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
            self.tally.count(job)
        self.set_state(WorkerStatus.IDLE)

    def _heartbeat_until(self, done: threading.Event, job: Job, execution: Execution) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except RedisError as exc:  # the next beat may get through; the job goes on
                self.log.warning("heartbeat of job %s failed: %s", job.id, exc)
