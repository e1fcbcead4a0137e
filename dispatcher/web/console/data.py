"""What the console's pages show, read from Redis through the operator modules, and what its
buttons do. Blocking Redis calls: the routes run these in a worker thread.

Everything here is plain data (strings, numbers); the templates escape all of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from dispatcher import _text
from dispatcher.kombo.results import recorded_result
from dispatcher.ops.admin import FailedJob, describe_order, failed_jobs, known_integrations
from dispatcher.ops.status import Snapshot, take_snapshot
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.settings import Settings
from dispatcher.store import throughput
from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import JOB_SERIALIZER

__all__ = [
    "SORTS",
    "STATES",
    "Chart",
    "IntegrationRow",
    "Overview",
    "TimelineEvent",
    "chart",
    "failures",
    "integration_rows",
    "order_timelines",
    "overview",
    "retry_jobs",
    "set_paused",
]

# Failed jobs a page lists, and "retry all matching" retries, at most.
FAILURES_SHOWN = 500
RETRY_ALL_LIMIT = 10_000

STATES = ("ok", "failing", "stale", "never swept", "paused")


@dataclass(frozen=True, slots=True)
class Chart:
    """The SVG chart of the last 24 hours: one polyline per kind."""

    width: int
    height: int
    first_minute: int
    peak: int
    lines: Mapping[str, str]  # kind -> polyline points
    counts: Mapping[str, str]  # kind -> "minute:count,..." of the minutes with any
    totals: Mapping[str, int]
    ticks: Sequence[tuple[int, str]]  # x, "HH:MM" (UTC)
    refused: Sequence[str]


@dataclass(frozen=True, slots=True)
class Overview:
    snapshot: Snapshot
    chart: Chart
    now: float


def overview(redis: Redis, settings: Settings, *, now: float | None = None) -> Overview:
    """The overview: the status snapshot and the chart. Round trips: the snapshot's (three,
    plus RQ's two per worker) and one for the chart, whatever the number of integrations."""
    snapshot = take_snapshot(redis, settings, now=now)
    series = throughput.read_series(redis, Keys(settings.namespace), snapshot.taken_at)
    return Overview(snapshot, chart(series), snapshot.taken_at)


def chart(series: throughput.Series, *, height: int = 160) -> Chart:
    width = len(series.counts[throughput.KINDS[0]])
    peak = max([1, *(max(values, default=0) for values in series.counts.values())])
    lines = {}
    counts = {}
    for kind, values in series.counts.items():
        lines[kind] = " ".join(f"{x},{y_of(count, peak, height)}" for x, count in enumerate(values))
        counts[kind] = ",".join(
            f"{series.first_minute + x}:{count}" for x, count in enumerate(values) if count
        )
    ticks = []
    for x in range(width):
        minute = series.first_minute + x
        if minute % 180 == 0:  # every three hours
            ticks.append((x, time.strftime("%H:%M", time.gmtime(minute * 60))))
    return Chart(
        width=width,
        height=height,
        first_minute=series.first_minute,
        peak=peak,
        lines=lines,
        counts=counts,
        totals={kind: series.total(kind) for kind in series.counts},
        ticks=ticks,
        refused=series.refused,
    )


def y_of(count: int, peak: int, height: int) -> int:
    """The y of a count in the chart (0 at the top; the axis at ``height``)."""
    return height - round(count * (height - 10) / peak)


# -- integrations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntegrationRow:
    integration_id: str
    state: str
    paused: bool
    last_sweep: str
    last_sweep_at: float
    next_sweep: str
    next_sweep_at: float
    backlog: int
    last_error: str
    orders_seen: int
    results_written: int

    @property
    def search(self) -> str:
        """What the filter box matches, lower-cased."""
        return f"{self.integration_id} {self.state} {self.last_error}".lower()


SORTS: Mapping[str, Any] = {
    "integration": lambda r: r.integration_id,
    "state": lambda r: (r.state, r.integration_id),
    "last_sweep": lambda r: (r.last_sweep_at, r.integration_id),
    "next_sweep": lambda r: (r.next_sweep_at, r.integration_id),
    "backlog": lambda r: (r.backlog, r.integration_id),
    "error": lambda r: (r.last_error, r.integration_id),
    "seen": lambda r: (r.orders_seen, r.integration_id),
    "results": lambda r: (r.results_written, r.integration_id),
}


def integration_rows(
    snapshot: Snapshot, *, query: str = "", state: str = "", sort: str = "state", desc: bool = False
) -> list[IntegrationRow]:
    """One row per integration, filtered (``query`` in the id, state or error; ``state``)
    and sorted (a key of :data:`SORTS`)."""
    now = snapshot.taken_at
    rows = []
    needle = query.strip().lower()
    for i in snapshot.integrations:
        error = ""
        if i.last_error is not None:
            error = f"{i.last_error.code or 'error'}: {i.last_error.message}"
        row = IntegrationRow(
            integration_id=i.integration_id,
            state=i.state,
            paused=i.paused,
            last_sweep=_text.ago(i.last_sweep_at, now),
            last_sweep_at=i.last_sweep_at or 0.0,
            next_sweep=_text.ago(i.next_sweep_at, now) if i.next_sweep_at else "-",
            next_sweep_at=i.next_sweep_at or 0.0,
            # Dispatched orders without a result written back yet.
            backlog=max(0, i.remembered - i.results_written),
            last_error=_text.ellipsis(error, 300),
            orders_seen=i.remembered,
            results_written=i.results_written,
        )
        if needle and needle not in row.search:
            continue
        if state and row.state != state:
            continue
        rows.append(row)
    rows.sort(key=SORTS.get(sort, SORTS["state"]), reverse=desc)
    return rows


def set_paused(redis: Redis, settings: Settings, integration_id: str, *, paused: bool) -> bool:
    """Pause or resume one known integration; False when the id is not known."""
    keys = Keys(settings.namespace)
    registry = IntegrationRegistry(redis, keys, settings.kombo_integration_ids)
    known = set(known_integrations(redis, keys, settings.kombo_integration_ids))
    known.update(i.integration_id for i in registry.all())
    if integration_id not in known:
        return False
    if paused:
        registry.pause([integration_id])
    else:
        registry.resume([integration_id])
    return True


# -- failures -------------------------------------------------------------------------------


def failures(
    redis: Redis, settings: Settings, *, query: str = "", limit: int | None = FAILURES_SHOWN
) -> tuple[list[FailedJob], int]:
    """Failed jobs matching ``query`` (in order, integration, handler, reason or job id),
    newest first, at most ``limit``; and how many failed jobs there are in all."""
    jobs, total = failed_jobs(redis, settings.queue, limit=None if query else limit)
    if query:
        needle = query.strip().lower()
        jobs = [job for job in jobs if needle in _failure_text(job)]
        if limit is not None:
            jobs = jobs[:limit]
    return jobs, total


def _failure_text(job: FailedJob) -> str:
    parts = (job.job_id, job.order_id, job.integration_id, job.handler, job.reason)
    return " ".join(part or "" for part in parts).lower()


def retry_jobs(
    redis: Redis, settings: Settings, job_ids: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Re-queue failed jobs with a fresh set of DISPATCHER_MAX_RETRIES retries (completed
    steps are skipped when they run again), as ``dispatcher retry`` does: RQ's
    ``FailedJobRegistry.requeue``. Returns (re-queued, not in the failed registry)."""
    registry = FailedJobRegistry(
        queue=Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    )
    requeued: list[str] = []
    missing: list[str] = []
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
            job.retries_left = settings.max_retries
            job.save(include_meta=False)
            registry.requeue(job)
        except (NoSuchJobError, InvalidJobOperation):
            missing.append(job_id)
            continue
        requeued.append(job_id)
    return requeued, missing


# -- one order ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    at: float | None
    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OrderTimeline:
    integration_id: str
    order_id: str
    job_id: str
    status: str
    package_id: str
    candidate: str
    candidate_email: str
    job_title: str
    events: list[TimelineEvent] = field(default_factory=list)


def order_timelines(
    redis: Redis, settings: Settings, order_id: str, *, now: float | None = None
) -> list[OrderTimeline]:
    """The order's story in each integration that knows it: dispatched, queued, started,
    each step (with its output's keys, not values), failures, the result written back."""
    keys = Keys(settings.namespace)
    integrations = known_integrations(redis, keys, settings.kombo_integration_ids)
    timelines = []
    for record in describe_order(redis, settings.namespace, settings.queue, order_id, integrations):
        events = [
            TimelineEvent(record.seen_at, "dispatched (marked seen)"),
            TimelineEvent(record.enqueued_at, "queued", f"job {record.job_id}"),
            TimelineEvent(record.started_at, "started", record.worker or ""),
        ]
        for step in record.steps:
            output_keys = (
                ", ".join(sorted(map(str, step.output)))
                if isinstance(step.output, Mapping)
                else type(step.output).__name__
            )
            events.append(
                TimelineEvent(step.completed_at, f"step {step.handler} completed", output_keys)
            )
        if record.last_error is not None:
            events.append(
                TimelineEvent(
                    record.last_error_at,
                    f"failed in {record.last_error.handler or 'the job'}",
                    record.last_error.reason,
                )
            )
        if record.retry_at is not None:
            events.append(TimelineEvent(record.retry_at, "retry scheduled"))
        if record.ended_at is not None:
            events.append(TimelineEvent(record.ended_at, f"job {record.job_status}"))
        result = recorded_result(redis, keys, record.integration_id, order_id)
        if isinstance(result, Mapping):
            events.append(
                TimelineEvent(
                    _number(result.get("at")), f"result written: {result.get('status', '?')}"
                )
            )
        events = [e for e in events if e.at is not None or e.what.startswith("step ")]
        events.sort(key=lambda e: e.at or 0.0)
        payload = record.payload or {}
        candidate = payload.get("candidate") if isinstance(payload, Mapping) else None
        job = payload.get("job") if isinstance(payload, Mapping) else None
        candidate = candidate if isinstance(candidate, Mapping) else {}
        job = job if isinstance(job, Mapping) else {}
        name = " ".join(
            str(part) for part in (candidate.get("first_name"), candidate.get("last_name")) if part
        )
        timelines.append(
            OrderTimeline(
                integration_id=record.integration_id,
                order_id=record.order_id,
                job_id=record.job_id,
                status=record.job_status or "no job (expired or forgotten)",
                package_id=record.package_id or "-",
                candidate=name or "-",
                candidate_email=str(candidate.get("email") or "-"),
                job_title=str(job.get("name") or "-"),
                events=events,
            )
        )
    return timelines


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
