"""Results for operators: the CLI's result commands, status lines (an order's timeline:
:mod:`dispatcher.ops.timeline`).

The functions ``dispatcher result``, ``results`` and ``retry`` (of writes) call
(see the README, "Writing results back", and docs/results.md); they print nothing themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from dispatcher import _text
from dispatcher.kombo.results import AssessmentResult
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.results import (
    STATES,
    Outbox,
    OutboxRecord,
    ResultReceipt,
    ResultState,
)

__all__ = [
    "StaleOrders",
    "list_results",
    "retry_failed_writes",
    "stale_orders",
    "submit_and_wait",
]


def submit_and_wait(
    redis: Redis,
    settings: Settings,
    integration_id: str,
    order_id: str,
    result: AssessmentResult,
    *,
    completed_at_defaulted: bool = False,
    wait: bool = True,
    timeout: float = 60.0,
    poll: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[ResultReceipt, OutboxRecord | None]:
    """``dispatcher result``: submit through the outbox and, with ``wait``, wait up to
    ``timeout`` seconds for the write to end; returns the receipt and the record as last
    read (``state`` pending when the wait timed out; the write goes on)."""
    outbox = Outbox.from_settings(redis, settings)
    receipt = outbox.submit(
        integration_id, order_id, result, completed_at_defaulted=completed_at_defaulted
    )
    if not wait or receipt.written:
        return receipt, None
    deadline = clock() + timeout
    while True:
        record = outbox.get(integration_id, order_id)
        if (
            record is None
            or record.state != "pending"
            or receipt.submission_id not in (record.submission_id, record.next_submission_id)
            or clock() >= deadline
        ):
            return receipt, record
        sleep(poll)


def list_results(
    redis: Redis,
    settings: Settings,
    *,
    state: ResultState | None = None,
    integration_id: str | None = None,
    limit: int = 1000,
) -> list[OutboxRecord]:
    """``dispatcher results``: results in one state (or all three), oldest first."""
    outbox = Outbox.from_settings(redis, settings)
    records: list[OutboxRecord] = []
    for one in (state,) if state is not None else STATES:
        records.extend(outbox.in_state(one, integration_id=integration_id, limit=limit))
    return records[:limit]


def retry_failed_writes(
    redis: Redis,
    settings: Settings,
    *,
    integration_id: str | None = None,
    order_ids: list[str] | None = None,
) -> list[ResultReceipt]:
    """``dispatcher retry --results``: queue failed writes again (same body)."""
    return Outbox.from_settings(redis, settings).retry_failed(
        integration_id=integration_id, order_ids=order_ids
    )


@dataclass(frozen=True, slots=True)
class StaleOrders:
    """Orders whose handler chain finished ``stale_after`` seconds ago or more and that have
    no final result: how many, and the oldest's age."""

    count: int
    oldest_age: float | None

    def problem(self, stale_after: float) -> str | None:
        if not self.count:
            return None
        orders = _text.plural(self.count, "order")
        verb = "has" if self.count == 1 else "have"
        oldest = f" (oldest {_text.duration(self.oldest_age)})" if self.oldest_age else ""
        days = stale_after / 86400
        span = _text.plural(int(days), "day") if days == int(days) else _text.duration(stale_after)
        return f"{orders} provisioned more than {span} ago {verb} no result{oldest}"


def stale_orders(redis: Redis, keys: Keys, stale_after: float, *, now: float) -> StaleOrders:
    """Read :class:`StaleOrders` (two commands, whatever the number of orders)."""
    cutoff = now - stale_after
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.provisioned, "-inf", cutoff)
        pipe.zrange(keys.provisioned, 0, 0, withscores=True)
        count, oldest = pipe.execute()
    age = now - float(oldest[0][1]) if count and oldest else None
    return StaleOrders(int(count), age)
