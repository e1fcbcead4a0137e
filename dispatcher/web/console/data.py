"""What the console's pages show, read from Redis through the operator modules, and what its
buttons do. Blocking Redis calls: the routes run these in a worker thread.

Everything here is plain data (strings, numbers); the templates escape all of it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from dispatcher import _text
from dispatcher.ops.failed import FailedJob, failed_jobs
from dispatcher.ops.order_record import describe_order, known_integrations, timeline_integrations
from dispatcher.ops.results import list_results
from dispatcher.ops.status import Snapshot, take_snapshot
from dispatcher.ops.timeline import event_details, order_timeline
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.settings import Settings
from dispatcher.store import throughput
from dispatcher.store.keys import Keys, parse_order_ref
from dispatcher.store.results import OutboxRecord
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.untrusted import untrusted_text

__all__ = [
    "DEFAULT_WINDOW",
    "KIND_HELP",
    "SORTS",
    "STATES",
    "WINDOWS",
    "Chart",
    "IntegrationRow",
    "Overview",
    "Tick",
    "TimelineEvent",
    "chart",
    "failed_per_integration",
    "failures",
    "integration_rows",
    "order_timelines",
    "overview",
    "results",
    "retry_jobs",
    "set_paused",
]

# Failed jobs a page lists, and "retry all matching" retries, at most.
FAILURES_SHOWN = 500
RETRY_ALL_LIMIT = 10_000

STATES = ("ok", "failing", "stale", "never swept", "paused")


# The chart's windows: name -> (minutes, minutes between ticks). The last hour by default.
WINDOWS: Mapping[str, tuple[int, int]] = {"1h": (60, 10), "24h": (24 * 60, 180)}
DEFAULT_WINDOW = "1h"

# What each counter counts, for the chart's legend (its tooltip).
KIND_HELP: Mapping[str, str] = {
    "found": "Orders listed by sweeps: every sweep lists each OPEN order again, seen or not "
    "(so found runs ahead of dispatched)",
    "dispatched": "New orders queued for the handler chain: once per order",
    "results": "Final results written back to Kombo: once per order",
}


@dataclass(frozen=True, slots=True)
class Tick:
    """A time label under the chart: its x (in points), where it sits in percent of the
    width and how it is anchored (so that the first and last labels stay inside)."""

    x: int
    percent: float
    anchor: str  # SVG text-anchor: start, middle or end
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """The SVG chart of the window: one polyline per kind, a point per minute."""

    width: int
    height: int
    first_minute: int
    peak: int
    lines: Mapping[str, str]  # kind -> polyline points
    counts: Mapping[str, str]  # kind -> "minute:count,..." of the minutes with any
    totals: Mapping[str, int]
    ticks: Sequence[Tick]
    refused: Sequence[str]
    window: str = DEFAULT_WINDOW


@dataclass(frozen=True, slots=True)
class Overview:
    snapshot: Snapshot
    chart: Chart
    now: float


def overview(
    redis: Redis, settings: Settings, *, now: float | None = None, window: str = DEFAULT_WINDOW
) -> Overview:
    """The overview: the status snapshot and the chart of ``window`` (a key of
    :data:`WINDOWS`). Round trips: the snapshot's (three, plus RQ's two per worker) and one
    for the chart, whatever the number of integrations."""
    window = window if window in WINDOWS else DEFAULT_WINDOW
    snapshot = take_snapshot(redis, settings, now=now)
    minutes, every = WINDOWS[window]
    series = throughput.read_series(redis, Keys(settings.namespace), snapshot.taken_at, minutes)
    return Overview(snapshot, chart(series, tick_every=every, window=window), snapshot.taken_at)


def chart(
    series: throughput.Series,
    *,
    height: int = 160,
    tick_every: int = 180,
    window: str = DEFAULT_WINDOW,
) -> Chart:
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
    span = max(1, width - 1)
    for x in range(width):
        minute = series.first_minute + x
        if minute % tick_every == 0:
            percent = round(100 * x / span, 2)
            # A label at an edge is anchored there: centred, half of it would be cut off.
            anchor = "start" if percent < 6 else "end" if percent > 94 else "middle"
            label = time.strftime("%H:%M", time.gmtime(minute * 60))
            ticks.append(Tick(x, percent, anchor, label))
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
        window=window,
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


def failed_per_integration(redis: Redis, settings: Settings) -> dict[str, int]:
    """How many orders of each integration have a job in the failed registry: they wait for
    a retry, not for a result."""
    jobs, _ = failed_jobs(redis, settings.queue, limit=None)
    return dict(Counter(job.integration_id for job in jobs if job.integration_id is not None))


def integration_rows(
    snapshot: Snapshot,
    *,
    query: str = "",
    state: str = "",
    sort: str = "state",
    desc: bool = False,
    failed: Mapping[str, int] | None = None,
) -> list[IntegrationRow]:
    """One row per integration, filtered (``query`` in the id, state or error; ``state``)
    and sorted (a key of :data:`SORTS`); ``failed``: :func:`failed_per_integration`."""
    now = snapshot.taken_at
    failed = failed or {}
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
            # Dispatched orders without a result written back yet, but for those whose job
            # failed: no result comes for them until they are retried.
            backlog=max(0, i.remembered - i.results_written - failed.get(i.integration_id, 0)),
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


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleOrder:
    """An order provisioned ``stale_after`` ago or more without a final result."""

    integration_id: str
    order_id: str
    provisioned_at: float


@dataclass(frozen=True, slots=True)
class ResultsView:
    failed: list[OutboxRecord]
    pending: list[OutboxRecord]
    stale: list[StaleOrder]
    stale_after: float


def results(redis: Redis, settings: Settings, *, limit: int = FAILURES_SHOWN) -> ResultsView:
    """The way back: failed and pending result writes, and the orders provisioned long ago
    without a result (oldest first, at most ``limit`` of each)."""
    cutoff = time.time() - settings.stale_after
    provisioned = Keys(settings.namespace).provisioned
    raw = redis.zrangebyscore(provisioned, "-inf", cutoff, start=0, num=limit, withscores=True)
    stale = []
    for ref, score in cast("list[tuple[bytes | str, float]]", raw):
        found = parse_order_ref(ref.decode() if isinstance(ref, bytes) else str(ref))
        if found is not None:
            stale.append(StaleOrder(found[0], found[1], float(score)))
    return ResultsView(
        failed=list_results(redis, settings, state="failed", limit=limit),
        pending=list_results(redis, settings, state="pending", limit=limit),
        stale=stale,
        stale_after=settings.stale_after,
    )


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
    """The order's story in each integration that knows it, from the timeline ``dispatcher
    show`` and ``GET /orders/{i}/{o}`` print (:func:`dispatcher.ops.timeline.order_timeline`),
    each event in words (a step's output keys, not its values)."""
    keys = Keys(settings.namespace)
    integrations = known_integrations(redis, keys, settings.kombo_integration_ids)
    records = describe_order(redis, settings.namespace, settings.queue, order_id, integrations)
    if not records:  # a replayed delivery's order of an integration known for nothing else
        others = timeline_integrations(redis, keys, order_id)
        records = describe_order(redis, settings.namespace, settings.queue, order_id, others)
    timelines = []
    for record in records:
        events = [
            _event_in_words(event)
            for event in order_timeline(
                redis, settings, record.integration_id, order_id, record=record
            )
        ]
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


def _event_in_words(event: Mapping[str, Any]) -> TimelineEvent:
    kind = str(event.get("event"))

    def get(name: str) -> str:
        value = event.get(name)
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return "" if value is None else str(value)

    words = _EVENT_WORDS.get(kind)
    what, detail = words(get) if words else (kind.replace("_", " "), "")
    if words is None or kind in _DETAILS_AS_SHOWN:
        detail = event_details(dict(event))
    if kind == "result_written" and event.get("lost_answer"):
        detail = "; ".join(filter(None, ["Kombo's answer was lost", detail]))
    # Details are a vendor's or Kombo's words (output keys, reasons, warnings).
    return TimelineEvent(_number(event.get("at")), what, untrusted_text(detail, 500))


# Event kind (dispatcher.ops.timeline) -> (what, detail) from the event's fields as text.
_EVENT_WORDS: Mapping[str, Callable[[Callable[[str], str]], tuple[str, str]]] = {
    "first_seen": lambda get: (
        f"dispatched (marked seen{' by ' + get('source') if get('source') else ''})",
        "",
    ),
    "enqueued": lambda get: ("queued", f"job {get('job_id')}"),
    "requeued": lambda get: (
        f"queued again{' for attempt ' + get('attempt') if get('attempt') else ''}",
        "",
    ),
    "started": lambda get: ("started", get("worker")),
    "step_done": lambda get: (f"step {get('handler')} completed", get("output_keys")),
    "step_failed": lambda get: (f"failed in {get('handler') or 'the job'}", get("reason")),
    "retry_scheduled": lambda get: ("retry scheduled", ""),
    "job_finished": lambda get: ("job finished", ""),
    "job_failed": lambda get: ("job failed", ""),
    "provisioned": lambda get: ("provisioned (handler chain done)", get("steps")),
    "result_submitted": lambda get: (f"result submitted: {get('status')}", ""),
    "result_written": lambda get: (f"result written: {get('status')}", get("warnings")),
    "result_failed": lambda get: ("result write failed", get("reason")),
    "write_retry_due": lambda get: ("result write retry due", get("last_error")),
    # Recorded by the webhook receiver (dispatcher/web/webhook.py): never dispatched, or not
    # yet; their details are told as `dispatcher show` tells them.
    "webhook_not_open": lambda get: (
        f"webhook delivery not dispatched: Kombo lists it as {get('kombo_status')}",
        "",
    ),
    "webhook_unconfirmed": lambda get: ("webhook delivery waiting for Kombo's confirmation", ""),
    "webhook_dropped": lambda get: ("webhook delivery dropped: Kombo never listed it", ""),
}
_DETAILS_AS_SHOWN = {"webhook_not_open", "webhook_unconfirmed", "webhook_dropped"}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
