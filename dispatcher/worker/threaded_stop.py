"""How a threaded worker stops (dispatcher.worker.threaded): SIGTERM lets the jobs in flight
finish for up to ``DISPATCHER_WORKER_SHUTDOWN_TIMEOUT`` seconds, then puts the rest back on
the queue; a second signal puts them back at once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now

from dispatcher.worker.base import DispatcherWorkerMixin
from dispatcher.worker.recovery import requeue_entry

__all__ = ["GracefulStop"]

if TYPE_CHECKING:

    class _Worker(DispatcherWorkerMixin, SimpleWorker):
        pass

else:
    _Worker = object


class GracefulStop(_Worker):
    """The stopping of ThreadedWorker (a mixin first in its bases)."""

    _interruptible: bool
    _idle: threading.Condition
    _in_flight: dict[str, tuple[Job, Execution]]
    _in_flight_lock: threading.Lock
    _taken: int
    _requeued: set[str]

    def _shutdown(self) -> None:
        # RQ raises StopRequested only when idle; with jobs in flight it sets a flag. The main
        # thread may be blocked in a pop for seconds: interrupt it there instead.
        self._stop_requested = True
        self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self._interruptible:
            raise StopRequested()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        # A second signal: requeue what is in flight now, then exit. RQ's worker pool and
        # the terminal may both deliver the first one: a repeat within a second is that.
        requested = self._shutdown_requested_date
        if requested is not None and now() - requested < timedelta(seconds=1):
            return
        self.log.warning("Worker %s: cold shut down, requeueing the jobs in flight", self.name)
        self.requeue_in_flight()
        raise SystemExit()

    def _drain(self, timeout: float | None) -> None:
        """Wait for the jobs in flight (at most ``timeout`` seconds), then requeue the rest."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            # Taken, not only in flight: a job handed to a thread that has not registered its
            # execution yet (a loaded machine) was left STARTED by a burst that ended at once.
            while self._in_flight or self._taken:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._idle.wait(left)
        if self._in_flight:
            self.requeue_in_flight()

    def requeue_in_flight(self) -> int:
        """Put every job in flight back on its queue (as a dead worker's would be); returns
        how many. Their threads' later results are dropped."""
        with self._in_flight_lock:
            in_flight = list(self._in_flight.values())
            self._requeued.update(execution.id for _, execution in in_flight)
        requeued = 0
        for job, execution in in_flight:
            if requeue_entry(self.connection, job.origin, execution.composite_key, job.id):
                requeued += 1
                self.log.warning("Worker %s: job %s put back on the queue", self.name, job.id)
        return requeued
