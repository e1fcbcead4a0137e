"""Operator views and actions on single orders: failed jobs, one order's record, forgetting.

``dispatcher failed``, ``show`` and ``forget`` are thin wrappers over :func:`failed_jobs`,
:func:`describe_order` and :func:`forget_order` (text views: :mod:`dispatcher.ops.views`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result

from dispatcher import tracing
from dispatcher._text import as_float, as_str
from dispatcher.logs import escape_controls
from dispatcher.store.failures import Failure, clean_reason, parse_failure
from dispatcher.store.keys import Keys, job_id_for, order_ref, parse_order_ref
from dispatcher.store.ledger import parse_seen
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    delete_job,
    failed_key,
    job_key,
    results_key,
    scheduled_key,
    unreadable_job,
)

__all__ = [
    "FailedJob",
    "ForgetRefused",
    "ForgetResult",
    "OrderRecord",
    "RetryResult",
    "StepRecord",
    "describe_order",
    "failed_jobs",
    "forget_order",
    "known_integrations",
    "retry_failed",
    "timeline_integrations",
]


@dataclass(frozen=True, slots=True)
class FailedJob:
    """One job in the failed registry: which order, which handler, why, how often."""

    job_id: str
    order_id: str | None
    integration_id: str | None
    package_id: str | None
    handler: str | None
    reason: str
    attempts: int
    failed_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "order_id": self.order_id,
            "integration_id": self.integration_id,
            "package_id": self.package_id,
            "handler": self.handler,
            "reason": self.reason,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
        }


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


class ForgetRefused(Exception):
    """The order cannot be forgotten now (unknown, or being worked on); the message says why."""


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What :func:`forget_order` removed."""

    was_seen: bool
    job_status: str | None
    steps: int
    effects: int
    result: str | None = None  # the state of the result record removed (pending, written...)
    unconfirmed: bool = False  # a webhook delivery waiting for Kombo's confirmation removed


# -- failed jobs ----------------------------------------------------------------------------


def failed_jobs(
    redis: Redis, queue_name: str, *, limit: int | None = None
) -> tuple[list[FailedJob], int]:
    """The newest ``limit`` failed jobs of the queue (all when ``None``), and how many there
    are in all. Entries whose job already expired are skipped, as RQ's own cleanup would."""
    registry = failed_key(queue_name)
    live = f"({int(time.time())}"
    total = int(redis.zcount(registry, live, "+inf"))
    # Scored by expiry (failure time + TTL): the highest scores are the newest failures.
    raw_ids: list[bytes] = redis.zrevrangebyscore(  # type: ignore[assignment]
        registry, "+inf", live, start=0, num=-1 if limit is None else limit
    )
    ids = [as_str(job_id) for job_id in raw_ids]
    jobs = [
        job
        for job in Job.fetch_many(ids, connection=redis, serializer=JOB_SERIALIZER)
        if job is not None
    ]
    failures = _failures(redis, jobs)
    result = []
    for job in jobs:
        unreadable = unreadable_job(job)
        if unreadable is not None:
            # Listed, as one line, and never loaded: its order is unknown without its meta.
            result.append(_unreadable_failed_job(job, unreadable))
            continue
        failure, _ = failures[job.id]
        meta = job.meta or {}
        result.append(
            FailedJob(
                job_id=job.id,
                order_id=meta.get("order_id"),
                integration_id=meta.get("integration_id"),
                package_id=meta.get("package_id"),
                handler=failure.handler,
                # The list is meant to carry no personal data (the Order page shows it whole):
                # a vendor's error may echo the candidate's e-mail or phone.
                reason=clean_reason(failure.reason, personal=True),
                attempts=_attempts(job),
                failed_at=job.ended_at.timestamp() if job.ended_at else None,
            )
        )
    return result, total


def _unreadable_failed_job(job: Job, why: str) -> FailedJob:
    return FailedJob(
        job_id=job.id,
        order_id=None,
        integration_id=None,
        package_id=None,
        handler=None,
        reason=(
            f"job {escape_controls(job.id)} not read: {why}; `dispatcher replay` queues its "
            "order again (docs/operations.md, Upgrading to JSON jobs)"
        ),
        attempts=1,
        failed_at=job.ended_at.timestamp() if job.ended_at else None,
    )


def _failures(redis: Redis, jobs: Sequence[Job]) -> dict[str, tuple[Failure, float | None]]:
    """The last failure of each job: from the meta the dispatcher's worker records on every
    failed attempt, else from RQ's latest result (a plain ``rq worker`` ran it)."""
    found: dict[str, tuple[Failure, float | None]] = {}
    missing: list[Job] = []
    for job in jobs:
        recorded = (job.meta or {}).get("last_failure")
        if isinstance(recorded, dict) and recorded.get("reason"):
            found[job.id] = (
                Failure(recorded.get("handler"), str(recorded["reason"])),
                as_float(recorded.get("at")),
            )
        else:
            missing.append(job)
    if missing:
        with redis.pipeline(transaction=False) as pipe:
            for job in missing:
                pipe.xrevrange(results_key(job.id), "+", "-", count=1)
            for job, entries in zip(missing, pipe.execute(), strict=True):
                found[job.id] = _failure_from_results(redis, job, entries)
    return found


def _failure_from_results(
    redis: Redis, job: Job, entries: list[tuple[bytes, dict[bytes, bytes]]]
) -> tuple[Failure, float | None]:
    if entries:
        result_id, payload = entries[0]
        try:
            result = Result.restore(
                job.id, as_str(result_id), payload, connection=redis, serializer=JOB_SERIALIZER
            )
        except ValueError:  # a return value that is not JSON: never loaded any other way
            return Failure(None, "unknown (its result is not JSON)"), None
        if result.type == Result.Type.FAILED:
            return parse_failure(result.exc_string), result.created_at.timestamp()
    return Failure(None, "unknown (no error was recorded)"), None


def _attempts(job: Job) -> int:
    attempt = (job.meta or {}).get("attempt")
    if isinstance(attempt, int) and attempt > 0:
        return attempt  # counted by the job itself, across retries, recoveries and re-queues
    failures = (job.meta or {}).get("failures")
    if isinstance(failures, int) and failures > 0:
        return failures + (1 if job.get_status(refresh=False) == JobStatus.FINISHED else 0)
    # Ran under a plain `rq worker`: count the retries RQ used up.
    if job.retry_intervals and job.retries_left is not None:
        return 1 + max(0, len(job.retry_intervals) - job.retries_left)
    return 1


# -- one order ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What :func:`retry_failed` did: the jobs re-queued (id, description), in order, and
    the ids that were not in the failed registry."""

    requeued: list[tuple[str, str | None]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def retry_failed(
    redis: Redis, queue_name: str, job_ids: Sequence[str] | None, *, max_retries: int
) -> RetryResult:
    """Re-queue failed jobs (``None``: every one in the failed registry), each with a fresh
    set of ``max_retries`` retries; their completed steps are skipped when they run again.
    Through RQ's public API: ``Job.fetch``, ``Job.save`` and ``FailedJobRegistry.requeue``."""
    registry = FailedJobRegistry(
        queue=Queue(queue_name, connection=redis, serializer=JOB_SERIALIZER)
    )
    result = RetryResult()
    for job_id in list(job_ids) if job_ids is not None else registry.get_job_ids():
        try:
            job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
            job.retries_left = max_retries
            job.save(include_meta=False)
            registry.requeue(job)
        except (NoSuchJobError, InvalidJobOperation):
            result.missing.append(job_id)
            continue
        result.requeued.append((job_id, job.description))
    return result


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
        pattern = _glob_escape(prefix) + "*:" + _glob_escape(tail)
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
    failure, failed_at = _failures(redis, [job])[job.id]
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
        attempts=_attempts(job) if (has_failed or status == JobStatus.FINISHED) else None,
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

_WATCH_RETRIES = 20


def forget_order(
    redis: Redis,
    namespace: str,
    queue_name: str,
    integration_id: str,
    order_id: str,
    *,
    handlers: Iterable[str] = (),
) -> ForgetResult:
    """Remove an order from the seen store, with its RQ job (hash, results, queue and registry
    entries), its step and effect records, and what its dispatch left on the way back (its
    outbox record and index entries, its timeline, its provisioned entry, a webhook delivery
    of it waiting for Kombo's confirmation), so that the next sweep dispatches it afresh. A
    final result recorded as written stays: Kombo has it.

    One MULTI/EXEC does it all, watching the job hash: a sweep running at the same time
    either finds the order still seen (before) or dispatches it again in full (after); a
    worker that takes the job meanwhile makes this retry and then refuse. Raises
    :class:`ForgetRefused` when the order is unknown or its job is being worked on.
    """
    keys = Keys(namespace)
    job_id = job_id_for(namespace, integration_id, order_id)
    job_hash = job_key(job_id)
    effect_keys = _effect_keys(redis, keys, integration_id, order_id, handlers)
    steps_key = keys.steps(integration_id, order_id)
    outbox_key = keys.outbox(integration_id, order_id)
    timeline_key = keys.timeline(integration_id, order_id)
    ref = order_ref(integration_id, order_id)
    for _ in range(_WATCH_RETRIES):
        with redis.pipeline(transaction=True) as pipe:
            try:
                # The outbox record too: a result submitted meanwhile is removed with the rest
                # or not at all.
                pipe.watch(job_hash, outbox_key)  # type: ignore[no-untyped-call]
                status = pipe.hget(job_hash, "status")
                seen = pipe.hexists(keys.seen(integration_id), order_id)
                steps = sum(1 for f in pipe.hkeys(steps_key) if not as_str(f).startswith("_"))
                effects = sum(pipe.exists(key) for key in effect_keys)
                result = pipe.hget(outbox_key, "state")
                timeline = pipe.exists(timeline_key)
                unconfirmed = pipe.hexists(keys.webhook_unconfirmed, ref)
                known = seen or status is not None or steps or effects or result or timeline
                if not (known or unconfirmed):
                    raise ForgetRefused(
                        f"order {order_id} is not known in integration {integration_id}"
                    )
                if status is not None and as_str(status) == JobStatus.STARTED.value:
                    raise ForgetRefused(
                        f"order {order_id} (integration {integration_id}) is being worked on "
                        f"right now (job {job_id}); try again when it has finished"
                    )
                pipe.multi()
                pipe.hdel(keys.seen(integration_id), order_id)
                delete_job(pipe, queue_name, job_id)
                pipe.delete(
                    steps_key,
                    keys.dispatched(integration_id, order_id),
                    *effect_keys,
                    outbox_key,
                    timeline_key,
                )
                for state in ("pending", "written", "failed"):
                    pipe.zrem(keys.outbox_index(state), ref)
                pipe.zrem(keys.provisioned, ref)
                # Else `dispatcher web` would confirm and dispatch it again later.
                pipe.hdel(keys.webhook_unconfirmed, ref)
                pipe.zrem(keys.webhook_unconfirmed_since, ref)
                pipe.execute()
            except WatchError:
                continue
        return ForgetResult(
            was_seen=bool(seen),
            job_status=None if status is None else as_str(status),
            steps=int(steps),
            effects=effects,
            result=None if result is None else as_str(result),
            unconfirmed=bool(unconfirmed),
        )
    raise ForgetRefused(
        f"order {order_id} (integration {integration_id}): its job kept changing; try again"
    )


def _effect_keys(
    redis: Redis, keys: Keys, integration_id: str, order_id: str, handlers: Iterable[str]
) -> list[str]:
    """The effect sets of the order: of the named handlers, of its recorded steps, and any
    other a SCAN finds (a handler may have left effects without completing its step)."""
    names = set(handlers) | {
        as_str(name) for name in redis.hkeys(keys.steps(integration_id, order_id))
    }
    found = {keys.effects(integration_id, order_id, name) for name in names}
    prefix = keys.effects(integration_id, order_id, "")
    # A glob's "*" also matches ':': the effects of another order whose key starts the same
    # (integration "a:b" order "c" after integration "a" order "b") are not this order's.
    # Handler names hold no ':', so this order's keys have none after the prefix.
    found.update(
        key
        for key in map(as_str, redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        if ":" not in key[len(prefix) :]
    )
    return sorted(found)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
