"""Failed jobs for operators: ``dispatcher failed`` (:func:`failed_jobs`, newest first, with
each one's order, handler, reason and attempts) and ``dispatcher retry`` (:func:`retry_failed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result

from dispatcher._text import as_float, as_str
from dispatcher.logs import escape_controls
from dispatcher.store.failures import Failure, clean_reason, parse_failure
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    failed_key,
    results_key,
    unreadable_job,
)

__all__ = ["FailedJob", "RetryResult", "attempts_of", "failed_jobs", "failures_of", "retry_failed"]


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
    failures = failures_of(redis, jobs)
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
                attempts=attempts_of(job),
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


def failures_of(redis: Redis, jobs: Sequence[Job]) -> dict[str, tuple[Failure, float | None]]:
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


def attempts_of(job: Job) -> int:
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
