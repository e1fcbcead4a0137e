"""Timeouts that interrupt a thread's Python code, all kept by one watcher thread per process.

RQ's ``TimerDeathPenalty`` starts a ``threading.Timer`` (a new thread) for every timeout it
sets: per job, and per step of the handler chain. With dozens of jobs in flight that is
dozens of threads started and stopped per second. Here one daemon thread keeps a heap of
deadlines and, when one passes, raises its exception in the thread that set it
(``PyThreadState_SetAsyncExc``, as RQ's timer does). Like RQ's timer, it interrupts Python
code, not a blocking socket call: the exception is raised when the call returns.

A forked child (RQ's work horse) starts its own watcher on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import os
import threading
import time
from types import TracebackType
from typing import Any

from rq.timeouts import BaseDeathPenalty, BaseTimeoutException, JobTimeoutException

__all__ = ["DeadlinePenalty", "Deadlines", "deadline"]

# Below this many cancelled entries the heap is left as it is (rebuilding costs a pass).
_COMPACT_AT = 256


class _Entry:
    __slots__ = ("at", "cancelled", "exception", "thread_id")

    def __init__(self, at: float, thread_id: int, exception: type[BaseException]) -> None:
        self.at = at
        self.thread_id = thread_id
        self.exception = exception
        self.cancelled = False


class Deadlines:
    """The deadlines of one process; :func:`deadline` uses the process-wide instance."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Entry]] = []
        self._cancelled = 0  # cancelled entries still in the heap
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, exception: type[BaseException]) -> _Entry:
        """Raise ``exception`` in the calling thread ``seconds`` from now, unless cancelled."""
        if self._pid != os.getpid():  # forked: the parent's watcher did not come along
            self._reset()
        ident = threading.get_ident()
        entry = _Entry(time.monotonic() + seconds, ident, exception)
        with self._cond:
            heapq.heappush(self._heap, (entry.at, next(self._seq), entry))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="dispatcher-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: _Entry) -> None:
        """Cancel ``entry``: once this returns, its exception is never raised (it may have
        been raised already, in which case the caller is about to see it)."""
        with self._cond:
            if entry.cancelled:
                return  # cancelled before, or raised (the watcher marks what it pops)
            entry.cancelled = True  # left in the heap; dropped when it comes up, or ...
            self._cancelled += 1
            # ... when they are most of it: a job's deadline (DISPATCHER_JOB_TIMEOUT, 600 s
            # by default) comes up long after the job is done, and at 300 jobs/s the heap
            # held 180,000 of them, the worker's RSS growing by tens of MB and every push
            # slower. Rebuilt once the cancelled are half of it: O(1) per cancel, amortized.
            if self._cancelled > _COMPACT_AT and 2 * self._cancelled > len(self._heap):
                self._heap = [item for item in self._heap if not item[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _watch(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled -= 1
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)[2]
                entry.cancelled = True
                _raise_in(entry.thread_id, entry.exception)


def _raise_in(thread_id: int, exception: type[BaseException]) -> None:
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    if set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exception)) > 1:
        set_async_exc(ctypes.c_ulong(thread_id), None)  # more than one thread: undo


_deadlines = Deadlines()


class deadline:  # lower case: used as a context manager, like contextlib's
    """``with deadline(seconds, Exc):`` raises ``Exc`` in this thread if the block runs past
    ``seconds``; ``seconds <= 0`` sets no deadline."""

    __slots__ = ("_entry", "_exception", "_seconds")

    def __init__(self, seconds: float, exception: type[BaseException]) -> None:
        self._seconds = seconds
        self._exception = exception
        self._entry: _Entry | None = None

    def __enter__(self) -> None:
        if self._seconds > 0:
            self._entry = _deadlines.arm(self._seconds, self._exception)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._entry is None:
            return
        # Raised as the block ended: the block's work is done, keep its outcome.
        with contextlib.suppress(self._exception):
            _deadlines.cancel(self._entry)


class DeadlinePenalty(BaseDeathPenalty):
    """RQ's death-penalty interface (``Worker.death_penalty_class``) on the shared watcher,
    for jobs run in threads (RQ's default, SIGALRM, only works in the main thread)."""

    def __init__(
        self,
        timeout: float,
        exception: type[BaseException] = JobTimeoutException,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout, exception, **kwargs)  # type: ignore[no-untyped-call]
        self._deadline = deadline(timeout, exception)

    def setup_death_penalty(self) -> None:
        self._deadline.__enter__()

    def cancel_death_penalty(self) -> None:
        with contextlib.suppress(BaseTimeoutException):
            self._deadline.__exit__(None, None, None)
