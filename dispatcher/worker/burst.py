"""What a burst did (``dispatcher worker --burst``): the jobs run, by outcome, and what they
left on the queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from dispatcher.store.rq_internals import failed_key, queue_key, scheduled_key

__all__ = ["BurstSummary"]


@dataclass(slots=True)
class BurstSummary:
    """What a burst did (jobs done, failed for good, put back for a retry) and what it left
    on the queue."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    queued: int = 0
    scheduled: int = 0
    next_retry_in: float | None = None
    failed_on_queue: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def count(self, job: Job, *, refresh: bool = True) -> None:
        """Count a job the worker just ran, by the status it ended in (as Redis holds it, or
        without ``refresh`` as the worker's bookkeeping of the job just set it)."""
        try:
            status = job.get_status(refresh=refresh)
        except (RedisError, ValueError):
            return
        if status == JobStatus.FINISHED:
            self.done += 1
        elif status == JobStatus.FAILED:
            self.failed += 1
        elif status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
            self.retried += 1

    def add(self, other: BurstSummary) -> None:
        self.done += other.done
        self.failed += other.failed
        self.retried += other.retried

    def look(self, redis: Redis, queue: str, now: float) -> None:
        """Read what is left on ``queue``."""
        with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue_key(queue))
            pipe.zcard(scheduled_key(queue))
            pipe.zrange(scheduled_key(queue), 0, 0, withscores=True)
            pipe.zcount(failed_key(queue), now, "+inf")
            self.queued, self.scheduled, first, self.failed_on_queue = pipe.execute()
        self.next_retry_in = max(0.0, float(first[0][1]) - now) if first else None

    def did(self) -> str:
        """What the jobs run came to: ``3 done, 1 failed, 0 put back for a retry``."""
        return f"{self.done} done, {self.failed} failed, {self.retried} put back for a retry"

    def line(self, queue: str, *, counted: bool = True) -> str:
        """The summary; without ``counted`` (a pool: its children counted their own jobs)
        only what is left."""
        did = f"{self.did()}; " if counted else ""
        text = (
            f"burst finished on {queue}: {did}left: {self.queued} queued, "
            f"{self.scheduled} scheduled for a retry"
        )
        if self.scheduled and self.next_retry_in is not None:
            text += (
                f" (next in {self.next_retry_in:.0f}s: `dispatcher worker --burst "
                "--wait-retries` waits for them)"
            )
        text += f", {self.failed_on_queue} failed"
        if self.failed_on_queue:
            text += " (`dispatcher failed`)"
        return text
