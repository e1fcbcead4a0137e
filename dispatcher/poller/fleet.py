"""Several poller processes on one machine (``dispatcher poll --processes N``).

A sweep is CPU-bound in one process (parsing, enqueuing), so more cores need more processes.
Each child is the one-process command (its own connections and GIL), given here as
``command``. In the fleet loop they share the schedule like pollers on several machines
(:func:`run_fleet`); with ``--once``, child I sweeps share I of N of the integrations and
their reports add up (:func:`sweep_in_processes`). SIGTERM and SIGINT are forwarded to the
children.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from dispatcher.poller.report import SweepReport

__all__ = ["FleetError", "parse_share", "run_fleet", "sweep_in_processes"]


class FleetError(Exception):
    """A poller process ended without a report."""


def parse_share(value: str) -> tuple[int, int]:
    """``"I/N"`` (the I-th of N shares, counted from 0) as ``(I, N)``; ValueError otherwise."""
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ValueError(f"--share: expected I/N with I < N, got {value!r}")
    return int(index), int(count)


def run_fleet(command: Sequence[str], processes: int) -> int:
    """Run ``processes`` copies of ``command`` until one exits; then stop the others and
    return the exit code that matters (the largest in absolute value), so that a process
    manager restarts the set."""
    children = [subprocess.Popen(list(command), text=True) for _ in range(processes)]
    with _forwarding_signals(children) as forward:
        first_exit = _first_exit(children)
        forward(signal.SIGTERM, None)
        codes = [child.wait() for child in children]
    return max([first_exit, *codes], key=abs)


def sweep_in_processes(command: Sequence[str], processes: int) -> SweepReport:
    """Sweep every integration once with ``processes`` copies of ``command`` (each given
    ``--once --json --share I/N``) and add up their reports. Each child prints its own error
    lines; raises :class:`FleetError` if one ends without a report."""
    children = [
        subprocess.Popen(
            [*command, "--once", "--json", "--share", f"{index}/{processes}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    report = SweepReport()
    with _forwarding_signals(children):
        for child in children:
            output = child.communicate()[0]
            try:
                part = json.loads(output.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise FleetError(
                    f"poll: a poller process failed (exit {child.returncode})"
                ) from None
            _add(report, part)
    return report


def _add(report: SweepReport, part: dict[str, Any]) -> None:
    """Add a child's report (:meth:`SweepReport.as_dict`) to ``report``."""
    report.integrations += part["integrations"]
    report.pages += part["pages"]
    report.orders_seen += part["orders_seen"]
    report.orders_new += part["orders_new"]
    report.interrupted += part["interrupted"]
    report.invalid_orders += part["invalid_orders"]
    report.errors.update(part["errors"])


def _first_exit(children: list[subprocess.Popen[str]]) -> int:
    """Wait for the first child to exit; its exit code. A thread waits on each child, so no
    polling; the main thread's wait still lets signal handlers run."""
    exited = threading.Event()
    codes: list[int] = []
    lock = threading.Lock()

    def watch(child: subprocess.Popen[str]) -> None:
        code = child.wait()
        with lock:
            codes.append(code)
        exited.set()

    for child in children:
        threading.Thread(target=watch, args=(child,), daemon=True, name="poller-child").start()
    exited.wait()
    with lock:
        return codes[0]


@contextmanager
def _forwarding_signals(
    children: list[subprocess.Popen[str]],
) -> Iterator[Callable[[int, FrameType | None], None]]:
    """SIGTERM and SIGINT, while inside, go to every child still running; a child is sent
    SIGTERM once (a second one, once it has put the default handler back on its way out,
    would kill it: exit -15 instead of 0)."""
    signalled: set[tuple[int, int]] = set()

    def forward(signum: int, frame: FrameType | None) -> None:
        # Each signal reaches each child once: the stop that follows the first child's exit
        # must not be a second SIGTERM to a poller already finishing its page (a second
        # signal stops a poller at once).
        for child in children:
            if child.poll() is None and (child.pid, signum) not in signalled:
                signalled.add((child.pid, signum))
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield forward
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
