"""The record of an order whose final result Kombo accepted: ``{ns}:results:{integration}``
maps the order id to ``{"status", "at", ...}``, counted once per order in
``results_written`` and in the hour's throughput (:mod:`dispatcher.store.throughput`), for
``dispatcher status`` and the console.

The results outbox's written script (:mod:`dispatcher.store.results_scripts`) writes the
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
from dispatcher.store.throughput import hour_key, lua_count
from dispatcher.store.wrongtype import key_types_checked, lua_type_guard

__all__ = ["record_result", "recorded_result"]


# KEYS: 1 results hash, 2 stats hash, 3 the hour's throughput hash (store/throughput.py).
# ARGV: 1 order id, 2 record (JSON), 3 unix time (whole seconds; the one KEYS[3] is of).
# The counter counts finished orders: a second write for the same order does not add one.
# Types are checked first, so that the record and the counter are written together or not.
_RECORD_TYPES = ("hash", "hash")
_RECORD_SCRIPT = (
    lua_type_guard(_RECORD_TYPES)
    + """
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'results_written', 1)
"""
    + lua_count("KEYS[3]", "results", "ARGV[3]", "1")
    + """
end
return 1
"""
)


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
    with key_types_checked(names, _RECORD_TYPES, integration_id=integration_id):
        redis.eval(_RECORD_SCRIPT, len(names), *names, order_id, record, now)


def recorded_result(redis: Redis, keys: Keys, integration_id: str, order_id: str) -> Any:
    """The recorded result of an order (``{"status", "at"}``), or None."""
    raw = redis.hget(keys.results(integration_id), order_id)
    return json.loads(raw) if raw is not None else None
