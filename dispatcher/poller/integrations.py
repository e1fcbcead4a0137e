"""The integration registry: which customer integrations to poll.

Integrations come from ``KOMBO_INTEGRATION_IDS`` and from a set in Redis managed with
``dispatcher integrations add|remove``, so a thousand customers need no giant environment
variable. Any of them can be paused and resumed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from dispatcher._text import as_str
from dispatcher.store.keys import Keys
from dispatcher.store.sweeps import SweepRecord

__all__ = ["IntegrationRegistry", "RegisteredIntegration", "check_integration_id"]

# Kombo's ids look like "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"; be liberal but refuse what
# would break key names or logs (whitespace, control characters).
_INTEGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")


def check_integration_id(value: str) -> str:
    """Return ``value`` if it can be an integration id, else raise ValueError naming it."""
    # fullmatch: a "$" would let a trailing newline through.
    if not _INTEGRATION_ID.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an integration id (expected something like greenhouse:HWUT…)"
        )
    return value


@dataclass(frozen=True, slots=True)
class RegisteredIntegration:
    integration_id: str
    source: str  # "env", "redis" or "env+redis"
    paused: bool


class IntegrationRegistry:
    """The configured integrations: the environment's plus Redis's, minus the paused ones."""

    def __init__(self, redis: Redis, keys: Keys, configured: Sequence[str] = ()) -> None:
        self.redis = redis
        self.keys = keys
        self.configured = list(configured)

    def add(self, integration_ids: Sequence[str]) -> int:
        """Register integrations; returns how many were new."""
        ids = [check_integration_id(i) for i in integration_ids]
        return int(self.redis.sadd(self.keys.integrations, *ids)) if ids else 0

    def remove(self, integration_ids: Sequence[str]) -> int:
        """Unregister integrations (their seen orders stay remembered)."""
        if not integration_ids:
            return 0
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self.keys.integrations, *integration_ids)
            pipe.srem(self.keys.paused, *integration_ids)
            pipe.zrem(self.keys.schedule, *integration_ids)
            removed, *_ = pipe.execute()
        return int(removed)

    def drop_sweep_records(self, integration_ids: Sequence[str]) -> list[str]:
        """Drop what the pollers recorded about integrations no longer polled (the sweep
        hash, schedule entry, lease and pause); returns the ids that had a sweep record.

        Their seen orders stay remembered: added back, an integration dispatches no order
        twice. For ids neither configured nor registered (a typo polled once), which
        ``status`` would otherwise keep listing with their last error.
        """
        if not integration_ids:
            return []
        with self.redis.pipeline(transaction=True) as pipe:
            for integration_id in integration_ids:
                pipe.delete(self.keys.sweep(integration_id))
                pipe.delete(self.keys.lease(integration_id))
            pipe.srem(self.keys.swept_integrations, *integration_ids)
            pipe.srem(self.keys.paused, *integration_ids)
            pipe.zrem(self.keys.schedule, *integration_ids)
            replies = pipe.execute()
        had = replies[0 : 2 * len(integration_ids) : 2]
        return [i for i, deleted in zip(integration_ids, had, strict=True) if deleted]

    def pause(self, integration_ids: Sequence[str]) -> None:
        self.redis.sadd(self.keys.paused, *integration_ids)

    def resume(self, integration_ids: Sequence[str]) -> None:
        self.redis.srem(self.keys.paused, *integration_ids)

    def all(self) -> list[RegisteredIntegration]:
        """Every known integration with where it comes from and whether it is paused."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.integrations)
            pipe.smembers(self.keys.paused)
            registered_raw, paused_raw = pipe.execute()
        registered = {as_str(i) for i in registered_raw}
        paused = {as_str(i) for i in paused_raw}
        ordered = list(dict.fromkeys([*self.configured, *sorted(registered)]))
        result = []
        for integration_id in ordered:
            in_env = integration_id in self.configured
            in_redis = integration_id in registered
            source = "env+redis" if in_env and in_redis else ("env" if in_env else "redis")
            result.append(RegisteredIntegration(integration_id, source, integration_id in paused))
        return result

    def active(self) -> list[str]:
        """The integrations to sweep now."""
        return [i.integration_id for i in self.all() if not i.paused]

    def overview(self, now: float) -> list[dict[str, Any]]:
        """Every integration with its schedule, lease and last sweep: the rows of
        ``dispatcher integrations list`` (``--json`` prints them as they are)."""
        rows: list[dict[str, Any]] = []
        for entry in self.all():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zscore(self.keys.schedule, entry.integration_id)
                pipe.get(self.keys.lease(entry.integration_id))
                pipe.hgetall(self.keys.sweep(entry.integration_id))
                due, lease, raw_sweep = pipe.execute()
            sweep = SweepRecord.from_hash(raw_sweep)
            rows.append(
                {
                    "integration_id": entry.integration_id,
                    "source": entry.source,
                    "paused": entry.paused,
                    "next_sweep_in": round(float(due) - now, 1) if due is not None else None,
                    "lease": as_str(lease) if lease else None,
                    "consecutive_failures": sweep.consecutive_failures or 0,
                    "watermark": sweep.watermark,
                    "last_sweep_at": sweep.last_sweep_at,
                }
            )
        return rows
