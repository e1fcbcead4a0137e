"""The fleet loop (``dispatcher poll``): any number of pollers share one schedule in Redis
(schedule.py); each claims due integrations with a lease, sweeps them (poller.py),
reschedules each one interval later (or later still, backing off, while it keeps failing)
and releases it; beside the sweeps, the reconciler's periodic pass when it is due.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from redis.exceptions import RedisError

from dispatcher import tunables
from dispatcher.poller.poller import Poller
from dispatcher.poller.report import IntegrationSweep
from dispatcher.store.wrongtype import is_refusal

__all__ = ["FleetLoop"]

log = logging.getLogger("dispatcher.poller")

# While Redis is unreachable (or refuses the fleet schedule) the fleet loop tries again after
# 1 s, doubling up to 30 s: a failover of a few seconds costs about as long, a long outage a
# try every half minute. (A worker tries every 2 s at most, worker.RECONNECT_WAIT_MAX: its
# queued jobs wait on it; a sweep missed here is made up by the next one.)
_REDIS_RETRY_FIRST = 1.0
_REDIS_RETRY_CAP = 30.0
# Something is due but this poller could claim none of it: the next look, in seconds.
_CLAIM_RETRY = 0.25


class FleetLoop:
    """One poller's part in the fleet: :meth:`run` claims and sweeps due integrations until
    the poller's ``stop`` is set."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self._reconcile_said: str | None = None
        self._rng = random.Random()
        # Integrations whose sweep ended while Redis was unreachable: still leased (a failover
        # keeps the lease) and due only when the lease expires. Their next due time, written
        # and their lease released as soon as Redis answers, instead of a lease TTL later.
        self._unreleased: dict[str, float] = {}

    def run(self, *, sync_every: float = 5.0) -> None:
        """Claim and sweep due integrations until the poller's ``stop`` is set; then finish
        the pages in hand and return. Survives Redis outages (one log line, backoff, resume)."""
        poller = self.poller
        running: dict[str, Future[IntegrationSweep]] = {}
        last_sync = -sync_every
        outage_since: float | None = None
        # The shared key Redis refuses (a schedule of the wrong type...): said once at ERROR,
        # again only if it changes, and once more when it is repaired.
        refused: str | None = None
        backoff = _REDIS_RETRY_FIRST
        reconciling: Future[None] | None = None
        next_reconcile = 0.0
        with (
            ThreadPoolExecutor(max_workers=poller.concurrency, thread_name_prefix="sweep") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile") as reconciler,
        ):
            while not poller.stop.is_set():
                # The reconciler's pass runs in its own thread (a pass over a million orders
                # takes a while; sweeps go on meanwhile); whether it is due is asked of Redis
                # every few seconds at most.
                if (
                    poller.reconcile is not None
                    and (reconciling is None or reconciling.done())
                    and time.monotonic() >= next_reconcile
                ):
                    next_reconcile = time.monotonic() + min(5.0, poller.reconcile.interval)
                    reconciling = reconciler.submit(self._reconcile_if_due)
                try:
                    if time.monotonic() - last_sync >= sync_every:
                        poller.schedule.sync(poller.integration_ids, poller.policy.interval)
                        last_sync = time.monotonic()
                    self._release_unreleased()
                    claimed = self._claim_due(pool, running)
                    wait_for = poller.schedule.next_due_in()
                except RedisError as exc:
                    if is_refusal(exc):
                        problem = poller.diagnose(None, exc)
                        if problem != refused:
                            refused = problem
                            log.error(
                                "cannot use the fleet schedule: %s; retrying with backoff",
                                problem,
                            )
                    elif outage_since is None:
                        outage_since = time.monotonic()
                        log.error("Redis unavailable (%s); retrying with backoff", exc)
                    poller.stop.wait(backoff)
                    backoff = min(_REDIS_RETRY_CAP, backoff * 2)
                    continue
                if outage_since is not None:
                    log.warning(
                        "Redis available again after %.0fs", time.monotonic() - outage_since
                    )
                    outage_since, backoff = None, _REDIS_RETRY_FIRST
                if refused is not None:
                    log.warning("fleet schedule usable again (was: %s)", refused)
                    refused, backoff = None, _REDIS_RETRY_FIRST
                timeout = _loop_wait(wait_for, claimed)
                if running:
                    wait(list(running.values()), timeout=timeout, return_when=FIRST_COMPLETED)
                else:
                    poller.stop.wait(timeout)
                for integration_id in [i for i, f in running.items() if f.done()]:
                    running.pop(integration_id).result()
            wait(list(running.values()))

    def _reconcile_if_due(self) -> None:
        assert self.poller.reconcile is not None
        try:
            self.poller.reconcile.run_if_due(self.poller.stop)
        except RedisError as exc:
            # Asked every few seconds: during an outage, one line (the loop says the rest).
            said = f"{type(exc).__name__}: {exc}"
            if said != self._reconcile_said:
                log.warning("reconcile pass not run: %s", said)
            self._reconcile_said = said
            return
        except Exception:
            log.exception("reconcile pass crashed")
        self._reconcile_said = None

    def _claim_due(
        self, pool: ThreadPoolExecutor, running: dict[str, Future[IntegrationSweep]]
    ) -> int:
        """Claim due integrations into free slots; how many were claimed."""
        free = self.poller.concurrency - len(running)
        if free <= 0:
            return 0
        claimed_count = 0
        for integration_id in self.poller.schedule.due(limit=free + len(running)):
            if integration_id in running:
                continue
            try:
                claimed = self.poller.schedule.claim(integration_id)
            except RedisError as exc:
                if not is_refusal(exc):
                    raise  # an outage: the loop's to report
                self._unclaimable(integration_id, exc)
                continue
            if claimed:
                running[integration_id] = pool.submit(self._sweep_claimed, integration_id)
                claimed_count += 1
                if len(running) >= self.poller.concurrency:
                    break
        return claimed_count

    def _unclaimable(self, integration_id: str, exc: RedisError) -> None:
        """The integration's lease key is broken (another type, so it never expires): a
        failed sweep of that integration, recorded, and due again after the backoff, instead
        of an integration silently never claimed again."""
        started = self.poller.clock()
        result = self.poller.record_unclaimable(integration_id, exc, started)
        try:
            self.poller.schedule.reschedule(integration_id, self._next_due(result, started))
        except RedisError as again:
            log.debug("could not reschedule %s: %s", integration_id, again)

    def _sweep_claimed(self, integration_id: str) -> IntegrationSweep:
        started = self.poller.clock()
        result = IntegrationSweep(integration_id, error="not swept", error_code="INTERNAL")
        try:
            result = self.poller.sweep_integration(integration_id, leased=True)
        except Exception:
            log.exception("sweep crashed", extra={"integration_id": integration_id})
        finally:
            next_due = self._next_due(result, started)
            try:
                self.poller.schedule.reschedule(integration_id, next_due)
                self.poller.schedule.release(integration_id)
            except RedisError as exc:
                log.debug("could not reschedule %s: %s", integration_id, exc)
                self._unreleased[integration_id] = next_due
        return result

    def _release_unreleased(self) -> None:
        """Reschedule and release what sweeps ended during an outage could not (raises
        RedisError while Redis is still away: the loop's to report)."""
        for integration_id, next_due in list(self._unreleased.items()):
            self.poller.schedule.reschedule(integration_id, next_due)
            self.poller.schedule.release(integration_id)
            del self._unreleased[integration_id]

    def _next_due(self, result: IntegrationSweep, started: float) -> float:
        interval = self.poller.policy.interval
        if result.interrupted:
            return started  # not swept to the end: due again at once (for another poller)
        if result.error is not None:
            exponent = min(max(0, result.consecutive_failures - 1), tunables.BACKOFF_MAX_EXPONENT)
            delay: float = min(self.poller.policy.backoff_cap, interval * 2.0**exponent)
            return self.poller.clock() + delay
        # Never earlier than one interval, so the fleet sweeps each integration once per
        # interval; a little later at random so that pollers drift apart.
        return started + interval * (1.0 + self._rng.uniform(0.0, 0.1))


def _loop_wait(next_due_in: float | None, claimed: int) -> float:
    """Seconds the fleet loop waits (less if a sweep of its own ends first)."""
    timeout = min(1.0, next_due_in if next_due_in is not None else 1.0)
    if timeout <= 0 and not claimed:
        # Due, yet nothing claimed: every slot busy, or a lease a moment from expiring (two
        # hosts' clocks differ a little). Look again shortly, not at once: each round is a few
        # Redis commands, and a loop that spun cost thousands a second.
        return _CLAIM_RETRY
    return timeout
