"""An order's timeline: the events of its way back, oldest first (``dispatcher timeline``).

One list per order (:meth:`Keys.timeline`), events as JSON ``{"at", "event", ...}``, the last
200 kept and the list expiring ``timeline_ttl`` after its last event. Events are appended
inside the scripts that make them true, never on their own: a result submitted, written or
failed (the outbox's scripts, dispatcher.store.results) and the handler chain's end
(:func:`mark_provisioned`, or the record of the chain's last step), each with
``timeline_append`` of ``dispatcher/store/lua/_timeline.lua``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.lua import script

__all__ = ["chain_done", "event", "mark_provisioned", "read_events"]

_PROVISIONED = script("mark_provisioned")


def event(at: float, kind: str, **fields: Any) -> str:
    """One timeline event as stored (JSON)."""
    return json.dumps({"at": round(at, 3), "event": kind, **fields}, ensure_ascii=False)


def read_events(
    redis: Redis, keys: Keys, integration_id: str, order_id: str
) -> list[dict[str, Any]]:
    """The recorded events of an order, oldest first (an unreadable one skipped)."""
    events: list[dict[str, Any]] = []
    for raw in redis.lrange(keys.timeline(integration_id, order_id), 0, -1):
        try:
            parsed = json.loads(raw)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            events.append(parsed)
    return events


def mark_provisioned(
    redis: Redis,
    keys: Keys,
    integration_id: str,
    order_id: str,
    steps: list[str],
    *,
    timeline_ttl: int = 30 * 24 * 3600,
    clock: Callable[[], float] = time.time,
) -> None:
    """Record that the order's handler chain finished (its timeline, and the set ``status``
    reads for orders provisioned long ago without a final result)."""
    names, args = chain_done(keys, integration_id, order_id, steps, timeline_ttl, clock())
    _PROVISIONED(redis, names, args, integration_id=integration_id)


def chain_done(
    keys: Keys, integration_id: str, order_id: str, steps: list[str], timeline_ttl: int, now: float
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of the ``chain_done`` fragment (dispatcher/store/lua/_chain_done.lua):
    for :func:`mark_provisioned`, and for the worker's record of a chain's last step, which
    marks it in the same script (StepStore.complete)."""
    names = [
        keys.provisioned,
        keys.results(integration_id),
        keys.timeline(integration_id, order_id),
    ]
    args = [
        repr(now), order_ref(integration_id, order_id), order_id,
        event(now, "provisioned", steps=steps), max(1, timeline_ttl),
    ]  # fmt: skip
    return names, args
