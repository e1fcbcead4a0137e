"""``dispatcher forget``: an order's every record removed, so that it is dispatched again as
new (:func:`forget_order`); refused while its job is queued or running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError
from rq.job import JobStatus

from dispatcher._text import as_str, glob_escape
from dispatcher.store.keys import Keys, job_id_for, order_ref
from dispatcher.store.rq_internals import (
    delete_job,
    job_key,
)

__all__ = ["ForgetRefused", "ForgetResult", "forget_order"]


class ForgetRefused(Exception):
    """The order cannot be forgotten now (unknown, or being worked on); the message says why."""


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What :func:`forget_order` removed."""

    was_seen: bool
    job_status: str | None
    steps: int
    effects: int
    result: str | None = None  # the state of the result record removed (pending, written...)
    unconfirmed: bool = False  # a webhook delivery waiting for Kombo's confirmation removed


_WATCH_RETRIES = 20


def forget_order(
    redis: Redis,
    namespace: str,
    queue_name: str,
    integration_id: str,
    order_id: str,
    *,
    handlers: Iterable[str] = (),
) -> ForgetResult:
    """Remove an order from the seen store, with its RQ job (hash, results, queue and registry
    entries), its step and effect records, and what its dispatch left on the way back (its
    outbox record and index entries, its timeline, its provisioned entry, a webhook delivery
    of it waiting for Kombo's confirmation), so that the next sweep dispatches it afresh. A
    final result recorded as written stays: Kombo has it.

    One MULTI/EXEC does it all, watching the job hash: a sweep running at the same time
    either finds the order still seen (before) or dispatches it again in full (after); a
    worker that takes the job meanwhile makes this retry and then refuse. Raises
    :class:`ForgetRefused` when the order is unknown or its job is being worked on.
    """
    keys = Keys(namespace)
    job_id = job_id_for(namespace, integration_id, order_id)
    job_hash = job_key(job_id)
    effect_keys = _effect_keys(redis, keys, integration_id, order_id, handlers)
    steps_key = keys.steps(integration_id, order_id)
    outbox_key = keys.outbox(integration_id, order_id)
    timeline_key = keys.timeline(integration_id, order_id)
    ref = order_ref(integration_id, order_id)
    for _ in range(_WATCH_RETRIES):
        with redis.pipeline(transaction=True) as pipe:
            try:
                # The outbox record too: a result submitted meanwhile is removed with the rest
                # or not at all.
                pipe.watch(job_hash, outbox_key)  # type: ignore[no-untyped-call]
                status = pipe.hget(job_hash, "status")
                seen = pipe.hexists(keys.seen(integration_id), order_id)
                steps = sum(1 for f in pipe.hkeys(steps_key) if not as_str(f).startswith("_"))
                effects = sum(pipe.exists(key) for key in effect_keys)
                result = pipe.hget(outbox_key, "state")
                timeline = pipe.exists(timeline_key)
                unconfirmed = pipe.hexists(keys.webhook_unconfirmed, ref)
                known = seen or status is not None or steps or effects or result or timeline
                if not (known or unconfirmed):
                    raise ForgetRefused(
                        f"order {order_id} is not known in integration {integration_id}"
                    )
                if status is not None and as_str(status) == JobStatus.STARTED.value:
                    raise ForgetRefused(
                        f"order {order_id} (integration {integration_id}) is being worked on "
                        f"right now (job {job_id}); try again when it has finished"
                    )
                pipe.multi()
                pipe.hdel(keys.seen(integration_id), order_id)
                delete_job(pipe, queue_name, job_id)
                pipe.delete(
                    steps_key,
                    keys.dispatched(integration_id, order_id),
                    *effect_keys,
                    outbox_key,
                    timeline_key,
                )
                for state in ("pending", "written", "failed"):
                    pipe.zrem(keys.outbox_index(state), ref)
                pipe.zrem(keys.provisioned, ref)
                # Else `dispatcher web` would confirm and dispatch it again later.
                pipe.hdel(keys.webhook_unconfirmed, ref)
                pipe.zrem(keys.webhook_unconfirmed_since, ref)
                pipe.execute()
            except WatchError:
                continue
        return ForgetResult(
            was_seen=bool(seen),
            job_status=None if status is None else as_str(status),
            steps=int(steps),
            effects=effects,
            result=None if result is None else as_str(result),
            unconfirmed=bool(unconfirmed),
        )
    raise ForgetRefused(
        f"order {order_id} (integration {integration_id}): its job kept changing; try again"
    )


def _effect_keys(
    redis: Redis, keys: Keys, integration_id: str, order_id: str, handlers: Iterable[str]
) -> list[str]:
    """The effect sets of the order: of the named handlers, of its recorded steps, and any
    other a SCAN finds (a handler may have left effects without completing its step)."""
    names = set(handlers) | {
        as_str(name) for name in redis.hkeys(keys.steps(integration_id, order_id))
    }
    found = {keys.effects(integration_id, order_id, name) for name in names}
    prefix = keys.effects(integration_id, order_id, "")
    # A glob's "*" also matches ':': the effects of another order whose key starts the same
    # (integration "a:b" order "c" after integration "a" order "b") are not this order's.
    # Handler names hold no ':', so this order's keys have none after the prefix.
    found.update(
        key
        for key in map(as_str, redis.scan_iter(match=glob_escape(prefix) + "*", count=1000))
        if ":" not in key[len(prefix) :]
    )
    return sorted(found)
