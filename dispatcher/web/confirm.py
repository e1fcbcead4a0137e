"""Webhook orders are confirmed OPEN with Kombo before they are dispatched.

Kombo's deliveries carry no timestamp, so no time window can refuse a replay: a captured
signed delivery, sent again after ``forget`` or pruning, dispatched its order again even
when Kombo had completed it. The receiver therefore asks Kombo (``GET /assessment/orders
?ids=...``, one request per integration for every order of a batch of deliveries, up to
:data:`MAX_IDS` ids a request) and dispatches only the orders Kombo lists as ``OPEN``:

- an order Kombo lists with another status is not dispatched; the timeline records it
  (``webhook_not_open``, shown by ``dispatcher show`` and the results API's order timeline);
- an order Kombo cannot confirm (Kombo down, slow beyond ``DISPATCHER_WEBHOOK_CONFIRM_TIMEOUT``,
  or not listing it) is kept in Redis (:meth:`Keys.webhook_unconfirmed`) and confirmed
  later by every ``dispatcher web`` (:meth:`UnconfirmedOrders.due`): never dropped. One not
  listed for :data:`GIVE_UP_AFTER` seconds is dropped with an ERROR line and a timeline
  event; Kombo being down is retried for as long as it lasts.

The poller needs none of this: its orders come from Kombo's OPEN listing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis import Redis

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.models import Order, OrderValidationError, parse_order
from dispatcher.settings import ConfigError, Settings
from dispatcher.store.failures import clean_reason
from dispatcher.store.keys import Keys, order_ref

__all__ = [
    "GIVE_UP_AFTER",
    "MAX_IDS",
    "NOT_LISTED",
    "RETRY_CAP",
    "RETRY_EVERY",
    "Answer",
    "Confirmer",
    "Pending",
    "UnconfirmedOrders",
    "record_event",
]

log = logging.getLogger("dispatcher.webhook")

# Ids per request: Kombo's comma-separated filter in the URL (ids are at most 100 characters
# here, so a request line stays under ~10 KB) and well within one page (page_size up to 250).
MAX_IDS = 100
# An order Kombo does not list, retried this long, is dropped (Kombo being down is not this).
GIVE_UP_AFTER = 24 * 3600.0
# Retries of unconfirmed orders: every this many seconds at first, doubling while Kombo keeps
# failing, up to the cap.
RETRY_EVERY = 5.0
RETRY_CAP = 300.0
NOT_LISTED = "Kombo does not list the order (yet)"
# Unconfirmed orders retried per round at most (the rest wait for the next round).
_ROUND = 1000


@dataclass(frozen=True, slots=True)
class Answer:
    """Kombo's word on one order: its status, or why there is none."""

    status: str | None
    problem: str | None = None


class Confirmer:
    """Asks Kombo the status of webhook orders, batched per integration; thread-safe."""

    def __init__(self, client: KomboClient, *, workers: int = 8) -> None:
        self.client = client
        self.workers = workers
        self.requests = 0  # Kombo requests sent (bench/webhook_latency.py reads it)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Confirmer | None:
        """The confirmer of ``dispatcher web``, or None with DISPATCHER_WEBHOOK_CONFIRM off.
        Raises ConfigError when it is on without KOMBO_API_KEY."""
        if not settings.webhook_confirm:
            return None
        key = settings.kombo_api_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                "KOMBO_API_KEY: not set (the webhook receiver confirms each order OPEN with "
                "Kombo before dispatching it; set DISPATCHER_WEBHOOK_CONFIRM=false to "
                "dispatch webhook orders unconfirmed, replays included)"
            )
        client = KomboClient.from_settings(
            settings,
            timeout=settings.webhook_confirm_timeout,
            # No retry while a delivery waits: an order not confirmed now is kept and
            # confirmed later (UnconfirmedOrders).
            retry_budget=0,
        )
        return cls(client)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.client.close()

    def statuses(self, wanted: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], Answer]:
        """Kombo's answer for every (integration, order id) of ``wanted``; blocking, one
        request per integration and :data:`MAX_IDS` ids, integrations in parallel."""
        chunks = [
            (integration_id, list(ids[start : start + MAX_IDS]))
            for integration_id, ids in wanted.items()
            for start in range(0, len(ids), MAX_IDS)
        ]
        if not chunks:
            return {}
        if len(chunks) == 1:
            results = [self._ask(*chunks[0])]
        else:
            results = list(self._executor().map(lambda chunk: self._ask(*chunk), chunks))
        answers: dict[tuple[str, str], Answer] = {}
        for part in results:
            answers.update(part)
        return answers

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="confirm")
            return self._pool

    def _ask(self, integration_id: str, ids: list[str]) -> dict[tuple[str, str], Answer]:
        with self._lock:
            self.requests += 1
        try:
            page = self.client.get_orders(integration_id, ids=ids, page_size=len(ids))
            listed: dict[str, str | None] = {}
            for raw in page.results:
                status = raw.data.get("status") if isinstance(raw.data, dict) else None
                listed[raw.id] = status if isinstance(status, str) else None
        except Exception as exc:  # any failure: the orders are kept and asked again later
            problem = clean_reason(f"Kombo did not confirm: {exc}")
            return {(integration_id, order_id): Answer(None, problem) for order_id in ids}
        answers = {}
        for order_id in ids:
            if order_id not in listed:
                answer = Answer(None, NOT_LISTED)
            elif listed[order_id] is None:
                answer = Answer(None, "Kombo lists the order without a status")
            else:
                answer = Answer(listed[order_id])
            answers[(integration_id, order_id)] = answer
        return answers


@dataclass(frozen=True, slots=True)
class Pending:
    """An order kept until Kombo confirms it."""

    integration_id: str
    order: Order
    event_id: str
    received_at: float
    attempts: int
    last_error: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "integration_id": self.integration_id,
                "order": self.order.to_payload(),
                "event_id": self.event_id,
                "received_at": round(self.received_at, 3),
                "attempts": self.attempts,
                "last_error": self.last_error,
            },
            ensure_ascii=False,
        )


class UnconfirmedOrders:
    """Webhook orders Kombo has not confirmed yet, in one Redis hash (any process may
    confirm them: dispatching is deduplicated by the ledger)."""

    def __init__(self, redis: Redis, keys: Keys, *, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.keys = keys
        self.clock = clock

    def keep(self, pending: Pending) -> bool:
        """Keep an order to confirm later; False when it is kept already (a replay).
        With its receiving time in :attr:`Keys.webhook_unconfirmed_since`, in one MULTI
        (``NX``: a replay keeps the first time)."""
        field = order_ref(pending.integration_id, pending.order.id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.keys.webhook_unconfirmed, field, pending.to_json())
            pipe.zadd(self.keys.webhook_unconfirmed_since, {field: pending.received_at}, nx=True)
            kept, _ = pipe.execute()
        return bool(kept)

    def update(self, pending: Pending) -> None:
        field = order_ref(pending.integration_id, pending.order.id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.webhook_unconfirmed, field, pending.to_json())
            pipe.zadd(self.keys.webhook_unconfirmed_since, {field: pending.received_at}, nx=True)
            pipe.execute()

    def done(self, integration_id: str, order_id: str) -> None:
        self._drop(order_ref(integration_id, order_id))

    def _drop(self, field: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.webhook_unconfirmed, field)
            pipe.zrem(self.keys.webhook_unconfirmed_since, field)
            pipe.execute()

    def count(self) -> int:
        return int(self.redis.hlen(self.keys.webhook_unconfirmed))

    def due(self, limit: int = _ROUND) -> list[Pending]:
        """Up to ``limit`` kept orders (an unreadable entry is logged and dropped: it was
        written by this module, so only a hand in Redis makes one)."""
        kept: list[Pending] = []
        for field, raw in self._scan(limit):
            try:
                pending = _parse(raw)
            except (ValueError, TypeError, KeyError, OrderValidationError) as exc:
                log.error(
                    "webhook: unreadable entry %s in %s dropped: %s",
                    clean_reason(field),
                    self.keys.webhook_unconfirmed,
                    clean_reason(str(exc)),
                )
                self._drop(field)
                continue
            kept.append(pending)
        return kept

    def _scan(self, limit: int) -> Iterator[tuple[str, bytes | str]]:
        for count, (field, raw) in enumerate(
            self.redis.hscan_iter(self.keys.webhook_unconfirmed, count=limit)
        ):
            if count >= limit:
                return
            yield (field.decode() if isinstance(field, bytes) else field), raw


def _parse(raw: bytes | str) -> Pending:
    data = json.loads(raw)
    order = parse_order(data["order"])
    return Pending(
        integration_id=str(data["integration_id"]),
        order=order,
        event_id=str(data["event_id"]),
        received_at=float(data["received_at"]),
        attempts=int(data["attempts"]),
        last_error=str(data["last_error"]),
    )


def record_event(
    redis: Redis, keys: Keys, integration_id: str, order_id: str, ttl: int, **event: Any
) -> None:
    """Add an event to the order's timeline (``dispatcher show``, ``GET /orders/{i}/{o}``)."""
    key = keys.timeline(integration_id, order_id)
    text = json.dumps({"at": round(time.time(), 3), **event}, ensure_ascii=False)
    with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, text)
        pipe.expire(key, max(1, ttl))
        pipe.execute()
