"""One order's timeline: the one source of ``dispatcher show``, ``GET /orders/{i}/{o}`` and
the console's order page.

Events come from the records the dispatcher keeps anyway (the seen mark, the RQ job, the step
records, the outbox and the order's timeline list, ``{ns}:timeline:{integration}:{order}``)
and are put in causal order: by time, and at one time in the order things happen (seen
before queued before started before a step...). RQ keeps one ``enqueued_at`` and one
``started_at`` per job, the last ones: on a retried order they come after the steps of the
earlier attempts, so they are shown as a re-queue (and a restart), with the first queueing at
the dispatch itself (the ledger marks an order seen and queues its job in one script).
"""

from __future__ import annotations

import math
from typing import Any

from redis import Redis

from dispatcher import _text
from dispatcher.ops.order_record import OrderRecord, describe_order
from dispatcher.settings import Settings
from dispatcher.store.failures import MAX_REASON_LENGTH
from dispatcher.store.results import Outbox
from dispatcher.untrusted import untrusted_text

__all__ = ["EVENT_RANK", "event_details", "order_timeline", "timeline_lines"]

_IN_THE_JOB = {"step_done", "step_failed", "provisioned"}

# At one time, the order things happen in. Events of kinds not listed sort after these.
EVENT_RANK = {
    kind: rank
    for rank, kind in enumerate(
        (
            "first_seen",
            "enqueued",
            "requeued",
            "started",
            "step_done",
            "step_failed",
            "provisioned",
            "job_finished",
            "job_failed",
            "job_ended",
            "retry_scheduled",
            "result_submitted",
            "result_written",
            "result_failed",
            "write_retry_due",
        )
    )
}


def order_timeline(
    redis: Redis,
    settings: Settings,
    integration_id: str,
    order_id: str,
    *,
    record: OrderRecord | None = None,
) -> list[dict[str, Any]]:
    """One order's life in causal order: first seen (dispatched, and how it came), queued,
    started, each handler step (when, output keys) or failure, provisioned, the job's end or
    its retry, each result submitted, written (Kombo's warnings, whether the answer was lost)
    or failed (why), and a pending write's next attempt. ``record``: the order's
    :class:`OrderRecord` when the caller has it (else read here).

    Empty when the dispatcher knows nothing of the order.
    """
    if record is None:
        records = describe_order(
            redis, settings.namespace, settings.queue, order_id, [integration_id]
        )
        record = records[0] if records else None
    outbox = Outbox.from_settings(redis, settings)
    # Reasons in the timeline are Kombo's words: cleaned when written, and again here for
    # events written by older versions (or by anything else that can write Redis).
    recorded = [_cleaned(event) for event in outbox.timeline_events(integration_id, order_id)]
    events = _job_events(record, recorded) if record is not None else []
    events.extend(recorded)
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
    return sorted(events, key=_causal)


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return untrusted_text(value, MAX_REASON_LENGTH)
    if isinstance(value, dict):
        return {key: _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def _causal(event: dict[str, Any]) -> tuple[bool, float, int]:
    at = event.get("at")
    when = float(at) if isinstance(at, int | float) else 0.0
    return (not isinstance(at, int | float), when, EVENT_RANK.get(str(event.get("event")), 99))


def _job_events(record: OrderRecord, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the seen mark, the job and the step records; ``recorded``: the order's
    timeline list (its provisioning is part of the job)."""
    events: list[dict[str, Any]] = []
    if record.seen_at is not None:
        first: dict[str, Any] = {"at": record.seen_at, "event": "first_seen"}
        if record.source is not None:
            first["source"] = record.source  # poll or webhook
        events.append(first)
    # Work of an earlier attempt (a step done, a failure) before the job's enqueued_at: the
    # job was queued again since, by a retry (RQ's or `dispatcher retry`).
    earlier = [s.completed_at for s in record.steps if s.completed_at is not None]
    if record.last_error_at is not None:
        earlier.append(record.last_error_at)
    requeued = record.enqueued_at is not None and any(t < record.enqueued_at for t in earlier)
    if record.enqueued_at is not None:
        if requeued:
            if record.seen_at is not None:
                events.append({"at": record.seen_at, "event": "enqueued", "job_id": record.job_id})
            events.append(
                {"at": record.enqueued_at, "event": "requeued", "attempt": record.attempts}
            )
        else:
            events.append({"at": record.enqueued_at, "event": "enqueued", "job_id": record.job_id})
    if record.started_at is not None:
        # Steps record their time rounded to the millisecond, RQ its start to the microsecond:
        # a step done within the millisecond of the start could read before it. Down to the
        # millisecond, the start is never after its steps (and sorts before them by rank).
        started = math.floor(record.started_at * 1000) / 1000
        events.append({"at": started, "event": "started", "worker": record.worker})
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
    if record.retry_at is not None:
        events.append({"at": record.retry_at, "event": "retry_scheduled"})
    if record.ended_at is not None and record.job_status in {"finished", "failed"}:
        # The job ends after its last step and its provisioning, whose times the job took
        # itself (rounded to the millisecond): RQ's end time may read a hair earlier.
        done = [
            e["at"]
            for e in (*events, *recorded)
            if e.get("event") in _IN_THE_JOB and isinstance(e.get("at"), int | float)
        ]
        events.append({"at": max([record.ended_at, *done]), "event": f"job_{record.job_status}"})
    return events


def timeline_lines(events: list[dict[str, Any]]) -> list[str]:
    """The text of ``dispatcher show``'s timeline: one line an event (ids and reasons from
    Kombo or handlers through :func:`untrusted_text`: masked, then escaped, then cut)."""
    lines = []
    for event in events:
        when = _text.timestamp(event.get("at"))
        details = event_details(event)
        lines.append(f"{when}  {event.get('event')}" + (f"  {details}" if details else ""))
    return lines


def event_details(event: dict[str, Any]) -> str:
    """An event's fields but its time and kind, as ``dispatcher show`` prints them
    (``kombo_status="COMPLETED", event_id="evt_1"``; through :func:`untrusted_text`); the
    console's order page shows the same for the events it has no words of its own for."""
    return ", ".join(
        f"{key}={untrusted_text(_text.compact_json(value, 1_000_000), 80)}"
        for key, value in event.items()
        if key not in {"at", "event"} and value not in (None, [], "")
    )
