"""One snapshot of the dispatcher's state, read from Redis and RQ's registries.

``dispatcher status`` (text: :mod:`dispatcher.ops.views`, and ``--json``) and ``/metrics`` all
render the same :class:`Snapshot`, taken by :func:`take_snapshot` in a handful of round
trips. Three rooms: :mod:`.model` (the snapshot's dataclasses and its JSON shape),
:mod:`.read` (reading Redis into them), :mod:`.problems` (what is wrong, and the lines and
console links that say so).

The JSON shape (:meth:`Snapshot.as_dict`) is a stable interface documented in the README:
keys are only ever added.
"""

from dispatcher.ops.status.model import (
    FAILING,
    NEVER_SWEPT,
    OK,
    STALE,
    BrokenKey,
    IntegrationStatus,
    QueueStatus,
    Snapshot,
    StepCounts,
    SweepError,
    Unconfirmed,
    WorkerStatus,
)
from dispatcher.ops.status.problems import BACKLOG_AGE, Problem
from dispatcher.ops.status.read import take_snapshot

__all__ = [
    "BACKLOG_AGE",
    "FAILING",
    "NEVER_SWEPT",
    "OK",
    "STALE",
    "BrokenKey",
    "IntegrationStatus",
    "Problem",
    "QueueStatus",
    "Snapshot",
    "StepCounts",
    "SweepError",
    "Unconfirmed",
    "WorkerStatus",
    "take_snapshot",
]
