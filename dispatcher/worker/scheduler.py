"""RQ's scheduler in a thread of a threaded worker, not a forked process.

RQ forks a process per worker that holds a queue's scheduler lock: a copy of the whole worker
(48 MB of RSS, most of it shared pages) that moves scheduled retries back to the queue once a
second. A threaded worker already runs threads; its scheduler is one more (the same
``RQScheduler.work`` loop, its lock and heartbeat), and it stops with the worker:
``stop_scheduler`` asks it to stop and joins it, instead of signalling a process. A worker
SIGKILLed takes its scheduler with it (the forked one lived on as an orphan); the lock lapses
after its TTL and another worker's maintenance takes it, as when a whole worker host dies.
"""

from __future__ import annotations

import threading
from typing import Any

from rq.scheduler import RQScheduler, run

__all__ = ["ThreadScheduler"]


class ThreadScheduler(RQScheduler):
    """An ``RQScheduler`` whose ``start`` runs ``work`` in a daemon thread (see module)."""

    def start(self) -> Any:
        self._status = self.Status.STARTED
        # RQ's worker checks ``_process.is_alive()`` in its maintenance: a thread has it.
        thread = threading.Thread(target=run, args=(self,), name="rq-scheduler", daemon=True)
        self._process = thread  # type: ignore[assignment]  # RQ types it for its process
        thread.start()
        return thread

    def _install_signal_handlers(self) -> None:
        # Signals go to the main thread (the worker's); the worker stops this thread.
        return None

    def stop_thread(self) -> None:
        """Ask the loop to stop (it releases its locks) and wait for it, one interval at most
        and a little more."""
        thread = self._process
        self.request_stop()  # type: ignore[no-untyped-call]
        if isinstance(thread, threading.Thread) and thread.is_alive():
            thread.join(timeout=self.interval + 5)
