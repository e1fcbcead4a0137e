"""Write leases: the cap on Kombo writes in flight per integration
(``DISPATCHER_KOMBO_WRITE_CONCURRENCY``), across every process; the results write job
(dispatcher/worker/results.py) holds one while it writes. The job takes its slot in the
outbox's step that begins the attempt and gives it back in the step that ends it as written
(:meth:`dispatcher.store.results.Outbox.begin`, ``mark_written``: one round trip each instead
of two), through :class:`WriteSlot`; :meth:`WriteLeases.acquire` and ``release`` remain for
everything else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from dispatcher.store.keys import Keys
from dispatcher.store.lua import script

__all__ = ["WriteLeases", "WriteSlot"]

_ACQUIRE = script("write_lease_acquire")


@dataclass(frozen=True, slots=True)
class WriteSlot:
    """A request for one of an integration's write slots, for a script that takes it with
    the fragment ``write_slot`` (``lua/_write_slot.lua``): the lease zset and the
    fragment's arguments after the holder's (now, cap, lease expiry)."""

    key: str
    now: str
    cap: int
    expiry: str


class WriteLeases:
    """The cap on Kombo writes in flight per integration, across every process: a sorted set
    per integration of holder -> lease expiry (unix time). A holder that dies stops counting
    once its lease expires."""

    def __init__(
        self, redis: Redis, keys: Keys, cap: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cap = cap
        self._clock = clock

    def slot(self, integration_id: str, ttl: float) -> WriteSlot:
        """A request for one of the integration's write slots for ``ttl`` seconds from now."""
        now = self._clock()
        return WriteSlot(self.keys.kombo_writes(integration_id), repr(now), self.cap,
                         repr(now + ttl))  # fmt: skip

    def acquire(self, integration_id: str, holder: str, ttl: float) -> bool:
        """Take one of the integration's write slots for ``ttl`` seconds; False when full."""
        slot = self.slot(integration_id, ttl)
        args = [slot.now, slot.cap, holder, slot.expiry]
        return bool(_ACQUIRE(self.redis, [slot.key], args, integration_id=integration_id))

    def release(self, integration_id: str, holder: str) -> None:
        self.redis.zrem(self.keys.kombo_writes(integration_id), holder)

    def in_flight(self, integration_id: str) -> int:
        key = self.keys.kombo_writes(integration_id)
        return int(self.redis.zcount(key, self._clock(), "+inf"))
