"""One order's record for operators (``dispatcher show``, the console, the timeline):
:func:`describe_order` in each integration that knows it, and the integrations to look in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from redis import Redis
from rq.job import Job, JobStatus

from dispatcher import tracing
from dispatcher._text import as_float, as_str, glob_escape
from dispatcher.ops.failed import attempts_of, failures_of
from dispatcher.store.failures import Failure
from dispatcher.store.keys import Keys, job_id_for, parse_order_ref
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    job_key,
    scheduled_key,
)
from dispatcher.store.seen import parse_seen

__all__ = [
    "OrderRecord",
    "StepRecord",
    "describe_order",
    "known_integrations",
    "timeline_integrations",
]


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A completed handler step of one order and what it returned."""

    handler: str
    output: Any
    completed_at: float | None


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """Everything the dispatcher knows about one order of one integration."""

    order_id: str
    integration_id: str
    job_id: str
    seen_at: float | None
    job_status: str | None
    package_id: str | None = None
    source: str | None = None  # "poll" or "webhook" (jobs dispatched before it was recorded: None)
    enqueued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    retry_at: float | None = None
    attempts: int | None = None
    worker: str | None = None
    steps: tuple[StepRecord, ...] = ()
    last_error: Failure | None = None
    last_error_at: float | None = None
    payload: Mapping[str, Any] | None = field(default=None, repr=False)
    # The order's OpenTelemetry trace (its job's meta), when it was dispatched with tracing on.
    trace_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        traced = {"trace_id": self.trace_id} if self.trace_id else {}
        return traced | {
            "order_id": self.order_id,
            "integration_id": self.integration_id,
            "seen_at": self.seen_at,
            "job": {
                "id": self.job_id,
                "status": self.job_status,
                "package_id": self.package_id,
                "enqueued_at": self.enqueued_at,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "retry_at": self.retry_at,
                "attempts": self.attempts,
                "worker": self.worker,
            },
            "steps": {
                step.handler: {"output": step.output, "completed_at": step.completed_at}
                for step in self.steps
            },
            "last_error": (
                None
                if self.last_error is None
                else {
                    "handler": self.last_error.handler,
                    "reason": self.last_error.reason,
                    "at": self.last_error_at,
                }
            ),
        }


def known_integrations(redis: Redis, keys: Keys, configured: Iterable[str] = ()) -> list[str]:
    """Every integration the dispatcher has dispatched from or swept, plus ``configured``."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.seen_integrations)
        pipe.smembers(keys.swept_integrations)
        seen, swept = pipe.execute()
    return sorted(set(configured) | {as_str(i) for i in seen} | {as_str(i) for i in swept})


def timeline_integrations(redis: Redis, keys: Keys, order_id: str) -> list[str]:
    """The integrations holding a timeline of ``order_id``, found by SCAN (a walk of the
    keyspace: for a lookup that :func:`known_integrations` left empty). Such an order can
    be known by its timeline alone in an integration nothing was dispatched from, swept or
    configured: a webhook delivery of an order Kombo lists as not OPEN (a replay)."""
    prefix = f"{keys.namespace}:timeline:"
    # The order's segment of an order_ref: the id itself, or (in the escaped form of ids
    # holding ':' or '%') the id percent-escaped.
    tails = {order_id, order_id.replace("%", "%25").replace(":", "%3A")}
    found = set()
    for tail in tails:
        pattern = glob_escape(prefix) + "*:" + glob_escape(tail)
        for key in redis.scan_iter(match=pattern, count=1000):
            ref = parse_order_ref(as_str(key)[len(prefix) :])
            if ref is not None and ref[1] == order_id:
                found.add(ref[0])
    return sorted(found)


def describe_order(
    redis: Redis, namespace: str, queue_name: str, order_id: str, integrations: Iterable[str]
) -> list[OrderRecord]:
    """Everything known about ``order_id`` in each of ``integrations`` that knows it (seen,
    a job, step records, or a timeline: a replayed webhook delivery of an order Kombo had
    completed leaves only that), in integration order."""
    keys = Keys(namespace)
    candidates = list(integrations)
    with redis.pipeline(transaction=False) as pipe:
        for integration_id in candidates:
            pipe.hget(keys.seen(integration_id), order_id)
            pipe.exists(job_key(job_id_for(namespace, integration_id, order_id)))
            pipe.hgetall(keys.steps(integration_id, order_id))
            pipe.exists(keys.timeline(integration_id, order_id))
            # The job's meta as dispatched: its trace outlives the job (tracing on).
            pipe.hget(keys.dispatched(integration_id, order_id), "meta")
        answers = pipe.execute()
    records = []
    for index, integration_id in enumerate(candidates):
        seen, has_job, steps, has_timeline, dispatched = answers[5 * index : 5 * index + 5]
        if seen is None and not has_job and not steps and not has_timeline:
            continue
        record = _record(
            redis,
            queue_name,
            order_id,
            integration_id,
            job_id_for(namespace, integration_id, order_id),
            seen_at=parse_seen(seen)[0] if seen is not None else None,
            steps=_steps(steps),
        )
        if record.trace_id is None and dispatched is not None:
            record = replace(record, trace_id=_recorded_trace(dispatched))
        records.append(record)
    return records


def _recorded_trace(meta: bytes) -> str | None:
    try:
        return tracing.trace_id_of(json.loads(meta))
    except ValueError:  # not JSON: no trace to show
        return None


def _record(
    redis: Redis,
    queue_name: str,
    order_id: str,
    integration_id: str,
    job_id: str,
    *,
    seen_at: float | None,
    steps: tuple[StepRecord, ...],
) -> OrderRecord:
    job = Job.fetch_many([job_id], connection=redis, serializer=JOB_SERIALIZER)[0]
    if job is None:
        return OrderRecord(order_id, integration_id, job_id, seen_at, None, steps=steps)
    status = job.get_status(refresh=False)
    failure, failed_at = failures_of(redis, [job])[job.id]
    has_failed = (job.meta or {}).get("last_failure") or status == JobStatus.FAILED
    retry_at = None
    if status == JobStatus.SCHEDULED:
        retry_at = as_float(redis.zscore(scheduled_key(queue_name), job_id))
    try:
        payload = job.kwargs.get("order")
    except Exception:  # a payload this process cannot read is still worth the rest
        payload = None
    if not steps and status == JobStatus.FINISHED:
        steps = _steps_from_result(job)
    return OrderRecord(
        order_id=order_id,
        integration_id=integration_id,
        job_id=job_id,
        seen_at=seen_at,
        job_status=str(status.value if isinstance(status, JobStatus) else status),
        package_id=(job.meta or {}).get("package_id"),
        source=(job.meta or {}).get("source"),
        enqueued_at=job.enqueued_at.timestamp() if job.enqueued_at else None,
        started_at=job.started_at.timestamp() if job.started_at else None,
        ended_at=job.ended_at.timestamp() if job.ended_at else None,
        retry_at=retry_at,
        attempts=attempts_of(job) if (has_failed or status == JobStatus.FINISHED) else None,
        worker=job.worker_name,
        steps=steps,
        last_error=failure if has_failed else None,
        last_error_at=failed_at if has_failed else None,
        payload=payload if isinstance(payload, Mapping) else None,
        trace_id=tracing.trace_id_of(job.meta),
    )


def _steps_from_result(job: Job) -> tuple[StepRecord, ...]:
    # Step records expire with the result TTL like the job, but a job finished before step
    # records existed (or under a chain that does not write them) still has its return value.
    try:
        value = job.return_value()
    except ValueError:  # not JSON (a job finished before JSON jobs): never unpickled
        return ()
    outputs = value.get("steps") if isinstance(value, Mapping) else None
    if not isinstance(outputs, Mapping):
        return ()
    ended = job.ended_at.timestamp() if job.ended_at else None
    return tuple(StepRecord(str(name), output, ended) for name, output in outputs.items())


def _steps(raw: Mapping[bytes, bytes]) -> tuple[StepRecord, ...]:
    records = []
    for name, value in raw.items():
        if as_str(name).startswith("_"):
            continue  # bookkeeping (the attempt counter), not a step
        try:
            record = json.loads(value)
        except ValueError:
            record = {"output": as_str(value)}
        if not isinstance(record, dict):
            record = {"output": record}
        records.append(
            StepRecord(as_str(name), record.get("output"), as_float(record.get("completed_at")))
        )
    # In the order they completed: the chain's order.
    return tuple(sorted(records, key=lambda r: (r.completed_at is None, r.completed_at or 0)))


# -- forget ---------------------------------------------------------------------------------
