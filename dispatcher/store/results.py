"""The results outbox: a result to write back to Kombo, stored and queued in one atomic step.

An order's result goes to Kombo through Redis, never straight from the caller:
:meth:`Outbox.submit` validates the body, then one Lua script stores it in the order's outbox
hash (``{ns}:outbox:{integration}:{order}``) and writes and queues the RQ write job on
``DISPATCHER_RESULTS_QUEUE``. The write job (``dispatcher/worker/results.py``) PUTs it and
ends the result in one of the outbox's scripts (``dispatcher/store/lua/outbox_*.lua``). What
callers get back (:class:`OutboxRecord`, :class:`ResultReceipt`, the refusals) is defined in
dispatcher.store.outbox_types. Invariants:

- one pending write per (integration, order): an identical body submitted again returns the
  same receipt and queues nothing (also once written: the receipt of the written body); a
  different one replaces the pending body as long as no attempt of it was sent to Kombo;
- once an attempt of the pending body was sent (``sent``; :meth:`Outbox.begin` marks it and
  counts the attempt in the same step), that body is what Kombo may hold: a different body
  submitted then is refused when the body on its way is final (Kombo takes one final result,
  :class:`ResultInFlightError`) and otherwise kept as the ``next_*`` body, which becomes the
  pending body when the one on its way ends (written or failed) and is written by the same
  job: no body is left behind without a job;
- the outbox hash names the one job that owns the pending write (``job``); a job that is not
  the owner (a duplicate of a recovered job, a job whose write was already ended) does
  nothing, so a result is written by one job at a time;
- a result is ``pending`` (in ``{ns}:outbox-pending``), then ``written`` or ``failed`` (in the
  matching index), moved by one script each; a final result (COMPLETED or CANCELLED) once
  written is recorded in ``{ns}:results:{integration}`` with its digest and receipt, and every
  later submit of another body is refused;
- with ``require_dispatched`` (the results API) a submit for an order the ledger never
  dispatched stores nothing (:class:`UnknownOrderError`), checked in the same script;
- every script checks the types of the keys it writes before it writes any
  (``dispatcher/store/lua/_type_guard.lua``).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now as rq_now

from dispatcher import tracing
from dispatcher._text import as_float, as_str
from dispatcher.kombo.results import (
    AssessmentResult,
    InvalidResultError,
    build_result,
    check_integration_id,
)
from dispatcher.store import throughput, timeline
from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.leases import WriteSlot
from dispatcher.store.lua import script
from dispatcher.store.outbox_types import (
    STATES,
    FinalResultError,
    OutboxRecord,
    ResultInFlightError,
    ResultReceipt,
    ResultState,
    UnknownOrderError,
    record_from_hash,
)
from dispatcher.store.rq_internals import JOB_SERIALIZER, job_hash_items

__all__ = [
    "FINAL_STATUSES",
    "RESULT_JOB_FUNCTION",
    "RESULT_JOB_FUNCTIONS",
    "STATES",
    "FinalResultError",
    "Outbox",
    "OutboxRecord",
    "ResultInFlightError",
    "ResultReceipt",
    "ResultState",
    "UnknownOrderError",
    "parse_result",
    "result_job_id",
    "submit_result",
]

RESULT_JOB_FUNCTION = "dispatcher.worker.results.write_result"
# What the workers run as a write job: the path new jobs name, and the one jobs queued before
# dispatcher/worker/writeback.py was renamed results.py name (that module re-exports it).
RESULT_JOB_FUNCTIONS = frozenset({RESULT_JOB_FUNCTION, "dispatcher.worker.writeback.write_result"})
FINAL_STATUSES = frozenset({"COMPLETED", "CANCELLED"})

# One script per move of a result (KEYS, ARGV and answers in their files).
_SUBMIT = script("outbox_submit")
_BEGIN = script("outbox_begin")
_BEGIN_WRITE = script("outbox_begin_write")
_WRITTEN = script("outbox_written")
_FAILED = script("outbox_failed")
_RESCHEDULE = script("outbox_reschedule")


def parse_result(data: Any) -> AssessmentResult:
    """A result body (decoded JSON) checked against Kombo's rules; InvalidResultError names
    the first bad field."""
    if not isinstance(data, dict):
        raise InvalidResultError("result", "must be a JSON object")
    return build_result(**{str(key): value for key, value in data.items()})


def result_job_id(namespace: str, integration_id: str, order_id: str, nonce: str) -> str:
    """The RQ job id of one write attempt (RQ ids allow letters, digits, ``_`` and ``-``)."""
    digest = hashlib.blake2b(
        "\x00".join((namespace, integration_id, order_id, nonce)).encode(), digest_size=16
    ).hexdigest()
    return f"result-{digest}"


def _digest(body: Mapping[str, Any], defaulted_completed_at: bool) -> str:
    # ``completed_at`` defaults to now: two submits of one body without it are the same body.
    material = {
        k: v for k, v in body.items() if not (k == "completed_at" and defaulted_completed_at)
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Latency buckets of a result's write (submit to written), seconds.
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)


class Outbox:
    """The results outbox of one namespace: submit, read, list, and end writes."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        queue_name: str,
        *,
        job_timeout: int = 120,
        result_ttl: int = 7 * 24 * 3600,
        failure_ttl: int = 30 * 24 * 3600,
        timeline_ttl: int = 30 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.keys = Keys(namespace)
        self.queue = Queue(queue_name, connection=redis, serializer=JOB_SERIALIZER)
        self.job_timeout = job_timeout
        self.result_ttl = max(1, result_ttl)
        self.failure_ttl = max(1, failure_ttl)
        self.timeline_ttl = max(1, timeline_ttl)
        self._clock = clock

    @classmethod
    def from_settings(cls, redis: Redis, settings: Any) -> Outbox:
        return cls(
            redis,
            settings.namespace,
            settings.results_queue,
            job_timeout=int(settings.kombo_timeout) * 2 + 60,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            timeline_ttl=int(settings.seen_retention) or 30 * 24 * 3600,
        )

    # -- submit ---------------------------------------------------------------------------

    def submit(
        self,
        integration_id: str,
        order_id: str,
        result: AssessmentResult | Mapping[str, Any],
        *,
        completed_at_defaulted: bool = False,
        require_dispatched: bool = False,
    ) -> ResultReceipt:
        """Store a result and queue its write, in one atomic step (see the module doc).

        ``completed_at_defaulted``: the caller's body had no ``completed_at`` (a validated
        result got now): such a body is compared without it, so that sending it again is a
        duplicate. Worked out here when ``result`` is a mapping. ``require_dispatched``: refuse
        an order the ledger never dispatched (UnknownOrderError).

        Raises InvalidResultError (a body Kombo would refuse, naming the field),
        FinalResultError (a final result was already written; ResultInFlightError: one is on
        its way), UnknownOrderError, WrongKeyTypeError, or redis-py's errors (nothing was
        stored then).
        """
        check_integration_id(integration_id)  # a header of the write: refused now, not then
        defaulted = completed_at_defaulted
        if not isinstance(result, AssessmentResult):
            defaulted = result.get("completed_at") is None
            result = parse_result(dict(result))
        body = result.to_body()
        digest = _digest(body, defaulted)
        now = self._clock()
        submission = uuid.uuid4().hex
        job_id = result_job_id(self.namespace, integration_id, order_id, submission)
        ref = order_ref(integration_id, order_id)
        event = timeline.event(
            now, "result_submitted", status=str(result.status), submission=submission
        )
        keys = [
            self.keys.outbox(integration_id, order_id),
            self.keys.results(integration_id),
            self.keys.outbox_index("pending"),
            self.keys.outbox_index("failed"),
            self.keys.outbox_index("written"),
            self.queue.key,
            self.queue.redis_queues_keys,
            self.keys.timeline(integration_id, order_id),
            self.keys.seen(integration_id),
            Job.key_for(job_id),
        ]
        args: list[Any] = [
            order_id, digest, json.dumps(body, ensure_ascii=False), str(result.status),
            repr(now), submission, integration_id, ref, self.queue.key, job_id,
            self.timeline_ttl, event, "1" if require_dispatched else "0",
        ]  # fmt: skip
        args.extend(self._job_items(integration_id, order_id, job_id, JobStatus.QUEUED))
        answer = _SUBMIT(self.redis, keys, args, integration_id=integration_id)
        outcome = as_str(answer[0])
        if outcome == "final":
            raise FinalResultError(integration_id, order_id, as_str(answer[1]))
        if outcome == "busy":
            raise ResultInFlightError(integration_id, order_id, as_str(answer[1]))
        if outcome in ("unknown", "rejected"):
            raise UnknownOrderError(integration_id, order_id, rejected=outcome == "rejected")
        return ResultReceipt(
            integration_id=integration_id,
            order_id=order_id,
            submission_id=as_str(answer[1]),
            submitted_at=as_float(answer[2]) or 0.0,
            state=as_str(answer[3]),  # type: ignore[arg-type]
            outcome=outcome,  # type: ignore[arg-type]
        )

    def queued_job_items(self, integration_id: str, order_id: str, job_id: str) -> list[Any]:
        """The hash of a queued write job ``job_id``: what the reconciler writes back when a
        pending result's job hash was lost."""
        return self._job_items(integration_id, order_id, job_id, JobStatus.QUEUED)

    def _job_items(
        self, integration_id: str, order_id: str, job_id: str, status: JobStatus
    ) -> list[Any]:
        # The hash Job.save() writes; built here so that the script writes it with the rest.
        job = Job.create(
            RESULT_JOB_FUNCTION,
            kwargs={"integration_id": integration_id, "order_id": order_id},
            connection=self.redis,
            id=job_id,
            origin=self.queue.name,
            status=status,
            description=f"result of order {order_id} integration {integration_id}",
            # With tracing on, the write job joins the trace of the submission (the PUT).
            meta=tracing.stamp(
                {"order_id": order_id, "integration_id": integration_id, "kind": "result"}
            ),
            timeout=self.job_timeout,
            result_ttl=3600,
            failure_ttl=self.failure_ttl,
            serializer=JOB_SERIALIZER,
        )
        job.enqueued_at = rq_now()
        return job_hash_items(job)

    # -- read -----------------------------------------------------------------------------

    def get(self, integration_id: str, order_id: str) -> OutboxRecord | None:
        """The order's result as stored, or None when none was submitted (or it expired)."""
        raw = self.redis.hgetall(self.keys.outbox(integration_id, order_id))
        return record_from_hash(raw) if raw else None

    def in_state(
        self, state: ResultState, *, integration_id: str | None = None, limit: int = 1000
    ) -> list[OutboxRecord]:
        """Results in one state, oldest first (at most ``limit``)."""
        refs = cast("list[bytes]", self.redis.zrange(self.keys.outbox_index(state), 0, -1))
        records: list[OutboxRecord] = []
        for batch in _chunks([as_str(r) for r in refs], 500):
            with self.redis.pipeline(transaction=False) as pipe:
                for ref in batch:
                    pipe.hgetall(f"{self.namespace}:outbox:{ref}")
                for raw in pipe.execute():
                    if not raw:
                        continue
                    record = record_from_hash(raw)
                    if record.state != state:
                        continue
                    if integration_id is not None and record.integration_id != integration_id:
                        continue
                    records.append(record)
                    if len(records) >= limit:
                        return records
        return records

    def counts(self) -> dict[str, int]:
        """How many results are pending, written (within DISPATCHER_RESULT_TTL), failed."""
        cutoff = self._clock() - self.result_ttl
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.outbox_index("pending"))
            pipe.zcount(self.keys.outbox_index("written"), cutoff, "+inf")
            pipe.zcard(self.keys.outbox_index("failed"))
            pending, written, failed = pipe.execute()
        return {"pending": int(pending), "written": int(written), "failed": int(failed)}

    def timeline_events(self, integration_id: str, order_id: str) -> list[dict[str, Any]]:
        """The recorded events of an order (results path, provisioning end), oldest first."""
        return timeline.read_events(self.redis, self.keys, integration_id, order_id)

    # -- a write (the write job) ------------------------------------------------------------

    def begin(self, record: OutboxRecord, job_id: str, slot: WriteSlot | None = None) -> str:
        """Before an attempt of ``record``'s body is sent: count it and lock the body (a new
        body waits its turn or is refused, see the module doc). ``begun``; ``stale`` when
        ``job_id`` no longer owns the write; ``changed`` when another body replaced it (read
        the record again).

        With ``slot`` (:meth:`dispatcher.store.leases.WriteLeases.slot`), ``job_id`` also
        takes a write slot of the integration in the same step: ``begun`` then means it holds
        one (give it back with ``mark_written(..., release_slot=True)`` or
        ``WriteLeases.release``), and ``full`` that every slot was taken and nothing changed.
        """
        key = self.keys.outbox(record.integration_id, record.order_id)
        args: list[Any] = [job_id, record.submission_id]
        if slot is None:
            return as_str(_BEGIN(self.redis, [key], args, integration_id=record.integration_id))
        args += [slot.now, slot.cap, slot.expiry]
        answer = _BEGIN_WRITE(
            self.redis, [key, slot.key], args, integration_id=record.integration_id
        )
        return as_str(answer)

    def mark_written(
        self,
        record: OutboxRecord,
        job_id: str,
        warnings: list[str],
        *,
        lost_answer: bool = False,
        read_back: str | None = None,
        kombo_result: Mapping[str, Any] | None = None,
        release_slot: bool = False,
    ) -> str:
        """End the pending write as written; ``stale`` when ``job_id`` no longer owns it,
        ``superseded`` when another body replaced it, ``next`` when a partial result was
        written and another body waits (it is now the pending one: write it too).

        ``read_back``: what reading the order back after a lost answer showed (``matched``,
        ``status only``, ``another body``); ``kombo_result``: the result Kombo showed it holds
        when it is not the submitted body. ``release_slot``: give back ``job_id``'s write
        slot of the integration in the same step, whatever the answer (see :meth:`begin`)."""
        now = self._clock()
        integration_id, order_id = record.integration_id, record.order_id
        final = record.status in FINAL_STATUSES
        latency = max(0.0, now - record.submitted_at)
        buckets = [str(b) for b in LATENCY_BUCKETS if latency <= b] + ["+Inf"]
        event = timeline.event(
            now,
            "result_written",
            status=record.status,
            warnings=warnings,
            lost_answer=lost_answer,
        )
        keys = [
            self.keys.outbox(integration_id, order_id),
            self.keys.results(integration_id),
            self.keys.stats,
            self.keys.outbox_index("pending"),
            self.keys.outbox_index("written"),
            self.keys.timeline(integration_id, order_id),
            self.keys.provisioned,
            self.keys.result_stats,
            self.keys.kombo_writes(integration_id),
            throughput.hour_key(self.keys, now),
        ]
        record_json = (
            json.dumps(
                {
                    "status": record.status,
                    "at": int(now),
                    # What a later submit of the same body answers with (200, this receipt).
                    "digest": record.digest,
                    "submission": record.submission_id,
                    "submitted_at": round(record.submitted_at, 3),
                }
            )
            if final
            else ""
        )
        args: list[Any] = [
            job_id, record.submission_id, repr(now), json.dumps(warnings, ensure_ascii=False),
            "1" if lost_answer else "0", self.result_ttl, order_id, record_json,
            order_ref(integration_id, order_id), repr(now - self.result_ttl),
            self.timeline_ttl, event, integration_id, repr(latency), read_back or "",
            json.dumps(kombo_result, ensure_ascii=False) if kombo_result is not None else "",
            job_id if release_slot else "", *buckets,
        ]  # fmt: skip
        return as_str(_WRITTEN(self.redis, keys, args, integration_id=integration_id))

    def mark_failed(self, record: OutboxRecord, job_id: str, reason: str) -> str:
        """End the pending write as failed (permanently) with ``reason``; ``stale`` when
        ``job_id`` no longer owns it; ``next`` when another body waited (it is now the pending
        one: write it)."""
        now = self._clock()
        integration_id, order_id = record.integration_id, record.order_id
        keys = [
            self.keys.outbox(integration_id, order_id),
            self.keys.outbox_index("pending"),
            self.keys.outbox_index("failed"),
            self.keys.timeline(integration_id, order_id),
            self.keys.result_stats,
        ]
        args: list[Any] = [
            job_id, repr(now), reason, self.failure_ttl, order_ref(integration_id, order_id),
            self.timeline_ttl, timeline.event(now, "result_failed", reason=reason), integration_id,
        ]  # fmt: skip
        return as_str(_FAILED(self.redis, keys, args, integration_id=integration_id))

    def reschedule(
        self,
        record: OutboxRecord,
        job_id: str,
        delay: float,
        *,
        error: str = "",
        count_attempt: bool = True,
    ) -> str:
        """Hand the pending write to a new job run ``delay`` seconds from now (RQ's scheduler
        queues it); ``stale`` when ``job_id`` no longer owns it. ``count_attempt`` is kept
        for callers: attempts are counted when sent (:meth:`begin`)."""
        now = self._clock()
        nonce = f"{record.submission_id}:{uuid.uuid4().hex}"
        new_id = result_job_id(self.namespace, record.integration_id, record.order_id, nonce)
        registry = self.queue.scheduled_job_registry
        keys = [
            self.keys.outbox(record.integration_id, record.order_id),
            registry.key,
            self.queue.key,
            self.queue.redis_queues_keys,
            Job.key_for(new_id),
        ]
        when = now + max(0.0, delay)
        args: list[Any] = [
            job_id, new_id, repr(when) if delay > 0 else repr(now), "0", error, self.queue.key,
            repr(now),
        ]  # fmt: skip
        args.extend(
            self._job_items(record.integration_id, record.order_id, new_id, JobStatus.SCHEDULED)
        )
        return as_str(_RESCHEDULE(self.redis, keys, args, integration_id=record.integration_id))

    def retry_failed(
        self, *, integration_id: str | None = None, order_ids: list[str] | None = None
    ) -> list[ResultReceipt]:
        """Submit failed results again (the same body, a new write): ``dispatcher retry``
        for writes. Returns a receipt per result queued again."""
        receipts: list[ResultReceipt] = []
        for record in self.in_state("failed", integration_id=integration_id, limit=100_000):
            if order_ids is not None and record.order_id not in order_ids:
                continue
            try:
                receipts.append(self.submit(record.integration_id, record.order_id, record.body))
            except (FinalResultError, InvalidResultError):
                continue
        return receipts


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def submit_result(
    integration_id: str,
    order_id: str,
    result: AssessmentResult | Mapping[str, Any],
    *,
    redis: Redis,
    settings: Any,
) -> ResultReceipt:
    """Hand an order's result to the dispatcher for writing back to Kombo.

    Validates ``result`` (Kombo's rules; InvalidResultError names the first bad field),
    stores it and queues its write on ``DISPATCHER_RESULTS_QUEUE`` in one atomic Redis step,
    and returns once that step is done: from then on the results workers write it, retrying
    for ``DISPATCHER_RESULT_RETRY_FOR``. The same body again returns the same receipt; a
    different one while the first is pending and not yet sent replaces it (Kombo gets the
    last); after a partial one was sent it is written next; once a final result (COMPLETED
    or CANCELLED) was sent or written, FinalResultError. ``settings`` is a
    :class:`dispatcher.Settings`.
    """
    defaulted = not isinstance(result, AssessmentResult) and result.get("completed_at") is None
    return Outbox.from_settings(redis, settings).submit(
        integration_id, order_id, result, completed_at_defaulted=defaulted
    )
