"""The results outbox: a result to write back to Kombo, stored and queued in one atomic step.

An order's result goes to Kombo through Redis, never straight from the caller:
:meth:`Outbox.submit` validates the body, then one Lua script stores it in the order's outbox
hash (``{ns}:outbox:{integration}:{order}``) and writes and queues the RQ write job on
``DISPATCHER_RESULTS_QUEUE``. The write job (``dispatcher/worker/writeback.py``) PUTs it and
ends the result in one of the scripts below. Invariants:

- one pending write per (integration, order): an identical body submitted again returns the
  same receipt and queues nothing; a different one while the first is pending replaces it
  (the queued job writes whatever body is pending when it runs: Kombo gets the last one);
- the outbox hash names the one job that owns the pending write (``job``); a job that is not
  the owner (a duplicate of a recovered job, a job whose write was already ended) does
  nothing, so a result is written by one job at a time;
- a result is ``pending`` (in ``{ns}:outbox-pending``), then ``written`` or ``failed`` (in the
  matching index), moved by one script each; a final result (COMPLETED or CANCELLED) once
  written is recorded in ``{ns}:results:{integration}`` and every later submit is refused;
- every script checks the types of the keys it writes before it writes any (see
  :func:`dispatcher.store.keys.lua_type_guard`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now as rq_now

from dispatcher.kombo.results import AssessmentResult, InvalidResultError, build_result
from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.rq_internals import JOB_SERIALIZER, job_hash_items
from dispatcher.store.wrongtype import key_types_checked, lua_type_guard

__all__ = [
    "FINAL_STATUSES",
    "RESULT_JOB_FUNCTION",
    "FinalResultError",
    "Outbox",
    "OutboxRecord",
    "ResultReceipt",
    "ResultState",
    "WriteLeases",
    "mark_provisioned",
    "parse_result",
    "result_job_id",
    "submit_result",
]

RESULT_JOB_FUNCTION = "dispatcher.worker.writeback.write_result"
FINAL_STATUSES = frozenset({"COMPLETED", "CANCELLED"})
ResultState = Literal["pending", "written", "failed"]
STATES: tuple[ResultState, ...] = ("pending", "written", "failed")
# The timeline of an order keeps its last events only (a client submitting partial results
# in a loop must not grow it without end).
TIMELINE_MAX_EVENTS = 200


class FinalResultError(Exception):
    """A final result (COMPLETED or CANCELLED) was already written for the order: Kombo would
    refuse another one, so nothing was stored."""

    def __init__(self, integration_id: str, order_id: str, status: str) -> None:
        self.integration_id = integration_id
        self.order_id = order_id
        self.status = status
        super().__init__(
            f"order {order_id} (integration {integration_id}): a final result ({status}) "
            "was already written; Kombo takes no further result"
        )


@dataclass(frozen=True, slots=True)
class ResultReceipt:
    """What :meth:`Outbox.submit` did: the submission (its id and time), the result's state
    and whether this call stored anything (``outcome``: ``queued`` a new write, ``replaced``
    the pending body, ``duplicate`` an identical body already pending or written)."""

    integration_id: str
    order_id: str
    submission_id: str
    submitted_at: float
    state: ResultState
    outcome: Literal["queued", "replaced", "duplicate"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration_id": self.integration_id,
            "order_id": self.order_id,
            "submission_id": self.submission_id,
            "submitted_at": round(self.submitted_at, 3),
            "state": self.state,
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One order's result as the outbox holds it."""

    integration_id: str
    order_id: str
    state: ResultState
    status: str
    body: dict[str, Any]
    submission_id: str
    submitted_at: float
    job_id: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    written_at: float | None
    warnings: tuple[str, ...]
    lost_answer: bool
    reason: str | None
    failed_at: float | None

    def as_dict(self, *, with_body: bool = False) -> dict[str, Any]:
        """The JSON shape of ``GET /orders/{integration}/{order}/result`` and ``results
        --json`` (the body only when asked: attachments are large)."""
        out: dict[str, Any] = {
            "integration_id": self.integration_id,
            "order_id": self.order_id,
            "state": self.state,
            "status": self.status,
            "submission_id": self.submission_id,
            "submitted_at": round(self.submitted_at, 3),
            "attempts": self.attempts,
            "next_attempt_at": _round(self.next_attempt_at),
            "last_error": self.last_error,
            "written_at": _round(self.written_at),
            "warnings": list(self.warnings),
            "lost_answer": self.lost_answer,
            "reason": self.reason,
            "failed_at": _round(self.failed_at),
        }
        if with_body:
            out["body"] = self.body
        return out


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


# KEYS: 1 outbox hash, 2 results hash, 3 pending zset, 4 failed zset, 5 written zset,
#       6 queue list, 7 rq:queues set, 8 timeline list, 9 job hash.
# ARGV: 1 order id, 2 digest, 3 body, 4 status, 5 now, 6 submission id, 7 integration id,
#       8 order ref, 9 queue key, 10 job id, 11 timeline TTL, 12 event (JSON), 13.. job hash
#       field/value items.
_SUBMIT_TYPES = ("hash", "hash", "zset", "zset", "zset", "list", "set", "list")
_SUBMIT_SCRIPT = (
    lua_type_guard(_SUBMIT_TYPES)
    + """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record then
  local ok, decoded = pcall(cjson.decode, record)
  if ok and type(decoded) == 'table' and (decoded['status'] == 'COMPLETED'
      or decoded['status'] == 'CANCELLED') then
    return {'final', decoded['status']}
  end
end
local current = redis.call('HMGET', KEYS[1], 'state', 'digest', 'submission', 'submitted_at')
local state, digest = current[1], current[2]
if (state == 'pending' or state == 'written') and digest == ARGV[2] then
  return {'duplicate', current[3], current[4], state}
end
local function event()
  redis.call('RPUSH', KEYS[8], ARGV[12])
  redis.call('LTRIM', KEYS[8], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
  redis.call('EXPIRE', KEYS[8], ARGV[11])
end
redis.call('HSET', KEYS[1], 'integration', ARGV[7], 'order', ARGV[1], 'digest', ARGV[2],
  'body', ARGV[3], 'status', ARGV[4], 'submission', ARGV[6], 'submitted_at', ARGV[5])
if state == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  event()
  return {'replaced', ARGV[6], ARGV[5], 'pending'}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'job', ARGV[10], 'attempts', 0)
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'last_error', 'written_at', 'warnings',
  'lost_answer', 'reason', 'failed_at')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZREM', KEYS[5], ARGV[8])
if redis.call('TYPE', KEYS[9])['ok'] ~= 'none' then redis.call('DEL', KEYS[9]) end
redis.call('HSET', KEYS[9], unpack(ARGV, 13, #ARGV))
redis.call('RPUSH', KEYS[6], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[9])
event()
return {'queued', ARGV[6], ARGV[5], 'pending'}
"""
)

# KEYS: 1 outbox hash, 2 results hash, 3 stats hash, 4 pending zset, 5 written zset,
#       6 timeline list, 7 provisioned zset, 8 result-stats hash.
# ARGV: 1 job id, 2 submission id, 3 now, 4 warnings (JSON), 5 lost answer ("1"/"0"),
#       6 outbox TTL, 7 order id, 8 results record (JSON, "" for a partial result), 9 order
#       ref, 10 written-index cutoff, 11 timeline TTL, 12 event, 13 integration id,
#       14 latency seconds, 15.. histogram bucket fields to bump.
_WRITTEN_TYPES = ("hash", "hash", "hash", "zset", "zset", "list", "zset", "hash")
_WRITTEN_SCRIPT = (
    lua_type_guard(_WRITTEN_TYPES)
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'superseded' end
redis.call('HSET', KEYS[1], 'state', 'written', 'written_at', ARGV[3], 'warnings', ARGV[4],
  'lost_answer', ARGV[5])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[4], ARGV[9])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[10])
if ARGV[8] ~= '' then
  if redis.call('HSET', KEYS[2], ARGV[7], ARGV[8]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'results_written', 1)
  end
  redis.call('ZREM', KEYS[7], ARGV[9])
end
redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|written', 1)
redis.call('HINCRBYFLOAT', KEYS[8], ARGV[13] .. '|latency_sum', ARGV[14])
for i = 15, #ARGV do redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|le|' .. ARGV[i], 1) end
redis.call('RPUSH', KEYS[6], ARGV[12])
redis.call('LTRIM', KEYS[6], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[6], ARGV[11])
return 'written'
"""
)

# KEYS: 1 outbox hash, 2 pending zset, 3 failed zset, 4 timeline list, 5 result-stats hash.
# ARGV: 1 job id, 2 now, 3 reason, 4 outbox TTL, 5 order ref, 6 timeline TTL, 7 event,
#       8 integration id.
_FAILED_TYPES = ("hash", "zset", "zset", "list", "hash")
_FAILED_SCRIPT = (
    lua_type_guard(_FAILED_TYPES)
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[1], 'state', 'failed', 'failed_at', ARGV[2], 'reason', ARGV[3])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[8] .. '|failed', 1)
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('LTRIM', KEYS[4], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[4], ARGV[6])
return 'failed'
"""
)

# KEYS: 1 outbox hash, 2 scheduled registry zset, 3 queue list, 4 rq:queues set, 5 new job
#       hash. ARGV: 1 current job id, 2 new job id, 3 when (unix time; <= now: queued at once),
#       4 count the attempt ("1"/"0"), 5 last error, 6 queue key, 7 now, 8.. job hash items.
# Hands the pending write to a new job: the current one ends, the new one runs at ``when``.
_RESCHEDULE_TYPES = ("hash", "zset", "list", "set")
_RESCHEDULE_SCRIPT = (
    lua_type_guard(_RESCHEDULE_TYPES)
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'next_attempt_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[5]) end
if redis.call('TYPE', KEYS[5])['ok'] ~= 'none' then redis.call('DEL', KEYS[5]) end
redis.call('HSET', KEYS[5], unpack(ARGV, 8, #ARGV))
if tonumber(ARGV[3]) <= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[5], 'status', 'queued')
  redis.call('RPUSH', KEYS[3], ARGV[2])
else
  redis.call('HSET', KEYS[5], 'status', 'scheduled')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
redis.call('SADD', KEYS[4], ARGV[6])
return 'rescheduled'
"""
)

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
    ) -> ResultReceipt:
        """Store a result and queue its write, in one atomic step (see the module doc).

        ``completed_at_defaulted``: the caller's body had no ``completed_at`` (a validated
        result got now): such a body is compared without it, so that sending it again is a
        duplicate. Worked out here when ``result`` is a mapping.

        Raises InvalidResultError (a body Kombo would refuse, naming the field),
        FinalResultError (a final result was already written), WrongKeyTypeError, or
        redis-py's errors (nothing was stored then).
        """
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
        event = _event(now, "result_submitted", status=str(result.status), submission=submission)
        keys = [
            self.keys.outbox(integration_id, order_id),
            self.keys.results(integration_id),
            self.keys.outbox_index("pending"),
            self.keys.outbox_index("failed"),
            self.keys.outbox_index("written"),
            self.queue.key,
            self.queue.redis_queues_keys,
            self.keys.timeline(integration_id, order_id),
            Job.key_for(job_id),
        ]
        args: list[Any] = [
            order_id, digest, json.dumps(body, ensure_ascii=False), str(result.status),
            repr(now), submission, integration_id, ref, self.queue.key, job_id,
            self.timeline_ttl, event,
        ]  # fmt: skip
        args.extend(self._job_items(integration_id, order_id, job_id, JobStatus.QUEUED))
        with key_types_checked(keys, _SUBMIT_TYPES, integration_id=integration_id):
            answer = self.redis.eval(_SUBMIT_SCRIPT, len(keys), *keys, *args)
        outcome = _text(answer[0])
        if outcome == "final":
            raise FinalResultError(integration_id, order_id, _text(answer[1]))
        return ResultReceipt(
            integration_id=integration_id,
            order_id=order_id,
            submission_id=_text(answer[1]),
            submitted_at=float(answer[2]),
            state=_text(answer[3]),  # type: ignore[arg-type]
            outcome=outcome,  # type: ignore[arg-type]
        )

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
            meta={"order_id": order_id, "integration_id": integration_id, "kind": "result"},
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
        return _record(raw) if raw else None

    def in_state(
        self, state: ResultState, *, integration_id: str | None = None, limit: int = 1000
    ) -> list[OutboxRecord]:
        """Results in one state, oldest first (at most ``limit``)."""
        refs = cast("list[bytes]", self.redis.zrange(self.keys.outbox_index(state), 0, -1))
        records: list[OutboxRecord] = []
        for batch in _chunks([_text(r) for r in refs], 500):
            with self.redis.pipeline(transaction=False) as pipe:
                for ref in batch:
                    pipe.hgetall(f"{self.namespace}:outbox:{ref}")
                for raw in pipe.execute():
                    if not raw:
                        continue
                    record = _record(raw)
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
        events: list[dict[str, Any]] = []
        for raw in self.redis.lrange(self.keys.timeline(integration_id, order_id), 0, -1):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    # -- ending a write (the write job) -----------------------------------------------------

    def mark_written(
        self,
        record: OutboxRecord,
        job_id: str,
        warnings: list[str],
        *,
        lost_answer: bool = False,
    ) -> str:
        """End the pending write as written; ``stale`` when ``job_id`` no longer owns it,
        ``superseded`` when another body was submitted meanwhile (write that one too)."""
        now = self._clock()
        integration_id, order_id = record.integration_id, record.order_id
        final = record.status in FINAL_STATUSES
        latency = max(0.0, now - record.submitted_at)
        buckets = [str(b) for b in LATENCY_BUCKETS if latency <= b] + ["+Inf"]
        event = _event(
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
        ]
        record_json = json.dumps({"status": record.status, "at": int(now)}) if final else ""
        args: list[Any] = [
            job_id, record.submission_id, repr(now), json.dumps(warnings, ensure_ascii=False),
            "1" if lost_answer else "0", self.result_ttl, order_id, record_json,
            order_ref(integration_id, order_id), repr(now - self.result_ttl),
            self.timeline_ttl, event, integration_id, repr(latency), *buckets,
        ]  # fmt: skip
        with key_types_checked(keys, _WRITTEN_TYPES, integration_id=integration_id):
            return _text(self.redis.eval(_WRITTEN_SCRIPT, len(keys), *keys, *args))

    def mark_failed(self, record: OutboxRecord, job_id: str, reason: str) -> str:
        """End the pending write as failed (permanently) with ``reason``; ``stale`` when
        ``job_id`` no longer owns it."""
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
            self.timeline_ttl, _event(now, "result_failed", reason=reason), integration_id,
        ]  # fmt: skip
        with key_types_checked(keys, _FAILED_TYPES, integration_id=integration_id):
            return _text(self.redis.eval(_FAILED_SCRIPT, len(keys), *keys, *args))

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
        queues it); ``stale`` when ``job_id`` no longer owns it."""
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
            job_id, new_id, repr(when) if delay > 0 else repr(now), "1" if count_attempt else "0",
            error, self.queue.key, repr(now),
        ]  # fmt: skip
        args.extend(
            self._job_items(record.integration_id, record.order_id, new_id, JobStatus.SCHEDULED)
        )
        with key_types_checked(keys, _RESCHEDULE_TYPES, integration_id=record.integration_id):
            return _text(self.redis.eval(_RESCHEDULE_SCRIPT, len(keys), *keys, *args))

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


# KEYS: 1 provisioned zset, 2 results hash, 3 timeline list. ARGV: 1 now, 2 order ref, 3 order
# id, 4 event, 5 timeline TTL. An order whose final result is already written is not stale.
_PROVISIONED_TYPES = ("zset", "hash", "list")
_PROVISIONED_SCRIPT = (
    lua_type_guard(_PROVISIONED_TYPES)
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""
)


def mark_provisioned(
    redis: Redis,
    keys: Keys,
    integration_id: str,
    order_id: str,
    steps: list[str],
    *,
    timeline_ttl: int = 30 * 24 * 3600,
    clock: Callable[[], float] = time.time,
) -> None:
    """Record that the order's handler chain finished (its timeline, and the set ``status``
    reads for orders provisioned long ago without a final result)."""
    now = clock()
    names = [
        keys.provisioned,
        keys.results(integration_id),
        keys.timeline(integration_id, order_id),
    ]
    event = _event(now, "provisioned", steps=steps)
    with key_types_checked(names, _PROVISIONED_TYPES, integration_id=integration_id):
        redis.eval(
            _PROVISIONED_SCRIPT, len(names), *names, repr(now),
            order_ref(integration_id, order_id), order_id, event, max(1, timeline_ttl),
        )  # fmt: skip


class WriteLeases:
    """The cap on Kombo writes in flight per integration, across every process: a sorted set
    per integration of holder -> lease expiry (unix time). A holder that dies stops counting
    once its lease expires."""

    # KEYS: 1 lease zset. ARGV: 1 now, 2 cap, 3 holder, 4 expiry.
    _ACQUIRE = (
        lua_type_guard(("zset",))
        + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[4]) - tonumber(ARGV[1])) * 1000) + 1000)
return 1
"""
    )

    def __init__(
        self, redis: Redis, keys: Keys, cap: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cap = cap
        self._clock = clock

    def acquire(self, integration_id: str, holder: str, ttl: float) -> bool:
        """Take one of the integration's write slots for ``ttl`` seconds; False when full."""
        key = self.keys.kombo_writes(integration_id)
        now = self._clock()
        with key_types_checked([key], ("zset",), integration_id=integration_id):
            return bool(
                self.redis.eval(self._ACQUIRE, 1, key, repr(now), self.cap, holder, repr(now + ttl))
            )

    def release(self, integration_id: str, holder: str) -> None:
        self.redis.zrem(self.keys.kombo_writes(integration_id), holder)

    def in_flight(self, integration_id: str) -> int:
        key = self.keys.kombo_writes(integration_id)
        return int(self.redis.zcount(key, self._clock(), "+inf"))


def _event(at: float, kind: str, **fields: Any) -> str:
    return json.dumps({"at": round(at, 3), "event": kind, **fields}, ensure_ascii=False)


def _record(raw: Mapping[bytes | str, bytes | str]) -> OutboxRecord:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        body = json.loads(fields.get("body", "{}"))
    except ValueError:
        body = {}
    try:
        warnings = tuple(str(w) for w in json.loads(fields.get("warnings", "[]")))
    except (ValueError, TypeError):
        warnings = ()
    state = fields.get("state", "pending")
    return OutboxRecord(
        integration_id=fields.get("integration", ""),
        order_id=fields.get("order", ""),
        state=_state(state),
        status=fields.get("status", ""),
        body=body if isinstance(body, dict) else {},
        submission_id=fields.get("submission", ""),
        submitted_at=_float(fields.get("submitted_at")) or 0.0,
        job_id=fields.get("job", ""),
        attempts=int(_float(fields.get("attempts")) or 0),
        next_attempt_at=_float(fields.get("next_attempt_at")),
        last_error=fields.get("last_error"),
        written_at=_float(fields.get("written_at")),
        warnings=warnings,
        lost_answer=fields.get("lost_answer") == "1",
        reason=fields.get("reason"),
        failed_at=_float(fields.get("failed_at")),
    )


def _state(value: str) -> ResultState:
    for state in STATES:
        if value == state:
            return state
    return "pending"


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
    different one while the first is pending replaces it (Kombo gets the last); after a
    final result (COMPLETED or CANCELLED) was written, FinalResultError. ``settings`` is a
    :class:`dispatcher.Settings`.
    """
    defaulted = not isinstance(result, AssessmentResult) and result.get("completed_at") is None
    return Outbox.from_settings(redis, settings).submit(
        integration_id, order_id, result, completed_at_defaulted=defaulted
    )
