"""The poller: sweeps integrations' OPEN orders and dispatches the new ones.

``sweep()`` sweeps every integration once, fully (``dispatcher poll --once``);
``sweep_integration()`` sweeps one, as the fleet loop (fleet_loop.py, ``dispatcher poll``)
does with each integration it claims.

A sweep is *full* (every OPEN order) on the first sweep of an integration by a poller process,
then every ``full_sweep_interval``; in between it is *incremental*: only orders created since
the start of the last successful sweep minus an overlap. Pages are dispatched as they arrive,
so memory stays flat however many orders an integration has.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError

from dispatcher import tracing, tunables
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError, KomboStopped
from dispatcher.kombo.models import OrderValidationError
from dispatcher.kombo.pages import InvalidPageError, OrdersPage
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.poller.report import (
    IntegrationSweep,
    SweepReport,
    sweep_record,
    with_invalid_orders,
)
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

__all__ = ["Poller", "SweepPolicy"]

log = logging.getLogger("dispatcher.poller")

_MAX_STORED_MESSAGE = MAX_MESSAGE


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
        ``reconcile``: the reconciler's periodic pass, run beside the sweeps by the fleet loop
        (fleet_loop.py) whenever it is due and this poller takes its lease."""
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
        self.clock = clock
        self.request_stats = request_stats
        self.reconcile = reconcile
        # Distinct sweep errors (without their integration) -> when last logged at ERROR: a
        # refused API key fails every integration alike, and one line says it.
        self._errors_said: dict[str, float] = {}
        self._errors_lock = threading.Lock()
        # Integrations this process has fully swept: the first sweep after a start is full.
        self._fully_swept: set[str] = set()

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
        started = self.clock()
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
            f"integration {integration_id}: {self.diagnose(integration_id, exc)}",
            _MAX_STORED_MESSAGE,
        )
        result.error_code = WRONGTYPE_CODE if is_wrong_type(exc) else "REDIS.ERROR"
        result.consecutive_failures += 1
        log.error("sweep failed: %s", result.error, extra={"integration_id": integration_id})
        self._record(result, started, None)
        return result

    def record_unclaimable(
        self, integration_id: str, exc: RedisError, started: float
    ) -> IntegrationSweep:
        """The integration's lease key is broken (the fleet loop's claim was refused): a
        failed sweep of that integration, recorded (its next due time is the loop's)."""
        result = IntegrationSweep(integration_id)
        # The sweep hash may be the broken key, or missing: then count from zero.
        with contextlib.suppress(RedisError):
            result.consecutive_failures = self._state(integration_id).consecutive_failures or 0
        return self._refused(result, exc, started)

    def diagnose(self, integration_id: str | None, exc: RedisError) -> str:
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
        now = self.clock()
        record, forget_invalid = with_invalid_orders(
            result, sweep_record(result, started, now, generation), now
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
            problem = self.diagnose(result.integration_id, refused)
            if problem not in (result.error or ""):  # else the sweep's error line said it
                log.error(
                    "could not record the sweep: %s",
                    problem,
                    extra={"integration_id": result.integration_id},
                )
            return
        if result.error is None and not result.interrupted and result.full:
            self._fully_swept.add(result.integration_id)
