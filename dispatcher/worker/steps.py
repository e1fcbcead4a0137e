"""The step records of one order: each completed step of its handler chain, with its output,
recorded in Redis (``{ns}:steps:{integration}:{order}``) before the next step starts, the
attempts counted, and each step's sub-effects (``HandlerContext.effects``).

A retried or re-delivered job skips the recorded steps and hands their outputs to the later
ones (dispatcher.worker.jobs). The threaded worker reads the record when it starts a job, in
the start's round trip (:func:`steps_read`, dispatcher.store.rq_jobs.start).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from redis import Redis
from rq.job import Job

from dispatcher._text import as_str
from dispatcher.logs import escape_controls
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.store.lua import script
from dispatcher.store.replication import ReplicaAck, run_script
from dispatcher.store.rq_jobs import PendingFinish, StepsRead

__all__ = [
    "MemoryEffects",
    "StepStore",
    "keep_steps_read",
    "step_key",
    "steps_read",
    "steps_read_at_start",
]


def step_key(namespace: str, integration_id: str, order_id: str, handler: str) -> str:
    """The idempotency key of one step: stable across attempts, unique per (step, order)."""
    material = "\x00".join((namespace, integration_id, order_id, handler)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


# A field of the steps hash that is not a handler: handler names cannot start with "_"
# (entry point names can, but the built-ins and the docs do not; see plugins.check_handler).
_ATTEMPTS = "_attempts"


def steps_read(job: Job, settings: Settings) -> StepsRead | None:
    """What a worker reads of ``job``'s order when it starts it (the first read of
    :meth:`StepStore.begin`, in the start's round trip: dispatcher.store.rq_jobs.start), or
    None when the job is not an order of this worker's namespace."""
    if job.func_name != JOB_FUNCTION:
        return None
    meta: dict[str, Any] = job.meta or {}
    order_id, integration_id = meta.get("order_id"), meta.get("integration_id")
    if not isinstance(order_id, str) or not isinstance(integration_id, str):
        return None
    try:
        namespace = job.kwargs.get("namespace")
    except Exception:  # an unreadable payload fails the job later, with RQ's own report
        return None
    if namespace is not None and namespace != settings.namespace:
        return None  # the job refuses it (ForeignNamespace): no record under our keys
    key = Keys(settings.namespace).steps(integration_id, order_id)
    return StepsRead(key, _ATTEMPTS, settings.result_ttl)


def keep_steps_read(job: Job, steps: StepsRead, flat: list[Any]) -> None:
    """Hand the steps hash read at the job's start to its run (see :func:`steps_read`)."""
    job._dispatcher_steps = (steps.key, flat)  # type: ignore[attr-defined]


def steps_read_at_start(job: Job | None, key: str) -> list[Any] | None:
    """The steps hash read at the job's start for ``key``, taken (None when not read)."""
    read: tuple[str, list[Any]] | None = getattr(job, "_dispatcher_steps", None)
    if read is None or read[0] != key:
        return None
    job._dispatcher_steps = None  # type: ignore[union-attr]  # a retry in this process reads again
    return read[1]


# A step recorded with its TTL and counted, in one script (KEYS and ARGV in its file); the
# chain's last step with the chain's end (timeline.chain_done) in the same script.
_COMPLETE = script("step_complete")
_BEGIN = script("step_begin")
_COMPLETE_LAST = script("step_complete_last")


class StepStore:
    """The step records of one order in Redis, and its sub-effect sets."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        integration_id: str,
        order_id: str,
        ttl: int,
        *,
        ack: ReplicaAck | None = None,
    ) -> None:
        self.redis = redis
        self.ack = ack
        self.keys = keys
        self.integration_id = integration_id
        self.order_id = order_id
        self.ttl = ttl
        self.key = keys.steps(integration_id, order_id)
        self._deferred: list[tuple[Any, ...]] = []

    def begin(self, flat: list[Any] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
        """Count this attempt; return its number and the outputs of every step already
        completed, by handler name (one round trip; none when ``flat``, the hash as the
        worker read it when it started the job, is given)."""
        if flat is None:
            flat = _BEGIN(self.redis, [self.key], [_ATTEMPTS, self.ttl])
        attempt, outputs = 0, {}
        for name, value in zip(flat[::2], flat[1::2], strict=True):
            handler = as_str(name)
            if handler == _ATTEMPTS:
                attempt = int(value)
            else:
                outputs[handler] = json.loads(value)["output"]
        return attempt, outputs

    def defer(self, *command: Any) -> None:
        """Send ``command`` (its words) with the store's next write, in its round trip."""
        self._deferred.append(command)

    def flush(self) -> None:
        """Send the deferred commands now, if any."""
        if self._deferred:
            with self.redis.pipeline(transaction=False) as pipe:
                for command in self._take_deferred():
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                pipe.execute()

    def _take_deferred(self) -> list[tuple[Any, ...]]:
        deferred, self._deferred = self._deferred, []
        return deferred

    def complete(
        self,
        handler: str,
        output: Mapping[str, Any],
        *,
        chain_end: tuple[list[str], list[Any]] | None = None,
        finish: tuple[PendingFinish, Any] | None = None,
        completed_at: float | None = None,
    ) -> None:
        """Record a completed step and its output (one round trip; with ``ack``, the
        replicas' acknowledgement rides in it too, see dispatcher.store.replication).

        ``chain_end``, the keys and arguments of :func:`dispatcher.store.timeline.chain_done`,
        says the step is the last of the chain: the chain's end is recorded in the same
        script (its timeline event and provisioned mark, what ``mark_provisioned`` writes).

        ``finish``, the job's pending success and the value the job returns: the success is
        recorded in the same round trip, after the record (without ``ack``: a success must
        not be written before the replicas' acknowledgement is judged).

        ``completed_at``: the step's time (now by default); the last step's is the chain
        end's too, so that the end never sorts before its step."""
        at = completed_at if completed_at is not None else round(time.time(), 3)
        record = json.dumps({"output": output, "completed_at": at})
        keys = [self.key, self.keys.step_stats]
        args: list[Any] = [handler, record, self.ttl, f"{handler}:completed"]
        if chain_end is not None:
            keys, args = keys + chain_end[0], args + chain_end[1]
        pending = finish[0] if finish is not None and self.ack is None else None
        run_script(
            self.redis,
            _COMPLETE if chain_end is None else _COMPLETE_LAST,
            keys,
            args,
            ack=self.ack,
            what=f"step {handler} of order {escape_controls(self.order_id)}",
            integration_id=None if chain_end is None else self.integration_id,
            then=self._take_deferred(),
            last=() if pending is None else pending.after_step(self.key, handler, finish[1]),  # type: ignore[index]
            on_last=None if pending is None else pending.settle,
        )

    def failed(self, handler: str) -> None:
        self.defer("HINCRBY", self.keys.step_stats, f"{handler}:failed", 1)
        self.flush()

    def effects(self, handler: str) -> _RedisEffects:
        return _RedisEffects(
            self.redis, self.keys.effects(self.integration_id, self.order_id, handler), self.ttl
        )


class _RedisEffects:
    def __init__(self, redis: Redis, key: str, ttl: int) -> None:
        self._redis = redis
        self._key = key
        self._ttl = ttl

    def done(self, name: str) -> bool:
        return bool(self._redis.sismember(self._key, name))

    def record(self, name: str) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._key, name)
            if self._ttl > 0:
                pipe.expire(self._key, self._ttl)
            pipe.execute()


class MemoryEffects:
    """Effects of a run outside RQ (no Redis): remembered for this call only."""

    def __init__(self) -> None:
        self._done: set[str] = set()

    def done(self, name: str) -> bool:
        return name in self._done

    def record(self, name: str) -> None:
        self._done.add(name)
