"""Reading Redis and RQ's registries into a :class:`~dispatcher.ops.status.model.Snapshot`.

:func:`take_snapshot` costs a handful of round trips. Reading is side-effect free on the
dispatcher's keys; RQ's worker listing may drop dead workers from RQ's worker set, as
``rq info`` does. A key of the wrong type costs its own numbers, not the snapshot: it is
named as a :class:`~dispatcher.ops.status.model.BrokenKey`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError
from rq import Queue, Worker
from rq.job import Job
from rq.utils import str_to_date
from rq.worker import BaseWorker

from dispatcher._text import as_str
from dispatcher.logs import escape_controls
from dispatcher.ops.results import StaleOrders, stale_orders
from dispatcher.ops.status.model import (
    FAILING,
    NEVER_SWEPT,
    OK,
    PAUSED,
    STALE,
    BrokenKey,
    IntegrationStatus,
    QueueStatus,
    Snapshot,
    StepCounts,
    SweepError,
    Unconfirmed,
    WorkerStatus,
)
from dispatcher.ops.status.problems import with_problems
from dispatcher.poller.telemetry import read_request_series
from dispatcher.settings import Settings
from dispatcher.store import throughput
from dispatcher.store.connection import ServerCheck, check_server
from dispatcher.store.fair import FairFeed
from dispatcher.store.key_types import shared_keys
from dispatcher.store.keys import Keys
from dispatcher.store.reconcile_state import read_state
from dispatcher.store.results import Outbox
from dispatcher.store.rq_internals import (
    JOB_SERIALIZER,
    canceled_key,
    deferred_key,
    failed_key,
    finished_key,
    job_key,
    scheduled_key,
    started_key,
    workers_key,
)
from dispatcher.store.rq_internals import queue_key as rq_queue_key
from dispatcher.store.sweeps import SweepRecord
from dispatcher.store.wrongtype import describe, find_wrong_types

__all__ = ["take_snapshot"]


def take_snapshot(redis: Redis, settings: Settings, *, now: float | None = None) -> Snapshot:
    """Read the dispatcher's state for ``settings.namespace`` and ``settings.queue``.

    Costs four pipelined round trips plus, for RQ's workers, one per queue and two per worker.
    """
    keys = Keys(settings.namespace)
    # Every queue the dispatcher runs: the orders and the results queue (as `rq info` lists).
    queues = [
        Queue(name, connection=redis, serializer=JOB_SERIALIZER) for name in _queue_names(settings)
    ]
    taken_at = time.time() if now is None else now
    live = f"({int(taken_at)}"
    refused = _Refused()
    with _Reads(redis, refused) as read:
        read(keys.seen_integrations, "set", set()).smembers(keys.seen_integrations)
        read(keys.swept_integrations, "set", set()).smembers(keys.swept_integrations)
        read(keys.integrations, "set", set()).smembers(keys.integrations)
        read(keys.stats, "hash", None).hget(keys.stats, "orders_dispatched")
        read(keys.step_stats, "hash", {}).hgetall(keys.step_stats)
        read(keys.kombo_requests, "hash", {}).hgetall(keys.kombo_requests)
        for queue in queues:
            _read_queue(read, queue, live)
        (
            seen_ids,
            swept_ids,
            registered_ids,
            dispatched,
            step_stats,
            requests,
            *queue_counts,
        ) = read.execute()
    per_queue = [
        queue_counts[_PER_QUEUE * index : _PER_QUEUE * (index + 1)] for index in range(len(queues))
    ]
    configured = [*settings.kombo_integration_ids, *(as_str(i) for i in registered_ids)]
    integration_ids = sorted(
        set(configured) | {as_str(i) for i in seen_ids} | {as_str(i) for i in swept_ids}
    )
    with _Reads(redis, refused) as read:
        for integration_id in integration_ids:
            seen, sweep, lease = (f(integration_id) for f in (keys.seen, keys.sweep, keys.lease))
            results = keys.results(integration_id)
            read(seen, "hash", 0, integration_id).hlen(seen)
            read(sweep, "hash", {}, integration_id).hgetall(sweep)
            read(lease, "string", None, integration_id).get(lease)
            read(keys.schedule, "zset", None).zscore(keys.schedule, integration_id)
            read(keys.paused, "set", False).sismember(keys.paused, integration_id)
            read(results, "hash", 0, integration_id).hlen(results)
        for counts in per_queue:
            # A missing job reads as None: the same answer as "no such job".
            head, newest_failed = counts[1], counts[-1]
            head_job = job_key(as_str(head or b"-"))
            read(head_job, "hash", None).hget(head_job, "enqueued_at")
            failed_job = job_key(as_str(newest_failed[0] if newest_failed else b"-"))
            read(failed_job, "hash", None).hget(failed_job, "ended_at")
        answers = read.execute()
    per_integration = answers[: _PER_INTEGRATION * len(integration_ids)]
    job_times = answers[_PER_INTEGRATION * len(integration_ids) :]
    workers = _workers(queues, refused)
    broken = refused.explain(redis)
    broken += _unread_broken(
        redis, settings, keys, queues[0].key, taken_at, {b.key for b in broken}
    )
    integrations = tuple(
        _integration(
            integration_id,
            int(per_integration[_PER_INTEGRATION * index]),
            per_integration[_PER_INTEGRATION * index + 1],
            fleet=per_integration[_PER_INTEGRATION * index + 2 : _PER_INTEGRATION * (index + 1)],
            configured=(integration_id in configured) if configured else None,
            now=taken_at,
            stale_after=3 * settings.poll_interval + 60,
            broken=tuple(b.key for b in broken if b.integration_id == integration_id),
        )
        for index, integration_id in enumerate(integration_ids)
    )
    queue_statuses = tuple(
        _queue_status(
            queue.name,
            "orders" if index == 0 else "results",
            counts,
            job_times[2 * index : 2 * index + 2],
        )
        for index, (queue, counts) in enumerate(zip(queues, per_queue, strict=True))
    )
    # The orders waiting for their turn on their integration's list (dispatcher.store.fair)
    # are queued too: the worker queue holds a window of them at a time.
    if queue_statuses:
        queue_statuses = (_with_waiting(redis, keys, settings, queue_statuses[0]),
                          *queue_statuses[1:])  # fmt: skip
    snapshot = Snapshot(
        taken_at=taken_at,
        namespace=settings.namespace,
        queues=queue_statuses,
        workers=workers,
        orders_seen=sum(i.remembered for i in integrations),
        orders_dispatched=int(dispatched or 0),
        integrations=integrations,
        handlers=_step_counts(step_stats),
        kombo_requests=tuple(read_request_series(requests)),
        problems=(),
        broken_keys=broken,
        results=_results(redis, settings, keys, taken_at),
        stale=_stale(redis, settings, keys, taken_at),
        result_stats=_result_stats(redis, keys),
        server=_server(redis),
        reconcile=_reconcile(redis, keys),
        webhook_unconfirmed=_unconfirmed(redis, keys, taken_at),
    )
    return with_problems(snapshot, settings.stale_after)


# Answers per queue in the snapshot's first pipeline: queued, head job id, started,
# scheduled, deferred, finished, failed, canceled, newest failed job id.
_PER_QUEUE = 9


def _queue_names(settings: Settings) -> list[str]:
    return list(dict.fromkeys([settings.queue, settings.results_queue]))


def _read_queue(read: _Reads, queue: Queue, live: str) -> None:
    """Queue one queue's reads (:data:`_PER_QUEUE` answers)."""
    read(queue.key, "list", 0).llen(queue.key)
    read(queue.key, "list", None).lindex(queue.key, 0)
    for key in (started_key(queue.name), scheduled_key(queue.name), deferred_key(queue.name)):
        read(key, "zset", 0).zcard(key)
    # Finished, failed and canceled entries are scored by their expiry: count the live ones.
    for key in (finished_key(queue.name), failed_key(queue.name), canceled_key(queue.name)):
        read(key, "zset", 0).zcount(key, live, "+inf")
    failed_registry = failed_key(queue.name)
    read(failed_registry, "zset", []).zrevrange(failed_registry, 0, 0)


def _with_waiting(redis: Redis, keys: Keys, settings: Settings, orders: QueueStatus) -> QueueStatus:
    """The orders queue's status counting the orders waiting for their turn on their
    integrations' lists (dispatcher.store.fair) as queued, the oldest of them included."""
    backlog = FairFeed(redis, keys, settings.queue).backlog()
    if not backlog:
        return orders
    with redis.pipeline(transaction=False) as pipe:
        for _, head in backlog.values():
            pipe.hget(job_key(head), "enqueued_at")
        times = [
            _rq_time(t) for t in pipe.execute(raise_on_error=False) if not isinstance(t, Exception)
        ]
    oldest = min([t for t in [orders.oldest_queued_at, *times] if t is not None], default=None)
    waiting = sum(count for count, _ in backlog.values())
    return replace(orders, queued=orders.queued + waiting, oldest_queued_at=oldest)


def _queue_status(
    name: str, kind: str, counts: Sequence[Any], job_times: Sequence[Any]
) -> QueueStatus:
    queued, _, started, scheduled, deferred, finished, failed, canceled, _ = counts
    head_enqueued, newest_failed_ended = job_times
    return QueueStatus(
        name=name,
        queued=int(queued),
        started=int(started),
        scheduled=int(scheduled),
        deferred=int(deferred),
        finished=int(finished),
        failed=int(failed),
        canceled=int(canceled),
        oldest_queued_at=_rq_time(head_enqueued),
        last_failed_at=_rq_time(newest_failed_ended),
        kind=kind,
    )


def _unread_broken(
    redis: Redis, settings: Settings, keys: Keys, queue_key: str, now: float, known: set[str]
) -> tuple[BrokenKey, ...]:
    """The shared keys of the wrong type that the reads above do not touch: the outbox's
    indexes, the results queue, the result stats, the provisioned set, the throughput hashes
    of the console's chart. Their readers below answer ``None`` on a refusal; this names why.
    """
    expected = shared_keys(
        keys, queue_key, results_queue_key=rq_queue_key(settings.results_queue), now=now
    )
    hour = int(now) // 3600
    for past in range(hour - throughput.WINDOW_MINUTES // 60, hour):
        expected[keys.throughput(past)] = "hash"
    try:
        wrong = find_wrong_types(redis, {k: v for k, v in expected.items() if k not in known})
    except ResponseError:  # TYPE refused (an ACL): the refused reads above still show
        return ()
    return tuple(BrokenKey(w.key, None, str(w)) for w in wrong)


def _results(redis: Redis, settings: Settings, keys: Keys, now: float) -> dict[str, int] | None:
    try:
        return Outbox(
            redis,
            keys.namespace,
            settings.results_queue,
            result_ttl=settings.result_ttl,
            clock=lambda: now,
        ).counts()
    except ResponseError:  # a key of the wrong type: shown by the broken-key checks
        return None


def _reconcile(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    try:
        return read_state(redis, keys)
    except ResponseError:  # a key of the wrong type: shown by the broken-key checks
        return None


def _unconfirmed(redis: Redis, keys: Keys, now: float) -> Unconfirmed | None:
    """Two commands, whatever the number of orders: the count is the hash's (the truth), the
    oldest's receiving time the index's first (written with each entry, confirm.py)."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.hlen(keys.webhook_unconfirmed)
            pipe.zrange(keys.webhook_unconfirmed_since, 0, 0, withscores=True)
            count, oldest = pipe.execute()
    except ResponseError:  # a key of the wrong type
        return None
    age = max(0.0, now - float(oldest[0][1])) if count and oldest else None
    return Unconfirmed(int(count), age)


def _result_stats(redis: Redis, keys: Keys) -> dict[str, dict[str, float]] | None:
    try:
        raw = redis.hgetall(keys.result_stats)
    except ResponseError:
        return None
    stats: dict[str, dict[str, float]] = {}
    for raw_field, value in raw.items():
        integration, _, name = as_str(raw_field).partition("|")
        try:
            stats.setdefault(integration, {})[name] = float(value)
        except ValueError:
            continue
    return stats


def _stale(redis: Redis, settings: Settings, keys: Keys, now: float) -> StaleOrders | None:
    try:
        return stale_orders(redis, keys, settings.stale_after, now=now)
    except ResponseError:
        return None


def _server(redis: Redis) -> ServerCheck:
    try:
        return check_server(redis)
    except ResponseError:  # INFO refused (an ACL): nothing to judge by
        return ServerCheck()


class _Refused:
    """Keys Redis refused to read while taking a snapshot (key -> expected type, integration,
    the error): the snapshot shows the rest, and one problem per key."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, str | None, ResponseError]] = {}

    def add(self, key: str, kind: str, integration_id: str | None, exc: ResponseError) -> None:
        self.keys.setdefault(key, (kind, integration_id, exc))

    def explain(self, redis: Redis) -> tuple[BrokenKey, ...]:
        if not self.keys:
            return ()
        wrong = {w.key: w for w in find_wrong_types(redis, {k: v[0] for k, v in self.keys.items()})}
        return tuple(
            BrokenKey(
                key,
                integration_id,
                str(wrong[key])
                if key in wrong
                else f"key {escape_controls(key)}: {describe(exc, [])}",
            )
            for key, (_, integration_id, exc) in self.keys.items()
        )


class _Reads:
    """One pipeline of reads, each with its key, the key's type and the answer that stands in
    when Redis refuses it: a key of the wrong type costs its own numbers, not the snapshot."""

    def __init__(self, redis: Redis, refused: _Refused) -> None:
        self._pipe = redis.pipeline(transaction=False)
        self._refused = refused
        self._reads: list[tuple[str, str, Any, str | None]] = []

    def __enter__(self) -> _Reads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pipe.reset()

    def __call__(
        self, key: str, kind: str, default: Any, integration_id: str | None = None
    ) -> Pipeline:
        """Declare the next command's key; returns the pipeline to queue the command on."""
        self._reads.append((key, kind, default, integration_id))
        return self._pipe

    def execute(self) -> list[Any]:
        # Connection errors still raise (Redis is away: nothing to show); refusals come back
        # as replies.
        replies = self._pipe.execute(raise_on_error=False)
        answers = []
        for (key, kind, default, integration_id), reply in zip(self._reads, replies, strict=True):
            if isinstance(reply, ResponseError):
                self._refused.add(key, kind, integration_id, reply)
                answers.append(default)
            else:
                answers.append(reply)
        return answers


# Answers per integration in the snapshot's second pipeline: seen count, sweep hash, lease,
# due time, paused, results written.
_PER_INTEGRATION = 6


def _integration(
    integration_id: str,
    remembered: int,
    raw: Mapping[bytes, bytes],
    *,
    fleet: Sequence[Any] = (None, None, False, 0),
    configured: bool | None,
    now: float,
    stale_after: float,
    broken: tuple[str, ...] = (),
) -> IntegrationStatus:
    sweep = SweepRecord.from_hash(raw)
    lease, due, paused, results = fleet
    last_sweep_at = sweep.last_sweep_at
    last_error_at = sweep.last_error_at
    error: SweepError | None = None
    if sweep.last_error:
        code = sweep.last_error_code or None
        error = SweepError(
            code, _error_message(integration_id, code, sweep.last_error), last_error_at
        )
    if broken:
        state = FAILING  # whatever was recorded, the poller cannot work with this key
    elif paused:
        state = PAUSED
    elif not raw:
        state = NEVER_SWEPT
    elif error is not None and (last_sweep_at is None or (last_error_at or 0) >= last_sweep_at):
        state = FAILING
    elif last_sweep_at is None or now - last_sweep_at > stale_after:
        state = STALE
    else:
        state = OK
    return IntegrationStatus(
        integration_id=integration_id,
        state=state,
        configured=configured,
        remembered=remembered,
        last_sweep_at=last_sweep_at,
        last_attempt_at=sweep.last_attempt_at,
        duration=sweep.duration,
        orders_seen=sweep.orders_seen,
        orders_new=sweep.orders_new,
        pages=sweep.pages,
        error_count=sweep.error_count or 0,
        last_error=error,
        paused=bool(paused),
        lease=as_str(lease) if lease is not None else None,
        next_sweep_at=float(due) if due is not None else None,
        consecutive_failures=sweep.consecutive_failures or 0,
        watermark=sweep.watermark,
        last_sweep_kind=sweep.last_sweep_kind,
        results_written=int(results or 0),
        broken_keys=broken,
        invalid_orders=sweep.invalid_orders or 0,
        last_invalid_order=(
            SweepError("INVALID_ORDER", sweep.last_invalid_order, sweep.last_invalid_at)
            if sweep.last_invalid_order
            else None
        ),
    )


def _error_message(integration_id: str, code: str | None, text: str) -> str:
    # The poller stores the exception's line, "integration X: CODE: message"; the integration
    # and the code are shown in their own columns.
    text = text.removeprefix(f"integration {integration_id}: ")
    if code:
        text = text.removeprefix(f"{code}: ")
    return text


def _workers(queues: Sequence[Queue], refused: _Refused) -> tuple[WorkerStatus, ...]:
    found: dict[str, BaseWorker] = {}
    for queue in queues:
        try:
            found.update((w.name, w) for w in Worker.all(queue=queue))
        except ResponseError as exc:
            # RQ reads its worker set, then each worker's hash: the set is the likely culprit.
            refused.add(workers_key(queue.name), "set", None, exc)
    if not found:
        return ()
    try:
        return _read_workers(queues[0].connection, sorted(found.values(), key=lambda w: w.name))
    except ResponseError as exc:
        refused.add(workers_key(queues[0].name), "set", None, exc)
        return ()


def _read_workers(redis: Redis, workers: list[BaseWorker]) -> tuple[WorkerStatus, ...]:
    current = {w.name: w.get_current_job_id() for w in workers}
    job_ids = [job_id for job_id in current.values() if job_id]
    jobs = {
        job.id: job
        for job in (
            Job.fetch_many(job_ids, connection=redis, serializer=JOB_SERIALIZER) if job_ids else []
        )
        if job is not None
    }
    result = []
    for worker in workers:
        job_id = current[worker.name]
        job = jobs.get(job_id) if job_id else None
        meta = job.meta if job is not None else {}
        result.append(
            WorkerStatus(
                name=worker.name,
                state=str(worker.get_state()),
                hostname=worker.hostname,
                pid=worker.pid,
                queues=tuple(worker.queue_names()),
                last_heartbeat=(
                    worker.last_heartbeat.timestamp() if worker.last_heartbeat else None
                ),
                successful_jobs=worker.successful_job_count,
                failed_jobs=worker.failed_job_count,
                current_job_id=job_id,
                current_order_id=meta.get("order_id"),
                current_integration_id=meta.get("integration_id"),
            )
        )
    return tuple(result)


def _step_counts(raw: Mapping[bytes, bytes]) -> dict[str, StepCounts]:
    found: dict[str, dict[str, int]] = {}
    for raw_field, raw_value in raw.items():
        handler, _, outcome = as_str(raw_field).rpartition(":")
        if handler and outcome in {"completed", "failed"}:
            found.setdefault(handler, {})[outcome] = int(raw_value)
    return {
        name: StepCounts(completed=c.get("completed", 0), failed=c.get("failed", 0))
        for name, c in sorted(found.items())
    }


def _rq_time(value: bytes | str | None) -> float | None:
    if not value:
        return None
    try:
        return str_to_date(value).timestamp()
    except ValueError:
        return None
