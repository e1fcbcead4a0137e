"""Writes that count only once replicas hold them (``DISPATCHER_REDIS_MIN_REPLICAS_ACK``).

Redis replicates asynchronously: a primary that dies a moment after a write may take the
write with it, and Sentinel promotes a replica that never saw it (docs/design.md, "Failover").
With ``DISPATCHER_REDIS_MIN_REPLICAS_ACK=N`` the dedupe script and the step records are each
followed by ``WAIT N timeout`` *on the same connection* (WAIT counts the replicas that hold
this connection's writes, so it must follow them there): one pipeline, one round trip. Fewer
acknowledgements than N within ``DISPATCHER_REDIS_REPLICAS_ACK_TIMEOUT`` raise
:class:`ReplicasNotAcknowledged`, a ``RedisError``: the poller records a failed sweep and
tries again, the webhook answers 503 (Kombo delivers again, then gets the replay's answer),
a job is retried (the step record, if it survives, skips the step; if not, the step runs
again under the same idempotency key).

The write itself is not undone (Redis cannot): WAIT makes loss visible, not impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from dispatcher.settings import Settings
from dispatcher.store.lua import LuaScript

__all__ = ["ReplicaAck", "ReplicasNotAcknowledged", "run_script"]


class ReplicasNotAcknowledged(RedisError):
    """Fewer replicas than required acknowledged a write in time (retryable)."""


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """How many replicas must hold a write, and how long to wait for them."""

    replicas: int
    timeout: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicaAck | None:
        if settings.redis_min_replicas_ack <= 0:
            return None
        return cls(settings.redis_min_replicas_ack, settings.redis_replicas_ack_timeout)

    def check(self, acknowledged: int, what: str) -> None:
        if acknowledged < self.replicas:
            raise ReplicasNotAcknowledged(
                f"{what}: {acknowledged} of {self.replicas} replica(s) acknowledged within "
                f"{self.timeout:g} s (DISPATCHER_REDIS_MIN_REPLICAS_ACK): not counted as "
                "done, will be retried"
            )


def run_script(
    redis: Redis,
    script: LuaScript,
    keys: list[str],
    args: list[Any],
    *,
    ack: ReplicaAck | None = None,
    what: str = "write",
    integration_id: str | None = None,
    then: Sequence[Sequence[Any]] = (),
    last: Sequence[Sequence[Any]] = (),
    on_last: Callable[[list[Any]], None] | None = None,
) -> Any:
    """Run ``script`` (dispatcher.store.lua), then the commands ``then`` (each a command's
    words), then those of ``last`` and, with ``ack``, WAIT for the replicas, all in the same
    round trip; returns the script's answer.

    ``on_last`` gets the replies of ``last`` (errors returned, not raised: it judges them)
    before anything is raised, and first those of a round that ran before the server had the
    script (see LuaScript.followed_by), since they ran too.

    Errors of the script itself (a WRONGTYPE answer, raised as WrongKeyTypeError naming the
    key) are raised as they are, before any acknowledgement is judged; then those of
    ``then``.
    """
    if ack is None and not then and not last:
        return script(redis, keys, args, integration_id=integration_id)
    wait = () if ack is None else (("WAIT", ack.replicas, max(1, int(ack.timeout * 1000))),)
    repeated: list[list[Any]] = []
    answer, *replies = script.followed_by(redis, keys, args, *then, *last, *wait, repeated=repeated)
    if on_last is not None:
        tail = slice(len(then), len(then) + len(last))
        for earlier in repeated:
            on_last(earlier[tail])
        on_last(replies[tail])
    if isinstance(answer, Exception):
        with script.checked(keys, integration_id):
            raise answer
    for reply in replies[: len(then)]:
        if isinstance(reply, Exception):
            raise reply
    if ack is not None:
        ack.check(int(replies[-1]), what)
    return answer
