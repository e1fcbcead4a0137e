"""The record of an order whose final result Kombo accepted: ``{ns}:results:{integration}``
maps the order id to ``{"status", "at", ...}``, counted once per order in
``results_written`` and in the hour's throughput (:mod:`dispatcher.store.throughput`), for
``dispatcher status`` and the console.

The results outbox's written script (``store/lua/outbox_written.lua``) writes the
record, with the body's digest and submission, as it ends a final write. :func:`record_result`
writes the short form alone (the tests seed finished orders with it);
:func:`recorded_result` reads either back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from dispatcher.kombo.results import ResultStatus
from dispatcher.store.keys import Keys
from dispatcher.store.lua import script
from dispatcher.store.throughput import hour_key

__all__ = ["record_result", "recorded_result"]


# The record and its counter, together or not at all (KEYS and ARGV in the file).
_RECORD = script("result_record")


def record_result(
    redis: Redis,
    keys: Keys,
    integration_id: str,
    order_id: str,
    status: ResultStatus | str,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Mark an order finished after Kombo accepted its result (atomic: record and counter)."""
    now = int(clock())
    record = json.dumps({"status": str(status), "at": now})
    names = [keys.results(integration_id), keys.stats, hour_key(keys, now)]
    _RECORD(redis, names, [order_id, record, now], integration_id=integration_id)


def recorded_result(redis: Redis, keys: Keys, integration_id: str, order_id: str) -> Any:
    """The recorded result of an order (``{"status", "at"}``), or None."""
    raw = redis.hget(keys.results(integration_id), order_id)
    return json.loads(raw) if raw is not None else None
