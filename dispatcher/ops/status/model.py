"""What a status snapshot holds: queues, workers, integrations, results, the server.

The dataclasses :mod:`dispatcher.ops.status.read` fills from Redis and
:mod:`dispatcher.ops.status.problems` judges. :meth:`Snapshot.as_dict` is the stable JSON shape
of ``dispatcher status --json`` (documented in the README): keys are only ever added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.ops.results import StaleOrders
from dispatcher.poller.telemetry import RequestSeries
from dispatcher.store.connection import ServerCheck

__all__ = [
    "FAILING",
    "NEVER_SWEPT",
    "OK",
    "PAUSED",
    "STALE",
    "BrokenKey",
    "IntegrationStatus",
    "QueueStatus",
    "Snapshot",
    "StepCounts",
    "SweepError",
    "Unconfirmed",
    "WorkerStatus",
]

# Integration states.
OK = "ok"
FAILING = "failing"
STALE = "stale"
NEVER_SWEPT = "never swept"
PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """Job counts of one RQ queue and its registries."""

    name: str
    queued: int
    started: int
    scheduled: int
    deferred: int
    finished: int
    failed: int
    canceled: int
    oldest_queued_at: float | None
    last_failed_at: float | None
    kind: str = "orders"  # what its jobs do: "orders" (the handler chain) or "results" (writes)

    def oldest_queued_age(self, now: float) -> float | None:
        return None if self.oldest_queued_at is None else max(0.0, now - self.oldest_queued_at)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One RQ worker listening on the dispatcher queue."""

    name: str
    state: str
    hostname: str | None
    pid: int | None
    queues: tuple[str, ...]
    last_heartbeat: float | None
    successful_jobs: int
    failed_jobs: int
    current_job_id: str | None
    current_order_id: str | None
    current_integration_id: str | None


@dataclass(frozen=True, slots=True)
class SweepError:
    """The last error of an integration's sweeps: Kombo's code (or ours) and the message."""

    code: str | None
    message: str
    at: float | None


@dataclass(frozen=True, slots=True)
class BrokenKey:
    """A key Redis refused to read (another type than belongs there): shown as a problem."""

    key: str
    integration_id: str | None  # None: a key every integration shares
    problem: str  # one line naming the key (dispatcher.store.wrongtype)


@dataclass(frozen=True, slots=True)
class IntegrationStatus:
    """What the poller recorded about one integration."""

    integration_id: str
    state: str
    configured: bool | None
    remembered: int
    last_sweep_at: float | None
    last_attempt_at: float | None
    duration: float | None
    orders_seen: int | None
    orders_new: int | None
    pages: int | None
    error_count: int
    last_error: SweepError | None
    paused: bool = False
    lease: str | None = None
    next_sweep_at: float | None = None
    consecutive_failures: int = 0
    watermark: float | None = None
    last_sweep_kind: str | None = None
    results_written: int = 0
    broken_keys: tuple[str, ...] = ()
    # New orders left out as invalid (they can never validate): how many the last sweep that
    # met any found, and the first of them, until a full sweep finds none.
    invalid_orders: int = 0
    last_invalid_order: SweepError | None = None


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """Webhook orders waiting for Kombo to confirm them OPEN (dispatcher/web/confirm.py):
    how many, and how long the oldest has waited (None: none, or no receiving time)."""

    count: int
    oldest_age: float | None


@dataclass(frozen=True, slots=True)
class StepCounts:
    """How often one handler's step completed and failed (failed attempts included)."""

    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``dispatcher status`` shows, at one moment."""

    taken_at: float
    namespace: str
    queues: tuple[QueueStatus, ...]
    workers: tuple[WorkerStatus, ...]
    orders_seen: int
    orders_dispatched: int
    integrations: tuple[IntegrationStatus, ...]
    handlers: Mapping[str, StepCounts]
    kombo_requests: tuple[RequestSeries, ...]
    problems: tuple[str, ...]
    broken_keys: tuple[BrokenKey, ...] = ()
    # The way back (dispatcher/store/results.py): results by state, orders left without one.
    results: Mapping[str, int] | None = None
    stale: StaleOrders | None = None
    # {integration: {"written", "failed", "latency_sum", "le|<bound>"...}} for /metrics.
    result_stats: Mapping[str, Mapping[str, float]] | None = None
    # What the server is (dispatcher.store.connection.check_server): its refusal and problems
    # join ``problems``; its notices are shown apart (worth knowing, nothing is wrong yet).
    server: ServerCheck = field(default_factory=ServerCheck)
    # The reconciler's record (store/reconcile_state.read_state): last pass, repairs by kind.
    reconcile: Mapping[str, Any] | None = None
    # Webhook orders kept until Kombo confirms them OPEN (None: the key is of another type).
    webhook_unconfirmed: Unconfirmed | None = None

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape of ``dispatcher status --json`` (see the README)."""
        now = self.taken_at
        return {
            "taken_at": round(now, 3),
            "namespace": self.namespace,
            "ok": not self.problems,
            "problems": list(self.problems),
            "notices": list(self.server.notices),
            "redis": {"version": self.server.version, **self.server.facts},
            "broken_keys": [
                {"key": b.key, "integration": b.integration_id, "problem": b.problem}
                for b in self.broken_keys
            ],
            "queues": {
                q.name: {
                    "kind": q.kind,
                    "queued": q.queued,
                    "started": q.started,
                    "scheduled": q.scheduled,
                    "deferred": q.deferred,
                    "finished": q.finished,
                    "failed": q.failed,
                    "canceled": q.canceled,
                    "oldest_queued_age": _round(q.oldest_queued_age(now)),
                    "last_failed_at": _round(q.last_failed_at),
                }
                for q in self.queues
            },
            "workers": [
                {
                    "name": w.name,
                    "state": w.state,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "last_heartbeat": _round(w.last_heartbeat),
                    "successful_jobs": w.successful_jobs,
                    "failed_jobs": w.failed_jobs,
                    "current_job_id": w.current_job_id,
                    "current_order_id": w.current_order_id,
                    "current_integration_id": w.current_integration_id,
                }
                for w in self.workers
            ],
            "orders": {
                "seen": self.orders_seen,
                "dispatched": self.orders_dispatched,
                "finished": sum(i.results_written for i in self.integrations),
            },
            "integrations": {
                i.integration_id: {
                    "state": i.state,
                    "configured": i.configured,
                    "remembered": i.remembered,
                    "last_sweep_at": _round(i.last_sweep_at),
                    "last_sweep_age": _round(
                        None if i.last_sweep_at is None else now - i.last_sweep_at
                    ),
                    "last_attempt_at": _round(i.last_attempt_at),
                    "duration": i.duration,
                    "orders_seen": i.orders_seen,
                    "orders_new": i.orders_new,
                    "pages": i.pages,
                    "error_count": i.error_count,
                    "paused": i.paused,
                    "lease": i.lease,
                    "next_sweep_at": _round(i.next_sweep_at),
                    "consecutive_failures": i.consecutive_failures,
                    "watermark": _round(i.watermark),
                    "last_sweep_kind": i.last_sweep_kind,
                    "results_written": i.results_written,
                    "broken_keys": list(i.broken_keys),
                    "invalid_orders": i.invalid_orders,
                    "last_invalid_order": (
                        None
                        if i.last_invalid_order is None
                        else {
                            "message": i.last_invalid_order.message,
                            "at": _round(i.last_invalid_order.at),
                        }
                    ),
                    "last_error": (
                        None
                        if i.last_error is None
                        else {
                            "code": i.last_error.code,
                            "message": i.last_error.message,
                            "at": _round(i.last_error.at),
                        }
                    ),
                }
                for i in self.integrations
            },
            "handlers": {
                name: {"completed": counts.completed, "failed": counts.failed}
                for name, counts in self.handlers.items()
            },
            "kombo_requests": [series.as_dict() for series in self.kombo_requests],
            "results": dict(self.results or {"pending": 0, "written": 0, "failed": 0}),
            "stale_orders": {
                "count": self.stale.count if self.stale else 0,
                "oldest_age": _round(self.stale.oldest_age if self.stale else None),
            },
            "reconcile": dict(self.reconcile or {}),
            "webhook_unconfirmed": {
                "count": self.webhook_unconfirmed.count if self.webhook_unconfirmed else 0,
                "oldest_age": _round(
                    self.webhook_unconfirmed.oldest_age if self.webhook_unconfirmed else None
                ),
            },
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
