"""Fair dispatch between integrations, and the per-integration in-flight cap.

One customer's ATS may dump thousands of orders at once; on one queue, every other customer's
candidates would wait behind them. So the dispatch script (store/lua/ledger_dispatch.lua)
pushes each order's job on its integration's own list (``rq:queue:<queue>@<integration>``),
and a feeder moves jobs from those lists onto the worker queue in turn, one per integration
with orders waiting (the ring), keeping at most ``window`` jobs there. An order of another
integration then waits behind at most ``window`` jobs plus one turn of the ring: about one
handler duration on a fleet with more threads than that.

Every move is one Lua script (store/lua/_fair_feed.lua), so a job is always in exactly one
list: its integration's, the worker queue, RQ's intermediate list, or a registry. The feeder
runs where jobs come and go: in the dispatch script itself, after each job a worker takes
(:meth:`FairFeed.after_take`), when a capped job ends (:meth:`FairFeed.release`), and in each
worker's maintenance pass (:meth:`FairFeed.feed` with ``unpark``), which also repairs a queue
emptied by a lost feed. The reconciler (store/reconcile.py) counts the integration's list as a
place where a queued job lives.

The cap (``DISPATCHER_MAX_IN_FLIGHT_PER_INTEGRATION``, per-integration overrides): a capped
integration's job gets a lease (``{ns}:in-flight:<integration>``, job id -> expiry) when the
feeder moves it, renewed when a worker starts it and by its heartbeats, released when it
ends; a lease whose holder died expires. An integration at its cap leaves the ring for the
parked set, so its orders wait without blocking others and without anyone polling them; a
release or a maintenance pass that finds a lease expired puts it back. A job that reaches a
worker without a live lease (it was requeued after its worker died, and its lease expired
meanwhile) starts only if a lease is free; otherwise it goes back to the head of its list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from dispatcher import tunables
from dispatcher._text import as_str
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.lua import script
from dispatcher.store.rq_internals import (
    QUEUES_KEY,
    fair_list_key,
    first_seen_key,
    intermediate_key,
    job_key,
    queue_key,
)

__all__ = ["FairFeed", "FairOptions", "taken_jobs"]

_FEED = script("fair_feed")
_START = script("fair_start")
_RELEASE = script("fair_release")
_TAKE = script("fair_take")


@dataclass(frozen=True, slots=True)
class FairOptions:
    """How the feeder feeds: the queue's window and the in-flight caps (0: no cap)."""

    window: int = tunables.FAIR_WINDOW
    default_cap: int = 0
    caps: Mapping[str, int] = field(default_factory=dict)
    queued_lease_ttl: float = tunables.QUEUED_LEASE_TTL
    running_lease_ttl: float = tunables.RUNNING_LEASE_TTL

    @classmethod
    def from_settings(cls, settings: Settings) -> FairOptions:
        return cls(
            default_cap=settings.max_in_flight_per_integration or 0,
            caps=dict(settings.max_in_flight_overrides),
        )

    def cap(self, integration_id: str) -> int:
        """The integration's in-flight cap; 0 when it has none."""
        return self.caps.get(integration_id, self.default_cap)

    @property
    def any_cap(self) -> bool:
        return self.default_cap > 0 or any(cap > 0 for cap in self.caps.values())


class FairFeed:
    """The feeder of one worker queue (see module)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        queue: str,
        options: FairOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.queue = queue
        self.options = options or FairOptions()
        self._clock = clock

    def block(self) -> list[Any]:
        """The feed block of the scripts' arguments (see store/lua/_fair_feed.lua)."""
        options = self.options
        args: list[Any] = [
            options.window,
            fair_list_key(self.queue, ""),
            self.keys.in_flight(""),
            options.default_cap,
            int(options.queued_lease_ttl),
            len(options.caps),
        ]
        for integration_id, cap in options.caps.items():
            args.extend((integration_id, cap))
        return args

    def _feed_keys(self) -> list[str]:
        return [queue_key(self.queue), self.keys.fair_ring, self.keys.fair_parked, QUEUES_KEY]

    def feed(self, *, unpark: bool = False) -> int:
        """Top the worker queue up (first unparking the integrations back under their cap
        when ``unpark``); returns how many jobs moved."""
        args = [repr(self._clock()), "1" if unpark else "0", *self.block()]
        return int(_FEED(self.redis, self._feed_keys(), args))

    def after_take(self, job_id: str, integration_id: str | None) -> bool:
        """A worker took ``job_id`` off the queue: True when it may start it. For a capped
        integration, the job must hold (or get) a lease, else it goes back to the head of
        its integration's list (False). The queue is topped up either way."""
        if integration_id is None or self.options.cap(integration_id) <= 0:
            self.feed()
            return True
        now = self._clock()
        keys = [
            self.keys.in_flight(integration_id),
            intermediate_key(self.queue),
            first_seen_key(self.queue, job_id),
            fair_list_key(self.queue, integration_id),
            self.keys.fair_parked,
            QUEUES_KEY,
        ]
        expiry = now + self.options.running_lease_ttl
        args = [repr(now), self.options.cap(integration_id), job_id, repr(expiry), integration_id]
        started = int(_START(self.redis, keys, args, integration_id=integration_id))
        self.feed()
        return started != 0

    def take(self, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        """Up to ``count`` jobs off the worker queue into RQ's intermediate list, as RQ's pop
        moves them, each with its job hash (empty when gone), and the queue topped up: one
        round trip. Only without caps: a capped job must pass :meth:`after_take`."""
        return taken_jobs(_TAKE(self.redis, *self._take_words(count)))

    def take_command(self, count: int) -> tuple[Any, ...]:
        """:meth:`take` as a command's words, to send in a round trip of the caller's (its
        reply read by :func:`taken_jobs`)."""
        keys, args = self._take_words(count)
        return ("EVALSHA", _TAKE.sha, len(keys), *keys, *args)

    def _take_words(self, count: int) -> tuple[list[str], list[Any]]:
        keys = [
            queue_key(self.queue),
            intermediate_key(self.queue),
            self.keys.fair_ring,
            self.keys.fair_parked,
            QUEUES_KEY,
        ]
        return keys, [repr(self._clock()), count, job_key(""), *self.block()]

    def release(self, job_id: str, integration_id: str | None) -> None:
        """A capped integration's job is over (done, failed or waiting for a retry): its
        lease goes, and the queue is topped up (its integration may be unparked)."""
        if integration_id is None or self.options.cap(integration_id) <= 0:
            return
        keys = [*self._feed_keys(), self.keys.in_flight(integration_id)]
        args = [repr(self._clock()), job_id, integration_id, *self.block()]
        _RELEASE(self.redis, keys, args, integration_id=integration_id)

    def renew(self, pipeline: Any, job_id: str, integration_id: str | None) -> None:
        """Queue the renewal of a running job's lease on ``pipeline`` (its heartbeat)."""
        if integration_id is None or self.options.cap(integration_id) <= 0:
            return
        expiry = self._clock() + self.options.running_lease_ttl
        pipeline.zadd(self.keys.in_flight(integration_id), {job_id: expiry}, xx=True)

    def waiting(self) -> dict[str, int]:
        """Orders waiting for their turn, per integration with any (ring and parked)."""
        return {name: count for name, (count, _) in self.backlog().items()}

    def backlog(self) -> dict[str, tuple[int, str]]:
        """Per integration with orders waiting for their turn: how many, and the job id at
        the head of its list (the one waiting longest)."""
        ring = self.redis.lrange(self.keys.fair_ring, 0, -1)
        parked = self.redis.smembers(self.keys.fair_parked)
        names = list(dict.fromkeys(as_str(name) for name in [*ring, *parked]))
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(fair_list_key(self.queue, name))
                pipe.lindex(fair_list_key(self.queue, name), 0)
            answers = pipe.execute(raise_on_error=False)
        backlog: dict[str, tuple[int, str]] = {}
        for index, name in enumerate(names):
            count, head = answers[2 * index], answers[2 * index + 1]
            if isinstance(count, int) and count and isinstance(head, bytes | str):
                backlog[name] = (count, as_str(head))
        return backlog


def taken_jobs(answer: list[Any]) -> list[tuple[str, dict[bytes, bytes]]]:
    """The jobs a take moved (store/lua/fair_take.lua's answer): each id with its job hash."""
    taken: list[tuple[str, dict[bytes, bytes]]] = []
    for at in range(0, len(answer), 2):
        flat = answer[at + 1]
        taken.append((as_str(answer[at]), dict(zip(flat[::2], flat[1::2], strict=True))))
    return taken
