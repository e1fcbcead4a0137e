"""The ledger: which orders have been dispatched (the dedupe store), and the atomic
dedupe-and-enqueue step that the poller and the webhook receiver share.

Invariants (see docs/design.md):

- an order is marked seen in the same atomic Redis step (one Lua script) that writes its RQ
  job and pushes it on its integration's list (the fair feeder moves it to the queue, see
  dispatcher.store.fair): a crash never leaves one without the other, nor does a key
  of the wrong type (Redis does not roll back a script that fails part-way, so the script
  checks the type of every key before it writes any, and answers WrongKeyTypeError naming
  the key);
- two callers dispatching the same order at the same time enqueue it once (the script's
  ``HSETNX`` is the arbiter, not a prior read);
- a page costs at most three round trips, whatever its size: one ``HMGET`` to skip orders
  already seen (the common case on a re-sweep: no job is even built), one ``EVALSHA`` for the
  rest, plus one (``SCRIPT LOAD`` and ``EVALSHA`` again) when the server does not have the
  script cached (first use, or after a restart; see dispatcher.store.lua);
- the seen store holds ids and a timestamp, never payloads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import ResponseError
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now

from dispatcher import tracing, tunables
from dispatcher._text import as_str
from dispatcher.kombo.models import Order, OrderValidationError, RawOrder, RawOrders
from dispatcher.logs import escape_controls
from dispatcher.store.fair import FairFeed
from dispatcher.store.job_options import JobOptions, reconcile_window
from dispatcher.store.keys import Keys, job_id_for
from dispatcher.store.lua import script
from dispatcher.store.replication import run_script
from dispatcher.store.rq_internals import (
    JOB_OWN_FIELDS,
    JOB_SERIALIZER,
    QUEUES_KEY,
    fair_list_key,
    job_data,
    job_hash_items,
    job_key,
    queue_key,
)
from dispatcher.store.seen import REJECTED_PREFIX, mark_slack, parse_seen, seen_generation
from dispatcher.store.throughput import hour_key
from dispatcher.store.wrongtype import (
    WrongKeyTypeError,
    name_wrong_type,
)

__all__ = ["DispatchResult", "Ledger", "WrongKeyTypeError"]

JOB_FUNCTION = "dispatcher.worker.jobs.process_order"
_T = TypeVar("_T")

# The dedupe-and-enqueue step (KEYS and ARGV in its file): writing RQ's job hash, queue and
# queue set is store/lua/_rq_enqueue.lua's; the types of its keys are checked before anything
# is written (a WRONGTYPE part-way would leave an order seen but never enqueued).
_DISPATCH = script("ledger_dispatch")
_REJECT = script("ledger_reject")
_PRUNE = script("ledger_prune")


@dataclass(slots=True)
class DispatchResult:
    """What one dispatch call did: the order ids it enqueued, how many were already seen, and
    the new orders it left out because they failed validation (``invalid``)."""

    enqueued: list[str] = field(default_factory=list)
    already_seen: int = 0
    invalid: list[OrderValidationError] = field(default_factory=list)

    def __iadd__(self, other: DispatchResult) -> DispatchResult:
        self.enqueued.extend(other.enqueued)
        self.already_seen += other.already_seen
        self.invalid.extend(other.invalid)
        return self


class Ledger:
    """The dedupe store and the one function that turns new orders into RQ jobs."""

    def __init__(
        self,
        redis: Redis,
        queue: Queue,
        namespace: str,
        *,
        job_options: JobOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        # Its jobs are JSON (rq_internals.JOB_SERIALIZER): the queue reads them so, whatever
        # serializer the queue it was given has (RQ's default is pickle).
        if queue.serializer is not JOB_SERIALIZER:
            queue = Queue(queue.name, connection=queue.connection, serializer=JOB_SERIALIZER)
        self.queue = queue
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.job_options = job_options or JobOptions()
        self._clock = clock
        self.feeder = FairFeed(redis, self.keys, queue.name, self.job_options.fair, clock=clock)

    @property
    def record_ttl(self) -> int:
        """How long a dispatch record (the job's own items, for the reconciler) is kept: the
        reconciler's window, the shorter of the job's result and failure TTLs (a finished or
        failed job is still there to show for itself that long after its dispatch)."""
        return reconcile_window(self.job_options)

    def shared_job_items(self) -> list[Any]:
        """The job-hash items every job of this ledger shares (all but ``JOB_OWN_FIELDS``),
        status ``queued``, enqueued now: with a dispatch record's items, a whole job hash."""
        job = self._new_job(JOB_FUNCTION, {}, id="order-template", description="", meta={})
        return [
            item
            for key, value in _pairs(job_hash_items(job))
            if key not in JOB_OWN_FIELDS
            for item in (key, value)
        ]

    def job_id(self, integration_id: str, order_id: str) -> str:
        """The RQ job id of an order in this namespace."""
        return job_id_for(self.namespace, integration_id, order_id)

    def dispatch(
        self,
        integration_id: str,
        orders: Sequence[Order | RawOrder],
        *,
        generation: int | None = None,
        keep_generations: int = tunables.PRUNE_AFTER_SWEEPS,
        source: str = "poll",
        trace_parents: Mapping[str, Any] | None = None,
    ) -> DispatchResult:
        """Enqueue every order not seen before, atomically marking it seen; skip the rest.

        A :class:`RawOrder` (an order as Kombo sent it) is validated only if it was not seen
        before; an invalid one is left out, neither enqueued nor marked seen (so that it is
        dispatched once its ATS corrects it), and returned in ``invalid``: one order that
        can never validate must not hold up the orders beside it.
        ``generation`` is the number of the full sweep in progress, if any: orders it sees
        are marked with it, so that pruning never forgets an order that is still OPEN (see
        :meth:`prune`; a mark is renewed only when it is about to fall out of the
        ``keep_generations`` window, which spares most full sweeps a write per order).
        Safe to call concurrently from any number of processes with overlapping orders.
        With tracing on, each new order's ``dispatch`` span starts its trace (a child of
        ``trace_parents[order_id]`` when given: the webhook request) and its job carries it.
        """
        if not orders:
            return DispatchResult()
        # RawOrders know their ids before they are decoded: a page of orders all seen
        # before is never decoded at all.
        ids = orders.ids if isinstance(orders, RawOrders) else [order.id for order in orders]
        last_at = {order_id: index for index, order_id in enumerate(ids)}  # one per id
        seen_key = self.keys.seen(integration_id)
        try:
            values = self.redis.hmget(seen_key, list(last_at))
        except ResponseError as exc:
            raise name_wrong_type(
                self.redis, exc, seen_key, "hash", integration_id=integration_id
            ) from None
        candidates: list[tuple[Order, dict[str, Any] | None]] = []
        invalid: list[OrderValidationError] = []
        to_mark: list[str] = []
        # A full sweep renews marks of a generation below stale_below; the values of marks
        # still fresh end in one of ``fresh``: most values of a full sweep, checked unparsed.
        stale_below: int | None = None
        fresh: tuple[bytes, ...] = ()
        if generation is not None:
            stale_below = generation - mark_slack(keep_generations)
            fresh = tuple(f":{g}".encode() for g in range(max(0, stale_below), generation + 1))
        for (order_id, index), value in zip(last_at.items(), values, strict=True):
            if value is None:
                order = orders[index]
                if not isinstance(order, RawOrder):
                    candidates.append((order, None))
                    continue
                try:
                    candidates.append((order.parse(), order.data))
                except OrderValidationError as exc:
                    invalid.append(exc)
            elif (
                stale_below is not None
                and not (isinstance(value, bytes) and value.endswith(fresh))
                and seen_generation(value) < stale_below
            ):
                to_mark.append(order_id)
        result = DispatchResult(
            already_seen=len(orders) - len(candidates) - len(invalid), invalid=invalid
        )
        if not candidates and not to_mark:
            return result
        suffix = f":{generation}" if generation is not None else ""
        rq_queue = queue_key(self.queue.name)
        now_ = int(self._clock())
        keys = [
            seen_key,
            rq_queue,
            QUEUES_KEY,
            self.keys.seen_integrations,
            self.keys.stats,
            fair_list_key(self.queue.name, integration_id),
            self.keys.fair_ring,
            self.keys.fair_parked,
            hour_key(self.keys, now_),
        ]
        args: list[Any] = [now_, integration_id, rq_queue, suffix, self.record_ttl]
        args.append(len(to_mark))
        args.extend(to_mark)
        spans = tracing.dispatch_spans(
            integration_id, [order.id for order, _ in candidates], source=source,
            parents=trace_parents,
        )  # fmt: skip
        shared, jobs = self._job_hashes(integration_id, candidates, source, spans)
        args.append(len(shared))
        args.extend(shared)
        records: list[str] = []
        for order, job_id, fields in jobs:
            keys.append(job_key(job_id))
            records.append(self.keys.dispatched(integration_id, order.id))
            args.extend((order.id, job_id, len(fields)))
            args.extend(fields)
        keys.extend(records)
        args.extend(self.feeder.block())
        with tracing.ending_dispatch(spans) as traced:
            enqueued = self._run_script(keys, args, integration_id)
            traced.extend(enqueued)
        result.enqueued = [as_str(order_id) for order_id in enqueued]
        result.already_seen += len(candidates) - len(result.enqueued)
        return result

    def _run_script(
        self, keys: list[str], args: list[Any], integration_id: str
    ) -> list[bytes | str]:
        # With a replica_ack, WAIT rides in the same round trip (dispatcher.store.replication).
        answer: list[bytes | str] = run_script(
            self.redis,
            _DISPATCH,
            keys,
            args,
            ack=self.job_options.replica_ack,
            what=f"dispatch of integration {escape_controls(integration_id)}",
            integration_id=integration_id,
        )
        return answer

    def seen_at(self, integration_id: str, order_id: str) -> float | None:
        """When an order was first dispatched (unix time), or None if it never was."""
        value = self.redis.hget(self.keys.seen(integration_id), order_id)
        return parse_seen(value)[0] if value is not None else None

    def prune(
        self,
        integration_id: str,
        *,
        generation: int,
        keep_generations: int = tunables.PRUNE_AFTER_SWEEPS,
        retention: float = tunables.SEEN_RETENTION,
    ) -> int:
        """Forget orders no full sweep has seen OPEN in the last ``keep_generations`` full
        sweeps (or up to ``keep_generations - 1`` more: marks are renewed lazily, see
        :meth:`dispatch`) and first seen more than ``retention`` seconds ago. Returns how many.

        Call it only after full sweep ``generation`` completed: an order still OPEN carries
        a mark of that generation or at most ``keep_generations - 1`` before, and is never
        pruned, so it is never dispatched twice.
        """
        cutoff_generation = generation - keep_generations - mark_slack(keep_generations)
        if cutoff_generation < 0:
            return 0
        cutoff_time = self._clock() - retention
        seen_key = self.keys.seen(integration_id)
        pruned = 0
        for batch in _batches(self.redis.hscan_iter(seen_key, count=1000), 1000):
            doomed: list[Any] = []
            for field_name, value in batch:
                first_seen, last_generation = parse_seen(value)
                if (
                    first_seen is not None
                    and first_seen < cutoff_time
                    and last_generation <= cutoff_generation
                ):
                    doomed.extend((field_name, value))
            if doomed:
                pruned += int(_PRUNE(self.redis, [seen_key], doomed))
        return pruned

    def seen_count(self) -> int:
        """How many orders are remembered, across every integration."""
        integrations = self.redis.smembers(self.keys.seen_integrations)
        if not integrations:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for integration in integrations:
                pipe.hlen(self.keys.seen(as_str(integration)))
            return sum(pipe.execute())

    def _job_hashes(
        self,
        integration_id: str,
        orders: Sequence[tuple[Order, dict[str, Any] | None]],
        source: str = "poll",
        spans: Mapping[str, Any] | None = None,
    ) -> tuple[list[Any], Iterator[tuple[Order, str, list[Any]]]]:
        """The job hash ``_build_job(...)`` would save for each (order, its payload if the
        caller has it), in two parts: the items all the page's jobs share, sent once, and
        (order, job id, its own items).

        RQ's Job.create and to_dict run once for the page instead of per order: they cost
        more per order than the rest of a dispatch (bench/ingest.py), and the jobs of a
        page differ only in their arguments, description and meta. Sending the shared
        fields once spares redis-py packing them per order. tests/store/test_ledger_jobs.py checks
        the hashes against RQ's own and runs them.
        """
        if not orders:
            return [], iter(())
        template_job = self._build_job(integration_id, *orders[0], source=source)
        template = dict(_pairs(job_hash_items(template_job)))
        dumps = template_job.serializer.dumps
        shared = [
            item
            for key, value in template.items()
            if key not in JOB_OWN_FIELDS
            for item in (key, value)
        ]

        def own() -> Iterator[tuple[Order, str, list[Any]]]:
            for order, payload in orders:
                data = job_data(
                    dumps, JOB_FUNCTION, self.job_kwargs(integration_id, order, payload)
                )
                items = [
                    "data", data,
                    "description", _description(integration_id, order),
                    "meta", dumps(self.job_meta(
                        integration_id, order, source,
                        trace=tracing.carrier_of(spans.get(order.id)) if spans else None,
                    )),
                ]  # fmt: skip
                yield order, self.job_id(integration_id, order.id), items

        return shared, own()

    def _build_job(
        self,
        integration_id: str,
        order: Order,
        payload: dict[str, Any] | None = None,
        *,
        source: str = "poll",
    ) -> Job:
        return self._new_job(
            JOB_FUNCTION,
            self.job_kwargs(integration_id, order, payload),
            id=self.job_id(integration_id, order.id),
            description=_description(integration_id, order),
            meta=self.job_meta(integration_id, order, source),
        )

    def _new_job(
        self, function: str, kwargs: dict[str, Any], *, id: str, description: str, meta: Any
    ) -> Job:
        options = self.job_options
        job = Job.create(
            function,
            kwargs=kwargs,
            connection=self.redis,
            id=id,
            origin=self.queue.name,
            status=JobStatus.QUEUED,
            description=description,
            meta=meta,
            timeout=options.timeout,
            result_ttl=options.result_ttl,
            failure_ttl=options.failure_ttl,
            retry=options.retry(),
            serializer=JOB_SERIALIZER,
        )
        job.enqueued_at = now()
        return job

    def job_kwargs(
        self, integration_id: str, order: Order, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The arguments of an order's job: the integration, the order as Kombo sent it
        (``payload``, when the caller has it; the same as ``to_payload()``, see
        tests/kombo/test_properties.py, without the cost of dumping the model) and the namespace,
        which a worker of another namespace refuses."""
        return {
            "integration_id": integration_id,
            "order": payload if payload is not None else order.to_payload(),
            "namespace": self.namespace,
        }

    def job_meta(
        self,
        integration_id: str,
        order: Order,
        source: str = "poll",
        *,
        trace: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An order's job meta: what RQ's tools show, the namespace (a worker of another
        namespace leaves the job on the queue), the configured chain and how the order came
        (``poll`` or ``webhook``: the order's timeline shows it); with tracing on, the W3C
        context of the order's trace (``trace``: the worker's spans join it)."""
        meta: dict[str, Any] = {
            "source": source,
            "order_id": order.id,
            "integration_id": integration_id,
            "package_id": order.package_id,
            "namespace": self.namespace,
            "chain": list(self.job_options.chain),
        }
        if trace:
            meta[tracing.META_KEY] = dict(trace)
        return meta

    def reject(self, integration_id: str, order_id: str, reason: str) -> bool:
        """Remember an order as rejected so that no path ever dispatches it; atomic.

        Marks the order seen with ``rejected:<unix time>`` and stores ``reason`` (the message
        Kombo shows in the ATS) under :meth:`Keys.rejected`, in one script, only if the order
        is not seen yet. Returns whether this call rejected it: ``False`` means it was already
        dispatched or rejected, and nothing was written.
        """
        now_ = int(self._clock())
        record = json.dumps({"reason": reason, "at": now_}, ensure_ascii=False)
        keys = [
            self.keys.seen(integration_id),
            self.keys.rejected(integration_id),
            self.keys.seen_integrations,
            self.keys.stats,
        ]
        done = _REJECT(
            self.redis,
            keys,
            [order_id, f"{REJECTED_PREFIX}{now_}", record, integration_id],
            integration_id=integration_id,
        )
        return bool(done)

    def rejection(self, integration_id: str, order_id: str) -> str | None:
        """The reason an order was rejected, or None if it is not marked rejected."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.seen(integration_id), order_id)
            pipe.hget(self.keys.rejected(integration_id), order_id)
            seen, record = pipe.execute()
        # The seen mark decides: a rejection record outliving a forgotten order means nothing.
        if seen is None or not as_str(seen).startswith(REJECTED_PREFIX):
            return None
        try:
            reason = json.loads(record)["reason"] if record is not None else None
        except (ValueError, TypeError, KeyError):
            reason = None
        return reason if isinstance(reason, str) else "This order was rejected by the vendor."


def _batches(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _description(integration_id: str, order: Order) -> str:
    return f"order {order.id} integration {integration_id} package {order.package_id}"


def _pairs(items: list[Any]) -> Iterator[tuple[Any, Any]]:
    return zip(items[::2], items[1::2], strict=True)
