"""Results for operators: an order's timeline, the CLI's result commands, status lines.

The functions ``dispatcher result``, ``results``, ``retry`` (of writes) and ``show`` call
(see the README, "Writing results back", and docs/writeback.md); they print nothing themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis

from dispatcher import _text
from dispatcher.kombo.results import AssessmentResult
from dispatcher.ops.admin import describe_order
from dispatcher.settings import Settings
from dispatcher.store.failures import MAX_REASON_LENGTH
from dispatcher.store.keys import Keys
from dispatcher.store.outbox import (
    STATES,
    Outbox,
    OutboxRecord,
    ResultReceipt,
    ResultState,
)
from dispatcher.untrusted import untrusted_text

__all__ = [
    "StaleOrders",
    "list_results",
    "order_timeline",
    "retry_failed_writes",
    "stale_orders",
    "submit_and_wait",
    "timeline_lines",
]


def order_timeline(
    redis: Redis, settings: Settings, integration_id: str, order_id: str
) -> list[dict[str, Any]]:
    """One order's life, oldest first: first seen (dispatched), job enqueued, each handler
    step (when, output keys), provisioned, each result submitted, written (Kombo's warnings,
    whether the answer was lost) or failed (why), and a pending write's next attempt.

    Empty when the dispatcher knows nothing of the order.
    """
    events: list[dict[str, Any]] = []
    for record in describe_order(
        redis, settings.namespace, settings.queue, order_id, [integration_id]
    ):
        if record.seen_at is not None:
            first: dict[str, Any] = {"at": record.seen_at, "event": "first_seen"}
            if record.source is not None:
                first["source"] = record.source  # poll or webhook
            events.append(first)
        if record.enqueued_at is not None:
            events.append({"at": record.enqueued_at, "event": "enqueued", "job_id": record.job_id})
        for step in record.steps:
            output = step.output if isinstance(step.output, dict) else {}
            events.append(
                {
                    "at": step.completed_at,
                    "event": "step_done",
                    "handler": step.handler,
                    "output_keys": sorted(str(key) for key in output),
                }
            )
        if record.last_error is not None:
            events.append(
                {
                    "at": record.last_error_at,
                    "event": "step_failed",
                    "handler": record.last_error.handler,
                    "reason": record.last_error.reason,
                }
            )
    outbox = Outbox.from_settings(redis, settings)
    # Reasons in the timeline are Kombo's words: cleaned when written, and again here for
    # events written by older versions (or by anything else that can write Redis).
    events.extend(_cleaned(event) for event in outbox.timeline_events(integration_id, order_id))
    pending = outbox.get(integration_id, order_id)
    if pending is not None and pending.state == "pending" and pending.next_attempt_at:
        events.append(
            {
                "at": pending.next_attempt_at,
                "event": "write_retry_due",
                "attempts": pending.attempts,
                "last_error": _cleaned(pending.last_error),
            }
        )
    events.sort(key=lambda event: (event.get("at") is None, event.get("at") or 0.0))
    return events


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return untrusted_text(value, MAX_REASON_LENGTH)
    if isinstance(value, dict):
        return {key: _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def timeline_lines(events: list[dict[str, Any]]) -> list[str]:
    """The text of ``dispatcher show``'s timeline: one line an event (ids and reasons from
    Kombo or handlers through :func:`untrusted_text`: masked, then escaped, then cut)."""
    lines = []
    for event in events:
        when = _text.timestamp(event.get("at"))
        details = ", ".join(
            f"{key}={untrusted_text(_text.compact_json(value, 1_000_000), 80)}"
            for key, value in event.items()
            if key not in {"at", "event"} and value not in (None, [], "")
        )
        lines.append(f"{when}  {event.get('event')}" + (f"  {details}" if details else ""))
    return lines


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
    if not wait:
        return receipt, None
    deadline = clock() + timeout
    while True:
        record = outbox.get(integration_id, order_id)
        if (
            record is None
            or record.state != "pending"
            or record.submission_id != receipt.submission_id
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
