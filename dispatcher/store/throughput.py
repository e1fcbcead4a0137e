"""Per-minute counters of orders found, dispatched and results written: the console's chart.

One hash per hour (:meth:`Keys.throughput`), field ``<kind>:<unix minute>``, expiring 25
hours after its hour began, so the last 24 hours are always whole and nothing is kept
longer. The counters ride on writes that happen anyway, never a round trip of their own:

- ``found``: orders a sweep listed (the poller's sweep record pipeline);
- ``dispatched``: orders enqueued (inside the ledger's dispatch script);
- ``results``: orders whose final result was written back (inside the outbox's written
  script, where ``results_written`` is counted too).

Inside a script, ``count_throughput`` of ``dispatcher/store/lua/_throughput.lua`` counts (its
25 hours are :data:`_KEEP_HOURS`); outside, :func:`count` on a pipeline.

A counter key of another type is skipped, never fatal: a chart must not stop dispatching.
Reading the last 24 hours (:func:`read_series`) is one pipelined round trip of 25 ``HGETALL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from dispatcher.store.keys import Keys

__all__ = [
    "KINDS",
    "WINDOW_MINUTES",
    "Series",
    "count",
    "expire_at",
    "field",
    "hour_key",
    "read_series",
]

KINDS = ("found", "dispatched", "results")
WINDOW_MINUTES = 24 * 60
# Also in dispatcher/store/lua/_throughput.lua (tests/store/test_throughput.py checks both).
_KEEP_HOURS = 25


def hour_key(keys: Keys, now: float) -> str:
    """The hash holding the minute of ``now``."""
    return keys.throughput(int(now) // 3600)


def field(kind: str, now: float) -> str:
    """The field of ``kind`` for the minute of ``now``."""
    return f"{kind}:{int(now) // 60}"


def expire_at(now: float) -> int:
    """When the hash of ``now``'s hour expires (unix time)."""
    return (int(now) // 3600 + _KEEP_HOURS) * 3600


def count(pipe: Any, keys: Keys, kind: str, amount: int, now: float) -> None:
    """Queue the increment of ``kind`` by ``amount`` on a pipeline (two commands)."""
    key = hour_key(keys, now)
    pipe.hincrby(key, field(kind, now), amount)
    pipe.expireat(key, expire_at(now))


@dataclass(frozen=True, slots=True)
class Series:
    """Counts per minute of the last 24 hours: ``counts[kind][i]`` is the minute
    ``first_minute + i`` (unix minutes); the last is the current minute."""

    first_minute: int
    counts: Mapping[str, tuple[int, ...]]
    refused: tuple[str, ...] = ()  # keys Redis refused to read (another type)

    def total(self, kind: str) -> int:
        return sum(self.counts[kind])


def read_series(redis: Redis, keys: Keys, now: float, minutes: int = WINDOW_MINUTES) -> Series:
    """The last ``minutes`` minutes up to ``now``'s, in one round trip."""
    last = int(now) // 60
    first = last - minutes + 1
    hours = list(range(first // 60, last // 60 + 1))
    with redis.pipeline(transaction=False) as pipe:
        for hour in hours:
            pipe.hgetall(keys.throughput(hour))
        replies = pipe.execute(raise_on_error=False)
    counts = {kind: [0] * minutes for kind in KINDS}
    refused = []
    for hour, reply in zip(hours, replies, strict=True):
        if isinstance(reply, ResponseError):
            refused.append(keys.throughput(hour))
            continue
        for raw_field, raw_value in reply.items():
            kind, _, minute = _text(raw_field).partition(":")
            if kind not in counts or not minute.isdigit():
                continue
            index = int(minute) - first
            if 0 <= index < minutes:
                try:
                    counts[kind][index] += int(raw_value)
                except ValueError:
                    continue
    return Series(first, {kind: tuple(values) for kind, values in counts.items()}, tuple(refused))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
