"""``dispatcher replay``: run some steps of the chain (a handler added after the orders were
dispatched) on the orders of an integration that are still OPEN.

Which orders: those Kombo lists as OPEN now (optionally created after ``since``) and that the
dispatcher dispatched (seen, not rejected). Kombo is read rather than what is remembered: the
seen store keeps ids and times, no payloads, and says nothing about whether an order is still
OPEN; Kombo has both. An OPEN order never dispatched is left to the poller (it dispatches it
with the whole chain); an order whose job is still queued, scheduled or running is skipped
(its own job runs the chain, the new step included, and two jobs of one order at once could
run one step twice).

Each order gets one replay job (``replay-`` + a hash of namespace, integration and order):
the usual job function with ``handlers`` restricting it to the named steps, so the step
records, idempotency keys, retries and failure reports are the usual ones, and a step an
order has completed already is skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rq.job import JobStatus

from dispatcher import tracing
from dispatcher._text import as_str
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.models import Order, OrderValidationError
from dispatcher.store.ledger import JOB_FUNCTION, Ledger
from dispatcher.store.rq_internals import job_key
from dispatcher.store.seen import REJECTED_PREFIX

__all__ = ["ReplayResult", "replay", "replay_job_id"]

# A job of the order in one of these states runs (or will run) the chain itself.
_BUSY = {
    JobStatus.QUEUED.value,
    JobStatus.STARTED.value,
    JobStatus.SCHEDULED.value,
    JobStatus.DEFERRED.value,
}


@dataclass(slots=True)
class ReplayResult:
    """What a replay did: orders queued (their job ids), OPEN orders left to the poller
    (never dispatched) or to their own job (still in progress), and invalid ones."""

    queued: list[tuple[str, str]] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    not_dispatched: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    invalid: list[OrderValidationError] = field(default_factory=list)
    # Orders Kombo listed more than once (on one page or across pages): handled once.
    duplicates: list[str] = field(default_factory=list)

    @property
    def open_orders(self) -> int:
        return (
            len(self.queued)
            + len(self.already_done)
            + len(self.not_dispatched)
            + len(self.in_progress)
            + len(self.rejected)
            + len(self.invalid)
        )


def replay_job_id(namespace: str, integration_id: str, order_id: str) -> str:
    """The RQ job id of an order's replay (one per order: a new replay replaces a done one)."""
    digest = hashlib.blake2b(
        "\x00".join(("replay", namespace, integration_id, order_id)).encode(), digest_size=16
    ).hexdigest()
    return f"replay-{digest}"


def replay(
    ledger: Ledger,
    client: KomboClient,
    integration_id: str,
    handlers: Sequence[str],
    *,
    since: datetime | None = None,
    page_size: int | None = None,
    max_pages: int | None = None,
    force: bool = False,
) -> ReplayResult:
    """Queue a job running only ``handlers`` for each dispatched order of ``integration_id``
    that Kombo lists as OPEN (created after ``since``, if given).

    An order whose named steps are all recorded as completed is skipped (a second replay
    queued them all again, to do nothing); with ``force`` their records (and sub-effects)
    are cleared before the job is queued, so that it runs them again.
    """
    result = ReplayResult()
    redis = ledger.redis
    seen_key = ledger.keys.seen(integration_id)
    listed: set[str] = set()
    for page in client.iter_order_pages(
        integration_id, created_after=since, page_size=page_size, max_pages=max_pages
    ):
        result.invalid.extend(page.invalid)
        # Kombo's listing may name an order twice: the statuses below are read before any
        # job is queued, so a second copy would push the same job id a second time.
        raws = []
        for raw in page.results:
            if raw.id in listed:
                result.duplicates.append(raw.id)
            else:
                listed.add(raw.id)
                raws.append(raw)
        if not raws:
            continue
        ids = [raw.id for raw in raws]
        with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(seen_key, ids)
            for order_id in ids:
                pipe.hget(job_key(ledger.job_id(integration_id, order_id)), "status")
                pipe.hget(
                    job_key(replay_job_id(ledger.namespace, integration_id, order_id)), "status"
                )
                pipe.hmget(ledger.keys.steps(integration_id, order_id), list(handlers))
            seen, *answers = pipe.execute()
        for index, raw in enumerate(raws):
            mark = seen[index]
            status, replay_status, recorded = answers[3 * index : 3 * index + 3]
            if mark is None:
                result.not_dispatched.append(raw.id)
                continue
            if as_str(mark).startswith(REJECTED_PREFIX):
                result.rejected.append(raw.id)
                continue
            if {as_str(s) for s in (status, replay_status) if s is not None} & _BUSY:
                result.in_progress.append(raw.id)
                continue
            done = all(record is not None for record in recorded)
            if done and not force:
                result.already_done.append(raw.id)
                continue
            try:
                order = raw.parse()
            except OrderValidationError as exc:
                result.invalid.append(exc)
                continue
            redo = handlers if force else ()
            result.queued.append(
                (order.id, _enqueue(ledger, integration_id, order, raw.data, handlers, redo))
            )
    return result


def _enqueue(
    ledger: Ledger,
    integration_id: str,
    order: Order,
    payload: dict[str, Any],
    handlers: Sequence[str],
    redo: Sequence[str] = (),
) -> str:
    job_id = replay_job_id(ledger.namespace, integration_id, order.id)
    meta = {**ledger.job_meta(integration_id, order), "replay": list(handlers)}
    keys = ledger.keys
    # Tracing on: the replay starts a trace of its own, its job's runs linked to the order's
    # first trace (kept in the order's dispatch record).
    ids = {"dispatcher.integration_id": integration_id, "dispatcher.order_id": order.id}
    with tracing.span("replay", kind="producer", attributes=ids):
        tracing.stamp(meta)
    if tracing.enabled():
        recorded = ledger.redis.hget(keys.dispatched(integration_id, order.id), "meta")
        tracing.link_to_dispatch(meta, recorded)
    if redo:
        # --force: forget the steps' records (one transaction), then queue the job. A crash
        # between the two leaves the steps not completed: the next replay, forced or not,
        # queues them (RQ's enqueue WATCHes: it cannot join this transaction).
        with ledger.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.steps(integration_id, order.id), *redo)
            pipe.delete(*(keys.effects(integration_id, order.id, name) for name in redo))
            pipe.execute()
    options = ledger.job_options
    ledger.queue.enqueue_call(
        JOB_FUNCTION,
        kwargs={**ledger.job_kwargs(integration_id, order, payload), "handlers": list(handlers)},
        job_id=job_id,
        description=(
            f"replay {','.join(handlers)} on order {order.id} integration {integration_id}"
        ),
        meta=meta,
        timeout=options.timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.failure_ttl,
        retry=options.retry(),
    )
    return job_id
