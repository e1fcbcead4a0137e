"""The poller: sweeps integrations' OPEN orders and dispatches the new ones.

Two modes. ``sweep()`` sweeps every integration once, fully (``dispatcher poll --once``).
``run_forever()`` is the fleet mode: any number of pollers share one schedule in Redis
(schedule.py); each integration is claimed with a lease, swept, rescheduled one interval
later (or later still, backing off, while it keeps failing) and released.

A sweep is *full* (every OPEN order) on the first sweep of an integration by a poller process,
then every ``full_sweep_interval``; in between it is *incremental*: only orders created since
the start of the last successful sweep minus an overlap. Pages are dispatched as they arrive,
so memory stays flat however many orders an integration has.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from redis import Redis
from redis.exceptions import RedisError

from dispatcher import tracing, tunables
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError, KomboStopped
from dispatcher.kombo.models import OrderValidationError
from dispatcher.kombo.pages import InvalidPageError, OrdersPage
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.poller.schedule import Schedule
from dispatcher.poller.telemetry import RequestStats
from dispatcher.store import throughput
from dispatcher.store.key_types import integration_keys, shared_keys
from dispatcher.store.ledger import Ledger
from dispatcher.store.reconcile_state import PeriodicReconcile
from dispatcher.store.sweeps import ERROR_COUNT, INVALID_ORDER_FIELDS, MAX_MESSAGE, SweepRecord
from dispatcher.store.wrongtype import (
    WRONGTYPE_CODE,
    describe,
    find_wrong_types,
    is_refusal,
    is_wrong_type,
)
from dispatcher.untrusted import untrusted_text

__all__ = ["IntegrationSweep", "Poller", "SweepPolicy", "SweepReport"]

log = logging.getLogger("dispatcher.poller")

# While Redis is unreachable (or refuses the fleet schedule) the fleet loop tries again after
# 1 s, doubling up to 30 s: a failover of a few seconds costs about as long, a long outage a
# try every half minute. (A worker tries every 2 s at most, worker.RECONNECT_WAIT_MAX: its
# queued jobs wait on it; a sweep missed here is made up by the next one.)
_REDIS_RETRY_FIRST = 1.0
_REDIS_RETRY_CAP = 30.0
# Something is due but this poller could claim none of it: the next look, in seconds.
_CLAIM_RETRY = 0.25


@dataclass(frozen=True, slots=True)
class SweepPolicy:
    """How often and how much to sweep; see the DISPATCHER_* settings of the same names."""

    interval: float = tunables.POLL_INTERVAL
    full_sweep_interval: float = tunables.FULL_SWEEP_INTERVAL
    incremental_overlap: float = tunables.INCREMENTAL_OVERLAP
    backoff_cap: float = tunables.SWEEP_BACKOFF_CAP
    seen_retention: float = tunables.SEEN_RETENTION
    prune_after_sweeps: int = tunables.PRUNE_AFTER_SWEEPS
    # Pages one sweep of one integration may read: a listing whose cursors never end is
    # an error, not a poller stuck for good (250 orders a page: 5,000,000 orders).
    max_pages: int = 20_000


@dataclass(slots=True)
class IntegrationSweep:
    """The outcome of sweeping one integration."""

    integration_id: str
    full: bool = True
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    pruned: int = 0
    error: str | None = None
    error_code: str | None = None
    error_order_id: str | None = None
    interrupted: bool = False
    consecutive_failures: int = 0
    # New orders left out because they can never validate ("order X: field Y: problem"):
    # not a failure of the sweep, which dispatched the orders beside them.
    invalid_orders: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SweepReport:
    """The outcome of one sweep of every integration (``poll --once --json`` prints it)."""

    integrations: int = 0
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    # Integrations not swept to the end because a stop was requested (SIGTERM, SIGINT).
    interrupted: int = 0
    invalid_orders: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    results: list[IntegrationSweep] = field(default_factory=list)

    def add(self, one: IntegrationSweep) -> None:
        self.results.append(one)
        self.integrations += 1
        self.pages += one.pages
        self.orders_seen += one.orders_seen
        self.orders_new += one.orders_new
        self.interrupted += one.interrupted
        self.invalid_orders += len(one.invalid_orders)
        if one.error is not None:
            self.errors[one.integration_id] = one.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "integrations": self.integrations,
            "pages": self.pages,
            "orders_seen": self.orders_seen,
            "orders_new": self.orders_new,
            "interrupted": self.interrupted,
            "invalid_orders": self.invalid_orders,
            "errors": dict(self.errors),
        }


class Poller:
    """Sweeps integrations and hands new orders to the ledger."""

    def __init__(
        self,
        client: KomboClient,
        ledger: Ledger,
        integrations: IntegrationRegistry | list[str],
        *,
        endpoint: Literal["orders", "open"] = "orders",
        page_size: int = tunables.KOMBO_PAGE_SIZE_MAX,
        concurrency: int = tunables.SWEEP_CONCURRENCY,
        policy: SweepPolicy | None = None,
        schedule: Schedule | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        request_stats: RequestStats | None = None,
        reconcile: PeriodicReconcile | None = None,
    ) -> None:
        """``request_stats``: the Kombo client's observer; what it gathered is saved in Redis
        with every integration's sweep record (for ``dispatcher status`` and ``/metrics``).
        ``reconcile``: the reconciler's periodic pass, run beside the sweeps by
        :meth:`run_forever` whenever it is due and this poller takes its lease."""
        self.client = client
        self.ledger = ledger
        self.registry = (
            integrations
            if isinstance(integrations, IntegrationRegistry)
            else IntegrationRegistry(ledger.redis, ledger.keys, integrations)
        )
        self.endpoint = endpoint
        self.page_size = page_size
        self.concurrency = concurrency
        self.policy = policy or SweepPolicy()
        self.schedule = schedule or Schedule(ledger.redis, ledger.keys)
        self.stop = stop or threading.Event()
        self._clock = clock
        self.request_stats = request_stats
        self.reconcile = reconcile
        self._reconcile_said: str | None = None
        self._rng = random.Random()
        # Distinct sweep errors (without their integration) -> when last logged at ERROR: a
        # refused API key fails every integration alike, and one line says it.
        self._errors_said: dict[str, float] = {}
        self._errors_lock = threading.Lock()
        # Integrations this process has fully swept: the first sweep after a start is full.
        self._fully_swept: set[str] = set()
        # Integrations whose sweep ended while Redis was unreachable: still leased (a failover
        # keeps the lease) and due only when the lease expires. Their next due time, written
        # and their lease released as soon as Redis answers, instead of a lease TTL later.
        self._unreleased: dict[str, float] = {}

    @property
    def redis(self) -> Redis:
        return self.ledger.redis

    @property
    def integration_ids(self) -> list[str]:
        return self.registry.active()

    # -- one sweep of everything --------------------------------------------------------------

    def sweep(self, *, share: tuple[int, int] | None = None) -> SweepReport:
        """Sweep every active integration once, fully and concurrently; never raises for one
        integration's failure.

        ``share=(i, n)``: only the i-th of n shares of the integrations (sorted), so that n
        processes sweep them all between them (``dispatcher poll --once --processes n``).
        """
        report = SweepReport()
        ids = self.integration_ids
        if share is not None:
            index, count = share
            ids = sorted(ids)[index::count]
        if not ids:
            return report
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(ids)), thread_name_prefix="sweep"
        ) as pool:
            for one in pool.map(lambda i: self.sweep_integration(i, full=True), ids):
                report.add(one)
        return report

    # -- one integration ----------------------------------------------------------------------

    def sweep_integration(
        self, integration_id: str, *, full: bool | None = None, leased: bool = False
    ) -> IntegrationSweep:
        """Page through one integration's OPEN orders, dispatching each page as it comes.

        ``full=None`` decides by the policy; ``leased`` renews the lease after every page and
        stops if it was lost. With tracing on, one span (each new order's trace links to it).
        """
        with tracing.span("sweep", attributes={"dispatcher.integration_id": integration_id}) as s:
            result = self._sweep_integration(integration_id, full, leased)
            tracing.set_attributes(
                s,
                **{
                    "dispatcher.full": result.full,
                    "dispatcher.pages": result.pages,
                    "dispatcher.orders_seen": result.orders_seen,
                    "dispatcher.orders_new": result.orders_new,
                    # Kombo's code (its text): bounded like every value it sends.
                    "dispatcher.error_code": (result.error_code or "")[:100] or None,
                },
            )
        return result

    def _sweep_integration(
        self, integration_id: str, full: bool | None, leased: bool
    ) -> IntegrationSweep:
        extra = {"integration_id": integration_id}
        started = self._clock()
        try:
            state = self._state(integration_id)
        except RedisError as exc:
            if is_refusal(exc):
                return self._refused(IntegrationSweep(integration_id), exc, started)
            return self._redis_failure(IntegrationSweep(integration_id), exc)
        if full is None:
            full = self._full_due(integration_id, state, started)
        result = IntegrationSweep(integration_id, full=full)
        result.consecutive_failures = state.consecutive_failures or 0
        generation = (state.generation or 0) + 1 if full else None
        created_after = None
        unreachable = False
        if not full and state.watermark is not None:  # (not full: _full_due saw a watermark)
            created_after = state.watermark - self.policy.incremental_overlap
        try:
            self._sweep_pages(result, created_after, generation, leased)
        except KomboStopped:
            # Stopping: the client sent nothing more. The pages in hand stay dispatched; the
            # rest is the next sweep's, as after a stop between pages.
            result.interrupted = True
            log.info("stopping after page %d", result.pages, extra=extra)
        except InvalidPageError as exc:
            result.error = str(exc)
            result.error_code = "INVALID_PAGE"
            result.error_order_id = exc.order_id
        except KomboError as exc:
            result.error = str(exc)
            unreachable = exc.unreachable
            result.error_code = exc.code or (f"HTTP {exc.status_code}" if exc.status_code else None)
        except RedisError as exc:
            # A refusal (a key of the wrong type, WrongKeyTypeError from a guarded script
            # included) is not an outage: one key of this integration needs repair.
            if is_refusal(exc):
                return self._refused(result, exc, started)
            return self._redis_failure(result, exc)
        if result.error is not None:
            # Kombo's words (or anything at KOMBO_BASE_URL): they may echo the API key.
            result.error = untrusted_text(result.error, _MAX_STORED_MESSAGE)
            result.consecutive_failures += 1
            if result.error_order_id is not None:
                extra["order_id"] = result.error_order_id
            # Kombo unreachable: the client said so once for the outage (not per sweep).
            news = not unreachable and self._news(integration_id, result.error)
            level = logging.ERROR if news else logging.DEBUG
            log.log(level, "sweep failed: %s", result.error, extra=extra)
        else:
            result.consecutive_failures = 0
            log.info(
                "%s sweep: %d orders in %d pages, %d new%s",
                "full" if full else "incremental",
                result.orders_seen,
                result.pages,
                result.orders_new,
                f", {result.pruned} pruned" if result.pruned else "",
                extra=extra,
            )
        self._record(result, started, generation)
        return result

    def _news(self, integration_id: str, error: str) -> bool:
        """Whether ``error`` (one integration's) was not already logged for another within a
        poll interval: the same error of many integrations is one ERROR line, the rest DEBUG
        (``status`` lists every integration's)."""
        problem = error.removeprefix(f"integration {integration_id}: ")
        now = time.monotonic()
        with self._errors_lock:
            said = self._errors_said.get(problem)
            if said is not None and now - said < self.policy.interval:
                return False
            if len(self._errors_said) > 1000:  # many distinct errors: forget the old ones
                self._errors_said.clear()
            self._errors_said[problem] = now
            return True

    def _sweep_pages(
        self,
        result: IntegrationSweep,
        created_after: float | None,
        generation: int | None,
        leased: bool,
    ) -> None:
        """Dispatch page after page; prune after a complete full sweep. Raises what the Kombo
        client or Redis raise."""
        integration_id = result.integration_id
        for page in self._pages(integration_id, created_after):
            try:
                dispatched = self.ledger.dispatch(
                    integration_id,
                    page.results,
                    generation=generation,
                    keep_generations=self.policy.prune_after_sweeps,
                )
            except OrderValidationError as exc:
                raise InvalidPageError(integration_id, exc) from None
            result.pages += 1
            result.orders_seen += len(page.results) + len(page.invalid)
            result.orders_new += len(dispatched.enqueued)
            for problem in (*page.invalid, *dispatched.invalid):
                # Once per sweep that meets the order: it stays unseen, so that it is
                # dispatched as soon as its ATS corrects it.
                log.error(
                    "order not dispatched: %s",
                    problem,
                    extra={"integration_id": integration_id, "order_id": problem.order_id},
                )
                result.invalid_orders.append(untrusted_text(str(problem), _MAX_STORED_MESSAGE))
            if leased and page.next and not self.schedule.renew(integration_id):
                result.error = f"integration {integration_id}: lease lost mid-sweep"
                result.error_code = "LEASE_LOST"
                return
            if self.stop.is_set() and page.next:
                result.interrupted = True
                log.info(
                    "stopping after page %d", result.pages, extra={"integration_id": integration_id}
                )
                return
        if generation is not None:
            result.pruned = self.ledger.prune(
                integration_id,
                generation=generation,
                keep_generations=self.policy.prune_after_sweeps,
                retention=self.policy.seen_retention,
            )

    def _redis_failure(self, result: IntegrationSweep, exc: RedisError) -> IntegrationSweep:
        # The main loop reports an outage once; per-integration lines would repeat it.
        result.error = untrusted_text(
            f"integration {result.integration_id}: redis: {type(exc).__name__}: {exc}",
            _MAX_STORED_MESSAGE,
        )
        result.error_code = "REDIS"
        log.debug("sweep interrupted: %s", result.error)
        return result

    def _refused(
        self, result: IntegrationSweep, exc: RedisError, started: float
    ) -> IntegrationSweep:
        """Redis refused a command of this integration's sweep (a key of the wrong type): an
        error of this integration, reported and recorded like Kombo's, retried with backoff;
        the other integrations are swept as usual."""
        integration_id = result.integration_id
        result.error = untrusted_text(
            f"integration {integration_id}: {self._diagnose(integration_id, exc)}",
            _MAX_STORED_MESSAGE,
        )
        result.error_code = WRONGTYPE_CODE if is_wrong_type(exc) else "REDIS.ERROR"
        result.consecutive_failures += 1
        log.error("sweep failed: %s", result.error, extra={"integration_id": integration_id})
        self._record(result, started, None)
        return result

    def _diagnose(self, integration_id: str | None, exc: RedisError) -> str:
        """One line naming the key Redis refused (it names none itself)."""
        keys = self.ledger.keys
        expected = shared_keys(keys, self.ledger.queue.key)
        if integration_id is not None:
            expected = {**integration_keys(keys, integration_id), **expected}
        try:
            wrong = find_wrong_types(self.redis, expected)
        except RedisError:
            wrong = []  # Redis went away meanwhile: Redis's own words must do
        return describe(exc, wrong)

    def _state(self, integration_id: str) -> SweepRecord:
        return SweepRecord.from_hash(self.redis.hgetall(self.ledger.keys.sweep(integration_id)))

    def _full_due(self, integration_id: str, state: SweepRecord, now: float) -> bool:
        if self.endpoint == "open":
            return True  # the deprecated endpoint has no created_after filter
        if state.watermark is None or integration_id not in self._fully_swept:
            return True
        return now - (state.full_sweep_at or 0) >= self.policy.full_sweep_interval

    def _pages(self, integration_id: str, created_after: float | None) -> Iterator[OrdersPage]:
        max_pages = self.policy.max_pages
        if self.endpoint == "open":
            return self.client.iter_open_order_pages(
                integration_id, page_size=self.page_size, max_pages=max_pages
            )
        return self.client.iter_order_pages(
            integration_id,
            statuses=("OPEN",),
            page_size=self.page_size,
            max_pages=max_pages,
            created_after=(
                datetime.fromtimestamp(created_after, UTC) if created_after is not None else None
            ),
        )

    def _record(self, result: IntegrationSweep, started: float, generation: int | None) -> None:
        """Keep the integration's sweep state in Redis: for the next sweep and for status."""
        now = self._clock()
        record, forget_invalid = _record_invalid(
            result, _sweep_record(result, started, now, generation), now
        )
        keys = self.ledger.keys
        key = keys.sweep(result.integration_id)
        counts, seconds = self.request_stats.drain() if self.request_stats else ({}, {})
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=record.to_fields())
                if forget_invalid:
                    pipe.hdel(key, *INVALID_ORDER_FIELDS)
                if result.error is not None:
                    pipe.hincrby(key, ERROR_COUNT, 1)
                pipe.sadd(keys.swept_integrations, result.integration_id)
                # Kombo request telemetry rides along: no round trip of its own.
                for name, count in counts.items():
                    pipe.hincrby(keys.kombo_requests, name, count)
                for name, total in seconds.items():
                    pipe.hincrbyfloat(keys.kombo_requests, name, total)
                recorded = len(pipe)
                if result.orders_seen:  # the console's chart (never fatal: not checked below)
                    throughput.count(pipe, keys, "found", result.orders_seen, now)
                # Refusals come back as replies: the commands on healthy keys still count.
                replies = pipe.execute(raise_on_error=False)[:recorded]
        except RedisError as exc:
            if self.request_stats is not None:
                self.request_stats.restore(counts, seconds)
            log.debug("could not record the sweep of %s: %s", result.integration_id, exc)
            return
        refused = next((r for r in replies if isinstance(r, RedisError)), None)
        if refused is not None:
            problem = self._diagnose(result.integration_id, refused)
            if problem not in (result.error or ""):  # else the sweep's error line said it
                log.error(
                    "could not record the sweep: %s",
                    problem,
                    extra={"integration_id": result.integration_id},
                )
            return
        if result.error is None and not result.interrupted and result.full:
            self._fully_swept.add(result.integration_id)

    # -- the fleet loop -----------------------------------------------------------------------

    def run_forever(self, *, sync_every: float = 5.0) -> None:
        """Claim and sweep due integrations until ``stop`` is set; then finish the pages in
        hand and return. Survives Redis outages (one log line, backoff, resume)."""
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
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sweep") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile") as reconciler,
        ):
            while not self.stop.is_set():
                # The reconciler's pass runs in its own thread (a pass over a million orders
                # takes a while; sweeps go on meanwhile); whether it is due is asked of Redis
                # every few seconds at most.
                if (
                    self.reconcile is not None
                    and (reconciling is None or reconciling.done())
                    and time.monotonic() >= next_reconcile
                ):
                    next_reconcile = time.monotonic() + min(5.0, self.reconcile.interval)
                    reconciling = reconciler.submit(self._reconcile_if_due)
                try:
                    if time.monotonic() - last_sync >= sync_every:
                        self.schedule.sync(self.integration_ids, self.policy.interval)
                        last_sync = time.monotonic()
                    self._release_unreleased()
                    claimed = self._claim_due(pool, running)
                    wait_for = self.schedule.next_due_in()
                except RedisError as exc:
                    if is_refusal(exc):
                        problem = self._diagnose(None, exc)
                        if problem != refused:
                            refused = problem
                            log.error(
                                "cannot use the fleet schedule: %s; retrying with backoff",
                                problem,
                            )
                    elif outage_since is None:
                        outage_since = time.monotonic()
                        log.error("Redis unavailable (%s); retrying with backoff", exc)
                    self.stop.wait(backoff)
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
                    self.stop.wait(timeout)
                for integration_id in [i for i, f in running.items() if f.done()]:
                    running.pop(integration_id).result()
            wait(list(running.values()))

    def _reconcile_if_due(self) -> None:
        assert self.reconcile is not None
        try:
            self.reconcile.run_if_due(self.stop)
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
        free = self.concurrency - len(running)
        if free <= 0:
            return 0
        claimed_count = 0
        for integration_id in self.schedule.due(limit=free + len(running)):
            if integration_id in running:
                continue
            try:
                claimed = self.schedule.claim(integration_id)
            except RedisError as exc:
                if not is_refusal(exc):
                    raise  # an outage: the loop's to report
                self._unclaimable(integration_id, exc)
                continue
            if claimed:
                running[integration_id] = pool.submit(self._sweep_claimed, integration_id)
                claimed_count += 1
                if len(running) >= self.concurrency:
                    break
        return claimed_count

    def _unclaimable(self, integration_id: str, exc: RedisError) -> None:
        """The integration's lease key is broken (another type, so it never expires): a
        failed sweep of that integration, recorded, and due again after the backoff, instead
        of an integration silently never claimed again."""
        started = self._clock()
        result = IntegrationSweep(integration_id)
        # The sweep hash may be the broken key, or missing: then count from zero.
        with contextlib.suppress(RedisError):
            result.consecutive_failures = self._state(integration_id).consecutive_failures or 0
        self._refused(result, exc, started)
        try:
            self.schedule.reschedule(integration_id, self._next_due(result, started))
        except RedisError as again:
            log.debug("could not reschedule %s: %s", integration_id, again)

    def _sweep_claimed(self, integration_id: str) -> IntegrationSweep:
        started = self._clock()
        result = IntegrationSweep(integration_id, error="not swept", error_code="INTERNAL")
        try:
            result = self.sweep_integration(integration_id, leased=True)
        except Exception:
            log.exception("sweep crashed", extra={"integration_id": integration_id})
        finally:
            next_due = self._next_due(result, started)
            try:
                self.schedule.reschedule(integration_id, next_due)
                self.schedule.release(integration_id)
            except RedisError as exc:
                log.debug("could not reschedule %s: %s", integration_id, exc)
                self._unreleased[integration_id] = next_due
        return result

    def _release_unreleased(self) -> None:
        """Reschedule and release what sweeps ended during an outage could not (raises
        RedisError while Redis is still away: the loop's to report)."""
        for integration_id, next_due in list(self._unreleased.items()):
            self.schedule.reschedule(integration_id, next_due)
            self.schedule.release(integration_id)
            del self._unreleased[integration_id]

    def _next_due(self, result: IntegrationSweep, started: float) -> float:
        interval = self.policy.interval
        if result.interrupted:
            return started  # not swept to the end: due again at once (for another poller)
        if result.error is not None:
            exponent = min(max(0, result.consecutive_failures - 1), tunables.BACKOFF_MAX_EXPONENT)
            delay: float = min(self.policy.backoff_cap, interval * 2.0**exponent)
            return self._clock() + delay
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


def _record_invalid(
    result: IntegrationSweep, record: SweepRecord, now: float
) -> tuple[SweepRecord, bool]:
    """The sweep's ``record`` with its invalid orders; and True when the last ones recorded
    are to be forgotten.

    They stay recorded until a complete full sweep (which sees every OPEN order) finds none:
    an incremental sweep does not see older orders again.
    """
    if result.invalid_orders:
        return replace(
            record,
            invalid_orders=len(result.invalid_orders),
            # Cleaned and bounded when recorded: the message quotes an order id, which Kombo chose.
            last_invalid_order=result.invalid_orders[0],
            last_invalid_at=now,
        ), False
    return record, result.full and result.error is None and not result.interrupted


_MAX_STORED_MESSAGE = MAX_MESSAGE


def _sweep_record(
    result: IntegrationSweep, started: float, now: float, generation: int | None
) -> SweepRecord:
    """The sweep hash fields one sweep sets (the invalid-order fields aside)."""
    record = SweepRecord(
        last_attempt_at=now,
        duration=round(now - started, 3),
        consecutive_failures=result.consecutive_failures,
    )
    if result.error is None and not result.interrupted:
        record = replace(
            record,
            last_sweep_at=now,
            watermark=started,
            orders_seen=result.orders_seen,
            orders_new=result.orders_new,
            pages=result.pages,
            last_sweep_kind="full" if result.full else "incremental",
        )
        if generation is not None:
            record = replace(record, full_sweep_at=started, generation=generation)
    elif result.error is not None:
        record = replace(
            record,
            last_error=result.error,
            last_error_code=result.error_code or "",
            last_error_at=now,
        )
    return record
