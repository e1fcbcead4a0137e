"""A threaded job's records in fewer round trips than RQ's (dispatcher.worker.threaded).

The job's start and success are the dispatcher's own scripts (dispatcher.store.rq_jobs),
written as RQ writes them; the success rides with the last step's record when it can; a
job put back on the queue at shutdown records nothing when it ends here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.utils import now
from rq.worker import WorkerStatus

from dispatcher.store import rq_jobs
from dispatcher.store.rq_internals import release_slot
from dispatcher.worker.base import DispatcherWorkerMixin
from dispatcher.worker.jobs import current_runtime
from dispatcher.worker.steps import keep_steps_read, steps_read

__all__ = ["ScriptedRecords"]

if TYPE_CHECKING:

    class _Worker(DispatcherWorkerMixin, SimpleWorker):
        pass

else:
    _Worker = object


class ScriptedRecords(_Worker):
    """The bookkeeping of ThreadedWorker's jobs (a mixin before DispatcherWorkerMixin)."""

    _requeued: set[str]  # execution ids put back at shutdown (ThreadedWorker)

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's ``prepare_execution`` and ``prepare_job_execution`` in one script
        (dispatcher.store.rq_jobs.start), where RQ sends two transactions, and the first read
        of the order's step records in the same round trip: the execution registered, the job
        marked started and moved from the intermediate list to the started registry. The
        worker's own heartbeat, which RQ also sends per job, is the heartbeat thread's."""
        if self._state != WorkerStatus.BUSY:  # RQ writes it for every job
            self.set_state(WorkerStatus.BUSY)
        steps = steps_read(job, current_runtime().settings)
        execution, flat = rq_jobs.start(
            self.connection,
            job,
            self.name,
            self.get_heartbeat_ttl(job),
            # RQ's condition (its cleanup handles the other case)
            leave_intermediate=len(self.queues) == 1,
            steps=steps,
        )
        self.executions[execution.id] = execution
        if steps is not None and flat is not None:
            keep_steps_read(job, steps, flat)
        job._dispatcher_prepared = True  # type: ignore[attr-defined]
        if self._finishes_itself(job):
            job._dispatcher_finish = rq_jobs.PendingFinish(  # type: ignore[attr-defined]
                job,
                execution,
                self.key,
                job.get_result_ttl(self.default_result_ttl),
                take_next=self._next_take,
            )
        return execution

    def _next_take(self) -> tuple[Any, ...] | None:
        """The command taking the thread's next job, to ride with a job's success; None when
        the thread is not to take one (ThreadedWorker)."""
        return None

    def _finishes_itself(self, job: Job) -> bool:
        """Whether the job's success is the dispatcher's script (else RQ's method: a job that
        repeats, or keeps no result)."""
        if job.repeats_left is not None and job.repeats_left > 0:
            return False
        return job.get_result_ttl(self.default_result_ttl) != 0

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if getattr(job, "_dispatcher_prepared", False):
            return  # done with the execution, in prepare_execution's transaction
        super().prepare_job_execution(job, remove_from_intermediate_queue)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also beats the job here, one round trip, to cover its success or failure
        # callback: the dispatcher's jobs have none (job_refusal), and the heartbeat thread
        # keeps beating the job until handle_job_success or _failure has removed it.
        job.ended_at = now()

    def _record_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        """RQ's ``handle_job_success`` in one script (dispatcher.store.rq_jobs.finish) instead
        of three round trips (WATCH of the job's dependents, their SMEMBERS, then MULTI/EXEC):
        the same writes, the dependents counted in the script, and none of them when the
        execution was put back on the queue meanwhile. The dispatcher's jobs have no
        dependents; should another job depend on one, RQ's own ``enqueue_dependents`` moves
        them after the script (a dependent added later sees the job finished and is enqueued
        at once, as RQ's WATCH arranges). A job that repeats, or keeps no result, goes
        through RQ's own method."""
        if not self._finishes_itself(job):
            return super()._record_success(job, queue, started_job_registry, execution)  # type: ignore[no-any-return]
        pending: rq_jobs.PendingFinish | None = getattr(job, "_dispatcher_finish", None)
        if pending is not None and pending.sent:
            dependents = pending.dependents  # recorded with the last step's record
        elif pending is not None:
            # Not carried by a step's record (a write job has none): the success, and the
            # thread's next job taken in the same round trip.
            dependents = pending.finish_now(self.connection)
        else:
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            dependents = rq_jobs.finish(self.connection, job, execution, self.key, result_ttl)
        self.executions.pop(execution.id, None)
        if dependents:
            queue.enqueue_dependents(job)
        release_slot(job)
        return None

    def handle_job_success(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> Any:
        if self._was_requeued(kwargs.get("execution")):
            return None
        return super().handle_job_success(job, queue, *args, **kwargs)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> Any:
        if self._was_requeued(kwargs.get("execution")):
            return None
        pending: rq_jobs.PendingFinish | None = getattr(job, "_dispatcher_finish", None)
        if pending is not None and pending.sent:
            # Raised after its success was recorded with the last step (the job's deadline,
            # met in that instant): it is done (or, requeued meanwhile, its copy finishes
            # it), not failed.
            self.log.warning("Worker %s: job %s ended after its success", self.name, job.id)
            return None
        return super().handle_job_failure(job, queue, *args, **kwargs)

    def _was_requeued(self, execution: Execution | None) -> bool:
        # A job put back on the queue at shutdown may still finish here before the process
        # exits: its result is not recorded, the requeued copy runs (its steps are skipped).
        return execution is not None and execution.id in self._requeued
