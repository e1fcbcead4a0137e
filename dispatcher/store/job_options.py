"""How dispatched jobs are created (:class:`JobOptions`: RQ's timeouts, retention and retries,
the replicas that must hold a dispatch, the fair feeder's options), and how long a dispatched
order's job is sure to be found (:func:`reconcile_window`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rq import Retry

from dispatcher import tunables
from dispatcher.settings import Settings
from dispatcher.store.fair import FairOptions
from dispatcher.store.replication import ReplicaAck

__all__ = ["JobOptions", "reconcile_window"]


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How dispatched jobs are created: RQ's timeouts and retention, as data."""

    timeout: int = 600
    result_ttl: int = tunables.RESULT_TTL
    failure_ttl: int = tunables.FAILURE_TTL
    retry_intervals: tuple[int, ...] = (10, 20, 40, 80, 160)
    # Replicas that must hold a dispatch before it counts (DISPATCHER_REDIS_MIN_REPLICAS_ACK).
    replica_ack: ReplicaAck | None = None
    # The configured handler chain, recorded in each job's meta (what the dispatcher meant to
    # run; the worker runs its own DISPATCHER_HANDLERS).
    chain: tuple[str, ...] = ()
    # The fair feeder's window and the per-integration caps (dispatcher.store.fair).
    fair: FairOptions = field(default_factory=FairOptions)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobOptions:
        return cls(
            timeout=settings.job_timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            retry_intervals=tuple(settings.retry_intervals()),
            replica_ack=ReplicaAck.from_settings(settings),
            chain=tuple(settings.handlers),
            fair=FairOptions.from_settings(settings),
        )

    def retry(self) -> Retry | None:
        """RQ's retry policy for a job: one retry per interval, or none."""
        if not self.retry_intervals:
            return None
        return Retry(max=len(self.retry_intervals), interval=list(self.retry_intervals))


def reconcile_window(options: JobOptions) -> int:
    """Seconds after its dispatch that an order's job is sure to be found if nothing was lost:
    a finished job is kept ``result_ttl`` after it ended, a failed one ``failure_ttl``. The
    reconciler checks the orders dispatched within it; 0 when either TTL is 0."""
    return max(0, min(options.result_ttl, options.failure_ttl))
