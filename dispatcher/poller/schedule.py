"""The fleet-wide sweep schedule and the leases that let many pollers share it.

Every integration has a due time in one sorted set. A poller *claims* a due integration
with one Lua script that checks it is still due and takes its lease (a key with a TTL) in the
same step, so no two pollers sweep it at once and none sweeps it twice in one interval; the
lease is renewed after every page and released after the integration is rescheduled. While
leased, an integration's due time is when its lease would expire unrenewed: other pollers
skip it, and wait for it rather than spin. A poller that dies loses its leases when they
expire, and the integration, due by then, is claimed by another poller. Leases are an
efficiency: the dedupe (ledger.py) stays correct without them.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import cast

from redis import Redis

from dispatcher import tunables
from dispatcher._text import as_str
from dispatcher.store.keys import Keys
from dispatcher.store.lua import script

__all__ = ["FIRST_SWEEP_WITHIN", "Schedule", "spread_offset"]

# Claiming a due integration takes its lease in the same step (KEYS and ARGV in the files).
_CLAIM = script("schedule_claim")
_RENEW = script("schedule_renew")
_RELEASE = script("lease_release")


# Seconds after a poller's start within which every integration new to the schedule gets its
# first sweep (spread within them, so that many integrations do not all start at once).
FIRST_SWEEP_WITHIN = 8.0


def spread_offset(integration_id: str, interval: float) -> float:
    """A stable offset within the interval, so due times spread instead of herding."""
    return (zlib.crc32(integration_id.encode()) % 10_000) / 10_000 * interval


class Schedule:
    """Due times and leases of integrations, shared by every poller of a namespace."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        lease_ttl: float = tunables.LEASE_TTL,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.lease_ttl = lease_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._clock = clock

    def sync(self, active: Sequence[str], interval: float) -> None:
        """Give new integrations a due time spread over the interval; drop inactive ones."""
        now = self._clock()
        current = {as_str(m) for m in _members(self.redis.zrange(self.keys.schedule, 0, -1))}
        wanted = set(active)
        with self.redis.pipeline(transaction=False) as pipe:
            # A first sweep within FIRST_SWEEP_WITHIN of the start, whatever the interval:
            # spread over a 60 s interval, an operator waited up to a minute for orders
            # (and `status` said "never swept" meanwhile). Later sweeps keep the spread.
            first = min(interval, FIRST_SWEEP_WITHIN)
            new = {i: now + spread_offset(i, first) for i in wanted - current}
            if new:
                pipe.zadd(self.keys.schedule, new, nx=True)
            stale = current - wanted
            if stale:
                pipe.zrem(self.keys.schedule, *stale)
            pipe.execute()

    def due(self, limit: int) -> list[str]:
        """Integrations due now, most overdue first."""
        members = self.redis.zrangebyscore(
            self.keys.schedule, "-inf", self._clock(), start=0, num=limit
        )
        return [as_str(m) for m in _members(members)]

    def next_due_in(self) -> float | None:
        """Seconds until the next integration is due (None when nothing is scheduled)."""
        first = self.redis.zrange(self.keys.schedule, 0, 0, withscores=True)
        if not first:
            return None
        return max(0.0, float(first[0][1]) - self._clock())

    def claim(self, integration_id: str) -> bool:
        """Take the integration's lease if it is still due and nobody else holds it.

        A lease already ours is one our last sweep could not release (Redis lost mid-sweep,
        a failover): taken again at once rather than after its TTL (30 s of an integration
        not swept). The caller runs at most one sweep per integration (the poller skips
        those running), so this never doubles a sweep.

        Raises redis's ResponseError (WRONGTYPE) when the lease key holds another type."""
        now = self._clock()
        return bool(
            _CLAIM(
                self.redis,
                [self.keys.schedule, self.keys.lease(integration_id)],
                [integration_id, now, self.owner, int(self.lease_ttl * 1000), now + self.lease_ttl],
            )
        )

    def renew(self, integration_id: str) -> bool:
        """Extend our lease; False if it was lost (expired and taken, or released)."""
        return bool(
            _RENEW(
                self.redis,
                [self.keys.schedule, self.keys.lease(integration_id)],
                [
                    integration_id,
                    self.owner,
                    int(self.lease_ttl * 1000),
                    self._clock() + self.lease_ttl,
                ],
            )
        )

    def reschedule(self, integration_id: str, at: float) -> None:
        """Set the next due time (only while the integration is still scheduled)."""
        self.redis.zadd(self.keys.schedule, {integration_id: at}, xx=True)

    def release(self, integration_id: str) -> None:
        _RELEASE(self.redis, [self.keys.lease(integration_id)], [self.owner])

    def holder(self, integration_id: str) -> str | None:
        value = self.redis.get(self.keys.lease(integration_id))
        return None if value is None else as_str(value)


def _members(reply: object) -> list[bytes | str]:
    # redis-py types a sorted-set range as any reply (it may carry scores); without
    # ``withscores`` it is a list of members.
    return cast("list[bytes | str]", reply)
