"""The poller: sweeps every integration's OPEN orders and dispatches the new ones.

Pages are dispatched as they arrive, so memory stays flat however many orders an integration
has; integrations are swept concurrently with a bound.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from redis import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from .kombo import InvalidPageError, KomboClient, KomboError, OrdersPage
from .ledger import Ledger
from .telemetry import RequestStats

__all__ = ["IntegrationSweep", "Poller", "SweepReport"]

log = logging.getLogger("dispatcher.poller")


@dataclass(slots=True)
class IntegrationSweep:
    """The outcome of sweeping one integration."""

    integration_id: str
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    error: str | None = None
    error_code: str | None = None
    error_order_id: str | None = None
    interrupted: bool = False


@dataclass(slots=True)
class SweepReport:
    """The outcome of one sweep of every integration (``poll --once --json`` prints it)."""

    integrations: int = 0
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    results: list[IntegrationSweep] = field(default_factory=list)

    def add(self, one: IntegrationSweep) -> None:
        self.results.append(one)
        self.integrations += 1
        self.pages += one.pages
        self.orders_seen += one.orders_seen
        self.orders_new += one.orders_new
        if one.error is not None:
            self.errors[one.integration_id] = one.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "integrations": self.integrations,
            "pages": self.pages,
            "orders_seen": self.orders_seen,
            "orders_new": self.orders_new,
            "errors": dict(self.errors),
        }


class Poller:
    """Sweeps integrations and hands new orders to the ledger."""

    def __init__(
        self,
        client: KomboClient,
        ledger: Ledger,
        integration_ids: Sequence[str],
        *,
        endpoint: Literal["orders", "open"] = "orders",
        page_size: int = 250,
        concurrency: int = 8,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        request_stats: RequestStats | None = None,
    ) -> None:
        """``request_stats``: the Kombo client's observer; what it gathered is saved in Redis
        with every integration's sweep record (for ``dispatcher status`` and ``/metrics``)."""
        self.client = client
        self.ledger = ledger
        self.integration_ids = list(integration_ids)
        self.endpoint = endpoint
        self.page_size = page_size
        self.concurrency = concurrency
        self.stop = stop or threading.Event()
        self._clock = clock
        self.request_stats = request_stats

    @property
    def redis(self) -> Redis:
        return self.ledger.redis

    def sweep(self) -> SweepReport:
        """Sweep every integration once, concurrently; never raises for one integration."""
        report = SweepReport()
        if not self.integration_ids:
            return report
        workers = min(self.concurrency, len(self.integration_ids))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep") as pool:
            for one in pool.map(self.sweep_integration, self.integration_ids):
                report.add(one)
        return report

    def sweep_integration(self, integration_id: str) -> IntegrationSweep:
        """Page through one integration's OPEN orders, dispatching each page as it comes."""
        result = IntegrationSweep(integration_id)
        extra = {"integration_id": integration_id}
        started = self._clock()
        try:
            for page in self._pages(integration_id):
                dispatched = self.ledger.dispatch(integration_id, page.orders)
                result.pages += 1
                result.orders_seen += len(page.orders)
                result.orders_new += len(dispatched.enqueued)
                if self.stop.is_set() and page.next:
                    result.interrupted = True
                    log.info("stopping after page %d", result.pages, extra=extra)
                    break
        except InvalidPageError as exc:
            result.error = str(exc)
            result.error_code = "INVALID_PAGE"
            if not exc.order_id.startswith(("(", "#", "?")):
                result.error_order_id = exc.order_id
        except KomboError as exc:
            result.error = str(exc)
            result.error_code = exc.code or (f"HTTP {exc.status_code}" if exc.status_code else None)
        except RedisError as exc:
            result.error = f"integration {integration_id}: redis: {type(exc).__name__}: {exc}"
            result.error_code = "REDIS"
        if result.error is not None:
            if result.error_order_id is not None:
                extra["order_id"] = result.error_order_id
            log.error("sweep failed: %s", result.error, extra=extra)
        else:
            log.info(
                "swept %d orders in %d pages, %d new",
                result.orders_seen,
                result.pages,
                result.orders_new,
                extra=extra,
            )
        self._record(result, started)
        return result

    def run_forever(self, interval: float, *, jitter: float = 0.1) -> None:
        """Sweep every ``interval`` seconds (± jitter) until ``stop`` is set."""
        rng = random.Random()
        while not self.stop.is_set():
            started = time.monotonic()
            report = self.sweep()
            if report.errors:
                log.warning("sweep finished with %d failing integrations", len(report.errors))
            wait = interval * (1 + rng.uniform(-jitter, jitter)) - (time.monotonic() - started)
            self.stop.wait(max(0.0, wait))

    def _pages(self, integration_id: str) -> Iterator[OrdersPage]:
        if self.endpoint == "open":
            return self.client.iter_open_order_pages(integration_id, page_size=self.page_size)
        return self.client.iter_order_pages(
            integration_id, statuses=("OPEN",), page_size=self.page_size
        )

    def _record(self, result: IntegrationSweep, started: float) -> None:
        """Keep the last sweep of the integration in Redis for ``dispatcher status``."""
        now = self._clock()
        fields: dict[FieldT, EncodableT] = {
            "last_attempt_at": now,
            "duration": round(now - started, 3),
        }
        if result.error is None:
            fields.update(
                last_sweep_at=now,
                orders_seen=result.orders_seen,
                orders_new=result.orders_new,
                pages=result.pages,
            )
        else:
            fields.update(
                last_error=result.error,
                last_error_code=result.error_code or "",
                last_error_at=now,
            )
        keys = self.ledger.keys
        key = keys.sweep(result.integration_id)
        counts, seconds = self.request_stats.drain() if self.request_stats else ({}, {})
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=fields)
                if result.error is not None:
                    pipe.hincrby(key, "error_count", 1)
                pipe.sadd(keys.swept_integrations, result.integration_id)
                # Kombo request telemetry rides along: no round trip of its own.
                for name, count in counts.items():
                    pipe.hincrby(keys.kombo_requests, name, count)
                for name, total in seconds.items():
                    pipe.hincrbyfloat(keys.kombo_requests, name, total)
                pipe.execute()
        except RedisError as exc:
            if self.request_stats is not None:
                self.request_stats.restore(counts, seconds)
            log.warning(
                "could not record the sweep: %s",
                exc,
                extra={"integration_id": result.integration_id},
            )
