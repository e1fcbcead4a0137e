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

import hashlib
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, RedisError

from dispatcher.settings import Settings

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
    script: str,
    keys: list[str],
    args: list[Any],
    *,
    ack: ReplicaAck | None = None,
    what: str = "write",
    sha: str | None = None,
) -> Any:
    """EVALSHA ``script`` (EVAL when the server lacks it) and, with ``ack``, WAIT for the
    replicas in the same round trip; returns the script's answer.

    Errors of the script itself (a WRONGTYPE answer) are raised as they are, before any
    acknowledgement is judged.
    """
    sha = sha or hashlib.sha1(script.encode()).hexdigest()
    if ack is None:
        try:
            return redis.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs and caches the script in one round trip (redis-py's Script would
            # spend two: SCRIPT LOAD, then EVALSHA again).
            return redis.eval(script, len(keys), *keys, *args)
    answer, acknowledged = _with_wait(redis, ack, "evalsha", sha, keys, args)
    if isinstance(answer, NoScriptError):
        answer, acknowledged = _with_wait(redis, ack, "eval", script, keys, args)
    if isinstance(answer, Exception):
        raise answer
    ack.check(int(acknowledged), what)
    return answer


def _with_wait(
    redis: Redis, ack: ReplicaAck, command: str, body: str, keys: list[str], args: list[Any]
) -> tuple[Any, Any]:
    with redis.pipeline(transaction=False) as pipe:
        getattr(pipe, command)(body, len(keys), *keys, *args)
        pipe.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", ack.replicas, max(1, int(ack.timeout * 1000))
        )
        answer, acknowledged = pipe.execute(raise_on_error=False)
    if isinstance(acknowledged, Exception):
        raise acknowledged
    return answer, acknowledged
