"""The write job's import path before this module was renamed ``dispatcher.worker.results``.

RQ stores a job's function as an import path and imports it when the job runs. Result write
jobs queued (or scheduled for a retry) by a dispatcher before the rename name
``dispatcher.worker.writeback.write_result``; after an upgrade they must still run, so the
old path stays importable and the workers accept it
(:data:`~dispatcher.store.results.RESULT_JOB_FUNCTIONS`). New jobs use the new path; this
module can go once no such job can be left (``DISPATCHER_RESULT_RETRY_FOR`` after every
deployment has upgraded).
"""

from __future__ import annotations

from dispatcher.worker.results import write_result

__all__ = ["write_result"]
