"""The deadline watcher (dispatcher.worker.deadlines): one thread raising each thread's
timeout in it, and a heap that does not keep what was cancelled."""

from __future__ import annotations

import threading
import time

import pytest

from dispatcher.worker.deadlines import Deadlines


class Late(Exception):
    pass


def test_cancelled_deadlines_do_not_pile_up_in_the_heap() -> None:
    # A job's deadline is DISPATCHER_JOB_TIMEOUT (600 s by default) away and is cancelled
    # when the job ends a fraction of a second later: a busy worker cancels hundreds a second.
    deadlines = Deadlines()
    live = deadlines.arm(600, Late)
    for _ in range(20_000):
        deadlines.cancel(deadlines.arm(600, Late))
    assert len(deadlines._heap) <= 2 * 256 + 2
    assert deadlines._heap[0][2] is live or any(item[2] is live for item in deadlines._heap)
    deadlines.cancel(live)


def test_a_deadline_still_fires_among_cancelled_ones_and_a_cancelled_one_never_does() -> None:
    deadlines = Deadlines()
    raised: list[str] = []

    def run(name: str, seconds: float, cancel: bool) -> None:
        try:
            entry = deadlines.arm(seconds, Late)
            for _ in range(300):  # cancelled neighbours, enough to rebuild the heap
                deadlines.cancel(deadlines.arm(seconds / 2, Late))
            if cancel:
                deadlines.cancel(entry)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                time.sleep(0.01)
        except Late:
            raised.append(name)

    threads = [
        threading.Thread(target=run, args=("kept", 0.3, False)),
        threading.Thread(target=run, args=("cancelled", 0.3, True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert raised == ["kept"]


def test_cancelling_a_deadline_that_fired_is_harmless() -> None:
    deadlines = Deadlines()
    with pytest.raises(Late):
        entry = deadlines.arm(0.05, Late)
        time.sleep(1)
    deadlines.cancel(entry)
    assert deadlines._cancelled == 0
