"""A retried job's new status and its move to the scheduled registry (or the queue) in one
atomic step.

RQ 3's ``Job.retry()`` (and ``Job._handle_retry_result()``) write ``status=scheduled`` at
once, with a plain HSET, while the move out of the started registry into the scheduled one
waits in the failure pipeline that ``handle_job_failure`` executes afterwards. A worker killed
between the two left a job whose status said ``scheduled`` but that sat in no queue and no
registry but the started one; when its heartbeat ran out, the abandoned-job requeue saw a
status other than ``started`` and dropped it: the order was lost (issue 21).
:class:`DispatcherJob` routes those status writes into the pipeline RQ hands to the retry, so
they commit together with the registry move (MULTI/EXEC) or not at all.

Test hook: with ``DISPATCHER_TEST_RETRY_WINDOW`` set to a file path (read once, at import),
a worker about to commit a retry writes its pid to that file and stops itself (SIGSTOP, and its
thread never goes on), at the point where RQ alone would already have written the status: a
test then kills it there, deterministically. Unset (always, outside tests), the hook costs
one attribute test per retry.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rq.job import Job, JobStatus

__all__ = ["RETRY_WINDOW_ENV", "DispatcherJob"]

RETRY_WINDOW_ENV = "DISPATCHER_TEST_RETRY_WINDOW"
_WINDOW_FILE: str | None = os.environ.get(RETRY_WINDOW_ENV) or None


class DispatcherJob(Job):
    """RQ's job, but a retry writes its status in the retry's pipeline (see module)."""

    _retry_pipeline: Any = None

    def retry(self, queue: Any, pipeline: Any) -> None:
        with self._status_in(pipeline):
            super().retry(queue, pipeline)

    def _handle_retry_result(self, queue: Any, pipeline: Any, *args: Any, **kwargs: Any) -> None:
        with self._status_in(pipeline):
            super()._handle_retry_result(queue, pipeline, *args, **kwargs)

    def set_status(self, status: JobStatus, pipeline: Any = None) -> None:
        if pipeline is None and self._retry_pipeline is not None:
            pipeline = self._retry_pipeline
        super().set_status(status, pipeline=pipeline)
        if _WINDOW_FILE is not None and self._retry_pipeline is not None:
            _stop_in_window(_WINDOW_FILE)

    @contextmanager
    def _status_in(self, pipeline: Any) -> Iterator[None]:
        self._retry_pipeline = pipeline
        try:
            yield
        finally:
            self._retry_pipeline = None


def _stop_in_window(path: str) -> None:
    """The test hook: say where we are, then stop until killed. SIGSTOP is sent to this thread
    (sent to the process, the kernel may let the sending thread run on a little, past the
    pipeline: seen with --threads), and the thread never goes on even if it is continued."""
    Path(path).write_text(str(os.getpid()))
    while True:
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        time.sleep(1)
