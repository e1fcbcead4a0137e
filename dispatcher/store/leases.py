"""Write leases: the cap on Kombo writes in flight per integration
(``DISPATCHER_KOMBO_WRITE_CONCURRENCY``), across every process; the results write job
(dispatcher/worker/results.py) holds one while it writes."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from dispatcher.store.keys import Keys
from dispatcher.store.lua import script

__all__ = ["WriteLeases"]

_ACQUIRE = script("write_lease_acquire")


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

    def acquire(self, integration_id: str, holder: str, ttl: float) -> bool:
        """Take one of the integration's write slots for ``ttl`` seconds; False when full."""
        key = self.keys.kombo_writes(integration_id)
        now = self._clock()
        args = [repr(now), self.cap, holder, repr(now + ttl)]
        return bool(_ACQUIRE(self.redis, [key], args, integration_id=integration_id))

    def release(self, integration_id: str, holder: str) -> None:
        self.redis.zrem(self.keys.kombo_writes(integration_id), holder)

    def in_flight(self, integration_id: str) -> int:
        key = self.keys.kombo_writes(integration_id)
        return int(self.redis.zcount(key, self._clock(), "+inf"))
