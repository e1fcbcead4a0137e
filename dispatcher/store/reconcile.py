"""The reconciler: every order the ledger dispatched is live or done, every pending result has
a live write; whatever is neither is put back.

RQ's bookkeeping is not the record of an order's fate: the ledger is. An order marked seen
(``{ns}:seen:{integration}``) within the reconciler's window (the shorter of the job's result
and failure TTLs after its dispatch: a finished or failed job is still there that long) must
be in one of these places:

- live: in its queue or its intermediate list (popped by a worker, not started), in the
  started registry (through the job's executions), the scheduled or the deferred registry;
- done: its job finished, its final result written (``{ns}:results:{integration}``), its
  chain finished (``{ns}:provisioned``) or every configured step recorded;
- failed and visible: in the failed (or canceled) registry, which ``dispatcher failed`` lists.

An order in none of them (a job lost by a Redis failover or an AOF ``everysec`` crash, a
worker killed in one of RQ's unguarded windows, a job hash deleted by hand) is put back on its
queue with the same job id: its job hash is re-queued as it is, or rebuilt from the order's
dispatch record (``{ns}:dispatched:...``, written by the dispatch script) when it is gone.
With neither left, the seen mark is removed, so that the next sweep dispatches the order again
if Kombo still lists it OPEN. A pending result (``{ns}:outbox-pending``) whose owner job is not
queued, scheduled or running is put back the same way (rebuilt from the outbox hash).

Why a job is never doubled nor dropped (docs/reliability.md): every move RQ makes between
these places is one MULTI/EXEC (the BLMOVE into the intermediate list, the started-registry
entry written before the intermediate entry is removed, success, failure, retry, the
scheduler's enqueue) or one of the dispatcher's Lua scripts, so one Lua script that looks at
every place sees a job in one of them, never in between; the same script re-queues it only
if it is in none, so no worker can take it meanwhile. The one look is still not enough on its
own: RQ has windows outside a transaction (``Job.retry`` writes the status before the
pipeline; its intermediate-list cleanup fails a job and then removes it), and other
processes may have windows we do not know of. So a pass looks twice: a cheap, batched first
look names the candidates, and only those still in no place ``GRACE_SECONDS`` later, at the
atomic second look, are put back. A window would have to stay open for that long.

Cost: the first look is one ``HSCAN`` of each seen hash and one read-only script per batch of
``BATCH`` orders (no list is searched: a queued job's presence is checked against one copy of
the queue taken per pass in ``LRANGE`` chunks). No command of the first look touches more
than ``BATCH`` orders or list entries, so a pass over a million orders never blocks Redis for
long. The second look searches the queue with ``LPOS`` (as long as the queue), but only for
the candidates: the few jobs that were in no place at the first look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from dispatcher._text import as_str
from dispatcher.logs import escape_controls
from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.ledger import REJECTED_PREFIX, Ledger, parse_seen
from dispatcher.store.results import Outbox
from dispatcher.store.rq_internals import (
    QUEUES_KEY,
    canceled_key,
    deferred_key,
    executions_key,
    failed_key,
    finished_key,
    intermediate_key,
    job_key,
    queue_key,
    scheduled_key,
    started_key,
)
from dispatcher.store.wrongtype import key_types_checked, lua_type_guard

__all__ = [
    "BATCH",
    "GRACE_SECONDS",
    "Finding",
    "ReconcileReport",
    "Reconciler",
]

log = logging.getLogger("dispatcher.reconcile")

# Orders (or results) per first-look script and per LRANGE chunk of a queue copy: a script
# over 200 orders runs about 800 commands, a few milliseconds (7 ms on a loaded 2-core
# machine, bench/reconcile.py): what another client may wait behind it.
BATCH = 200
# Between the first look and the atomic second one: far longer than any of RQ's windows
# (milliseconds), short enough for a command an operator waits for.
GRACE_SECONDS = 5.0

# The place of a job: started (through its executions), scheduled, deferred, failed,
# canceled, finished; false when in none of them (the lists are the caller's to search).
_PLACE_LUA = """
local function rq_place(job, job_id, executions, wip, scheduled, deferred, failed, canceled)
  local status = redis.call('HGET', job, 'status')
  for _, execution in ipairs(redis.call('ZRANGE', executions, 0, -1)) do
    if redis.call('ZSCORE', wip, job_id .. ':' .. execution) then return 'started', status end
  end
  if redis.call('ZSCORE', scheduled, job_id) then return 'scheduled', status end
  if redis.call('ZSCORE', deferred, job_id) then return 'deferred', status end
  if redis.call('ZSCORE', failed, job_id) then return 'failed', status end
  if redis.call('ZSCORE', canceled, job_id) then return 'canceled', status end
  if status == 'finished' then return 'finished', status end
  return false, status
end
local function all_steps(steps, first, count)
  if count == 0 then return false end
  for i = first, first + count - 1 do
    if redis.call('HEXISTS', steps, ARGV[i]) == 0 then return false end
  end
  return true
end
"""

# The first look at a batch of orders (read-only but for dropping the dispatch records of
# orders that are done when ARGV[1] is '1').
# KEYS: 1 started, 2 scheduled, 3 deferred, 4 failed, 5 canceled registries, 6 provisioned
#       zset, 7 results hash, then per order: job hash, executions zset, steps hash, record.
# ARGV: 1 drop records ('1'/'0'), 2 h = number of handlers, h handler names, then per order:
#       order id, job id, order ref.
# Answers, per order that is not plainly live or done: order id, 'queued' (a queued job:
# the caller checks its queue copy) or 'lost', the job's status ('' when no job).
_LOOK_ORDERS = (
    _PLACE_LUA
    + """
local h = tonumber(ARGV[2])
local out = {}
local k = 8
for a = 3 + h, #ARGV, 3 do
  local order_id, job_id, ref = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local done = redis.call('HEXISTS', KEYS[7], order_id) == 1
    or redis.call('ZSCORE', KEYS[6], ref)
  local place, status = false, false
  if not done then
    place, status = rq_place(KEYS[k], job_id, KEYS[k + 1], KEYS[1], KEYS[2], KEYS[3],
      KEYS[4], KEYS[5])
    if not place and all_steps(KEYS[k + 2], 3, h) then done = true end
  end
  if done or place == 'finished' or place == 'failed' or place == 'canceled' then
    if ARGV[1] == '1' then redis.call('DEL', KEYS[k + 3]) end
  elseif not place then
    out[#out + 1] = order_id
    out[#out + 1] = status == 'queued' and 'queued' or 'lost'
    out[#out + 1] = status or ''
  end
  k = k + 4
end
return out
"""
)

# The second look at one order, atomic, and its repair.
# KEYS: 1 queue list, 2 rq:queues set, 3 seen hash, 4 job hash, 5 intermediate list,
#       6 executions zset, 7 started, 8 scheduled, 9 deferred, 10 failed, 11 canceled
#       registries, 12 provisioned zset, 13 results hash, 14 steps hash, 15 dispatch record.
# ARGV: 1 mode ('check' or 'repair'), 2 job id, 3 order id, 4 order ref, 5 queue key (for
#       rq:queues), 6 h, h handler names, then the shared job-hash items (for a rebuild).
# Answers {outcome, where}: outcome 'gone' (forgotten or rejected meanwhile), 'done', 'live',
# 'lost' (check mode), 'requeued' (its job hash re-queued), 'rebuilt' (from the dispatch
# record), 'unmarked' (nothing to rebuild from: the seen mark removed, the next sweep
# dispatches the order again if it is still OPEN).
_ORDER_TYPES = ("list", "set", "hash")
_REPAIR_ORDER = (
    lua_type_guard(_ORDER_TYPES)
    + _PLACE_LUA
    + """
local seen = redis.call('HGET', KEYS[3], ARGV[3])
if not seen or string.sub(seen, 1, 9) == 'rejected:' then return {'gone', ''} end
if redis.call('HEXISTS', KEYS[13], ARGV[3]) == 1 then return {'done', 'result written'} end
if redis.call('ZSCORE', KEYS[12], ARGV[4]) then return {'done', 'provisioned'} end
local place, status = rq_place(KEYS[4], ARGV[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11])
if place then return {'live', place} end
if redis.call('LPOS', KEYS[1], ARGV[2]) then return {'live', 'queued'} end
if redis.call('LPOS', KEYS[5], ARGV[2]) then return {'live', 'intermediate'} end
local h = tonumber(ARGV[6])
if all_steps(KEYS[14], 7, h) then return {'done', 'steps recorded'} end
local exists = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local where = 'no job'
if exists then where = 'job ' .. (status or 'without status') .. ', in no queue or registry' end
if ARGV[1] ~= 'repair' then return {'lost', where} end
local outcome
if exists then
  redis.call('HSET', KEYS[4], 'status', 'queued')
  redis.call('PERSIST', KEYS[4])
  outcome = 'requeued'
elseif redis.call('TYPE', KEYS[15])['ok'] == 'hash' then
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], unpack(ARGV, 7 + h, #ARGV))
  redis.call('HSET', KEYS[4], unpack(redis.call('HGETALL', KEYS[15])))
  outcome = 'rebuilt'
else
  redis.call('HDEL', KEYS[3], ARGV[3])
  return {'unmarked', where}
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
return {outcome, where}
"""
)

# The first look at a batch of pending results.
# KEYS: 1 started, 2 scheduled, 3 deferred registries of the results queue, then per result:
#       outbox hash, then (read by the script from the outbox) nothing else.
# ARGV: per result: order ref. Answers per result not plainly live: ref, job id, 'queued' or
#       'lost', the job's status ('' when no job).
# Job keys are built from the outbox's ``job`` field inside the script (the owner changes
# with every reschedule; reading it first from Python would race with that).
_LOOK_RESULTS = (
    _PLACE_LUA
    + """
local out = {}
for i = 4, #KEYS do
  local current = redis.call('HMGET', KEYS[i], 'state', 'job')
  if current[1] == 'pending' and current[2] then
    local job_id = current[2]
    local place, status = rq_place(ARGV[1] .. job_id, job_id, ARGV[2] .. job_id, KEYS[1],
      KEYS[2], KEYS[3], '', '')
    if not place or place == 'finished' then
      out[#out + 1] = ARGV[i - 1]
      out[#out + 1] = job_id
      out[#out + 1] = status == 'queued' and place ~= 'finished' and 'queued' or 'lost'
      out[#out + 1] = status or ''
    end
  end
end
return out
"""
)

# The second look at one pending result, atomic, and its repair.
# KEYS: 1 queue list, 2 rq:queues set, 3 outbox hash, 4 job hash, 5 intermediate list,
#       6 executions zset, 7 started, 8 scheduled, 9 deferred, 10 failed, 11 canceled,
#       12 finished registries.
# ARGV: 1 mode, 2 job id, 3 queue key, then the job-hash items of a queued write job.
_RESULT_TYPES = ("list", "set", "hash")
_REPAIR_RESULT = (
    lua_type_guard(_RESULT_TYPES)
    + _PLACE_LUA
    + """
local current = redis.call('HMGET', KEYS[3], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[2] then return {'gone', ''} end
local place, status = rq_place(KEYS[4], ARGV[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9], '', '')
if place and place ~= 'finished' then return {'live', place} end
if redis.call('LPOS', KEYS[1], ARGV[2]) then return {'live', 'queued'} end
if redis.call('LPOS', KEYS[5], ARGV[2]) then return {'live', 'intermediate'} end
local exists = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local where = 'no write job'
if exists then
  where = 'write job ' .. (status or 'without status') .. ', not queued, scheduled or running'
end
if ARGV[1] ~= 'repair' then return {'lost', where} end
local outcome = 'requeued'
if exists then
  redis.call('HSET', KEYS[4], 'status', 'queued')
  redis.call('PERSIST', KEYS[4])
else
  redis.call('HSET', KEYS[4], unpack(ARGV, 4, #ARGV))
  outcome = 'rebuilt'
end
for i = 10, 12 do redis.call('ZREM', KEYS[i], ARGV[2]) end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return {outcome, where}
"""
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One order or result that was in no place at both looks, and what was done."""

    kind: str  # "order" or "result"
    integration_id: str
    order_id: str
    job_id: str
    where: str  # where it was: "no job", "job scheduled, in no queue or registry"...
    action: str  # what was done (_ACTIONS); "would put back" in a dry run

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "integration_id": self.integration_id,
            "order_id": self.order_id,
            "job_id": self.job_id,
            "where": self.where,
            "action": self.action,
        }

    def line(self) -> str:
        what = "result of order" if self.kind == "result" else "order"
        return (
            f"{what} {escape_controls(self.order_id)} (integration "
            f"{escape_controls(self.integration_id)}, job {self.job_id}): {self.where}; "
            f"{self.action}"
        )


@dataclass(slots=True)
class ReconcileReport:
    """What one pass found and did."""

    dry_run: bool = False
    started_at: float = 0.0
    duration: float = 0.0
    orders_checked: int = 0
    results_checked: int = 0
    candidates: int = 0  # in no place at the first look
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Repairs by metric kind: ``order`` (re-queued or rebuilt), ``unmarked``, ``result``."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            if self.dry_run:
                continue
            kind = "unmarked" if finding.action == _ACTIONS["unmarked"] else finding.kind
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``dispatcher reconcile --json``."""
        return {
            "dry_run": self.dry_run,
            "started_at": round(self.started_at, 3),
            "duration": round(self.duration, 3),
            "orders_checked": self.orders_checked,
            "results_checked": self.results_checked,
            "candidates": self.candidates,
            "repaired": self.counts(),
            "findings": [finding.as_dict() for finding in self.findings],
        }


@dataclass(frozen=True, slots=True)
class _Candidate:
    kind: str
    integration_id: str
    order_id: str
    job_id: str


class Reconciler:
    """Checks the ledger and the outbox against RQ's places and puts back what is in none."""

    def __init__(
        self,
        ledger: Ledger,
        outbox: Outbox,
        handlers: Sequence[str],
        *,
        grace: float = GRACE_SECONDS,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.redis: Redis = ledger.redis
        self.keys: Keys = ledger.keys
        self.handlers = list(handlers)
        self.grace = grace
        self.batch = max(1, batch)
        self.window = ledger.record_ttl
        self._clock = clock
        self._look_orders = self.redis.register_script(_LOOK_ORDERS)
        self._look_results = self.redis.register_script(_LOOK_RESULTS)
        self._repair_order = self.redis.register_script(_REPAIR_ORDER)
        self._repair_result = self.redis.register_script(_REPAIR_RESULT)

    # -- one pass -------------------------------------------------------------------------

    def run(
        self,
        *,
        integration_id: str | None = None,
        dry_run: bool = False,
        stop: threading.Event | None = None,
        keep_alive: Callable[[], None] = lambda: None,
    ) -> ReconcileReport:
        """One pass: the first look over every order and pending result, then, after the
        grace, the atomic second look (and repair, unless ``dry_run``) of the candidates.
        ``keep_alive`` is called after every batch (the periodic pass renews its lease)."""
        stop = stop or threading.Event()
        report = ReconcileReport(dry_run=dry_run, started_at=self._clock())
        began = time.monotonic()
        candidates: list[_Candidate] = []
        # One copy of the queue per pass, whatever the number of integrations (taken when
        # the first queued job asks).
        copy = _QueueCopy(self.redis, self.ledger.queue.name, self.batch)
        for integration in self._integrations(integration_id):
            candidates.extend(
                self._look_at_orders(integration, report, copy, not dry_run, keep_alive)
            )
            if stop.is_set():
                break
        candidates.extend(self._look_at_results(integration_id, report, keep_alive))
        report.candidates = len(candidates)
        if candidates and not stop.is_set():
            stop.wait(self.grace)
            mode = "check" if dry_run else "repair"
            for candidate in candidates:
                finding = self._second_look(candidate, mode)
                if finding is not None:
                    report.findings.append(finding)
                    if not dry_run:
                        log.warning("reconcile: %s", finding.line())
        report.duration = time.monotonic() - began
        return report

    def _integrations(self, integration_id: str | None) -> list[str]:
        if integration_id is not None:
            return [integration_id]
        return sorted(as_str(i) for i in self.redis.smembers(self.keys.seen_integrations))

    # -- orders ---------------------------------------------------------------------------

    def _look_at_orders(
        self,
        integration_id: str,
        report: ReconcileReport,
        copy: _QueueCopy,
        drop_records: bool,
        keep_alive: Callable[[], None],
    ) -> list[_Candidate]:
        if self.window <= 0:
            return []  # no window: a finished job may be gone at once, nothing to tell by
        since = self._clock() - self.window
        found: list[_Candidate] = []
        seen_key = self.keys.seen(integration_id)
        batch: list[tuple[str, str]] = []
        for raw_order, value in self.redis.hscan_iter(seen_key, count=self.batch):
            text = as_str(value)
            if text.startswith(REJECTED_PREFIX):
                continue
            first_seen, _ = parse_seen(text)
            if first_seen is None or first_seen < since:
                continue
            order_id = as_str(raw_order)
            batch.append((order_id, self.ledger.job_id(integration_id, order_id)))
            if len(batch) >= self.batch:
                found.extend(self._look_at_batch(integration_id, batch, copy, drop_records))
                report.orders_checked += len(batch)
                batch = []
                keep_alive()
        if batch:
            found.extend(self._look_at_batch(integration_id, batch, copy, drop_records))
            report.orders_checked += len(batch)
            keep_alive()
        return found

    def _look_at_batch(
        self,
        integration_id: str,
        batch: list[tuple[str, str]],
        copy: _QueueCopy,
        drop_records: bool,
    ) -> list[_Candidate]:
        queue = self.ledger.queue.name
        keys = [
            started_key(queue),
            scheduled_key(queue),
            deferred_key(queue),
            failed_key(queue),
            canceled_key(queue),
            self.keys.provisioned,
            self.keys.results(integration_id),
        ]
        args: list[Any] = ["1" if drop_records else "0", len(self.handlers), *self.handlers]
        for order_id, job_id in batch:
            keys.extend(
                (
                    job_key(job_id),
                    executions_key(job_id),
                    self.keys.steps(integration_id, order_id),
                    self.keys.dispatched(integration_id, order_id),
                )
            )
            args.extend((order_id, job_id, order_ref(integration_id, order_id)))
        answer = self._look_orders(keys=keys, args=args)
        jobs = dict(batch)
        found: list[_Candidate] = []
        for at in range(0, len(answer), 3):
            order_id, verdict = as_str(answer[at]), as_str(answer[at + 1])
            job_id = jobs[order_id]
            if verdict == "queued" and copy.holds(job_id):
                continue
            found.append(_Candidate("order", integration_id, order_id, job_id))
        return found

    def _second_look_order(self, candidate: _Candidate, mode: str) -> tuple[str, str]:
        queue = self.ledger.queue.name
        integration_id, order_id, job_id = (
            candidate.integration_id,
            candidate.order_id,
            candidate.job_id,
        )
        keys = [
            queue_key(queue),
            QUEUES_KEY,
            self.keys.seen(integration_id),
            job_key(job_id),
            intermediate_key(queue),
            executions_key(job_id),
            started_key(queue),
            scheduled_key(queue),
            deferred_key(queue),
            failed_key(queue),
            canceled_key(queue),
            self.keys.provisioned,
            self.keys.results(integration_id),
            self.keys.steps(integration_id, order_id),
            self.keys.dispatched(integration_id, order_id),
        ]
        args: list[Any] = [
            mode, job_id, order_id, order_ref(integration_id, order_id), queue_key(queue),
            len(self.handlers), *self.handlers,
        ]  # fmt: skip
        if mode == "repair":
            args.extend(self.ledger.shared_job_items())
        with key_types_checked(keys, _ORDER_TYPES, integration_id=integration_id):
            outcome, where = self._repair_order(keys=keys, args=args)
        return as_str(outcome), as_str(where)

    # -- results --------------------------------------------------------------------------

    def _look_at_results(
        self,
        integration_id: str | None,
        report: ReconcileReport,
        keep_alive: Callable[[], None],
    ) -> list[_Candidate]:
        queue = self.outbox.queue.name
        copy = _QueueCopy(self.redis, queue, self.batch)
        found: list[_Candidate] = []
        pending = self.keys.outbox_index("pending")
        refs: list[str] = []
        for raw_ref, _score in self.redis.zscan_iter(pending, count=self.batch):
            refs.append(as_str(raw_ref))
            if len(refs) >= self.batch:
                found.extend(self._look_at_result_batch(refs, copy, integration_id, report))
                refs = []
                keep_alive()
        if refs:
            found.extend(self._look_at_result_batch(refs, copy, integration_id, report))
            keep_alive()
        return found

    def _look_at_result_batch(
        self,
        refs: list[str],
        copy: _QueueCopy,
        integration_id: str | None,
        report: ReconcileReport,
    ) -> list[_Candidate]:
        queue = self.outbox.queue.name
        keys = [started_key(queue), scheduled_key(queue), deferred_key(queue)]
        keys.extend(f"{self.keys.namespace}:outbox:{ref}" for ref in refs)
        args = [job_key(""), executions_key(""), *refs]
        # ARGV[1], ARGV[2] are the key prefixes; the refs follow (ARGV[i - 1] for KEYS[i]).
        answer = self._look_results(keys=keys, args=args)
        report.results_checked += len(refs)
        found: list[_Candidate] = []
        for at in range(0, len(answer), 4):
            job_id, verdict = as_str(answer[at + 1]), as_str(answer[at + 2])
            if verdict == "queued" and copy.holds(job_id):
                continue
            ref = as_str(answer[at])
            record = self.outbox.redis.hmget(
                f"{self.keys.namespace}:outbox:{ref}", ["integration", "order"]
            )
            if record[0] is None or record[1] is None:
                continue
            integration, order = as_str(record[0]), as_str(record[1])
            if integration_id is not None and integration != integration_id:
                continue
            found.append(_Candidate("result", integration, order, job_id))
        return found

    def _second_look_result(self, candidate: _Candidate, mode: str) -> tuple[str, str]:
        queue = self.outbox.queue.name
        job_id = candidate.job_id
        keys = [
            queue_key(queue),
            QUEUES_KEY,
            self.keys.outbox(candidate.integration_id, candidate.order_id),
            job_key(job_id),
            intermediate_key(queue),
            executions_key(job_id),
            started_key(queue),
            scheduled_key(queue),
            deferred_key(queue),
            failed_key(queue),
            canceled_key(queue),
            finished_key(queue),
        ]
        args: list[Any] = [mode, job_id, queue_key(queue)]
        if mode == "repair":
            args.extend(
                self.outbox.queued_job_items(candidate.integration_id, candidate.order_id, job_id)
            )
        with key_types_checked(keys, _RESULT_TYPES, integration_id=candidate.integration_id):
            outcome, where = self._repair_result(keys=keys, args=args)
        return as_str(outcome), as_str(where)

    # -- the second look ------------------------------------------------------------------

    def _second_look(self, candidate: _Candidate, mode: str) -> Finding | None:
        if candidate.kind == "order":
            outcome, where = self._second_look_order(candidate, mode)
        else:
            outcome, where = self._second_look_result(candidate, mode)
        if outcome in ("gone", "done", "live"):
            return None
        return Finding(
            candidate.kind,
            candidate.integration_id,
            candidate.order_id,
            candidate.job_id,
            where,
            _ACTIONS.get(outcome, outcome),
        )


# What a second look's outcome means, as Finding.action.
_ACTIONS = {
    "lost": "would put back",
    "requeued": "put back on its queue",
    "rebuilt": "rebuilt from its dispatch record and put back on its queue",
    "unmarked": "unmarked (nothing to rebuild its job from): the next sweep dispatches it "
    "again if Kombo still lists it OPEN",
}


class _QueueCopy:
    """The job ids of a queue and its intermediate list, read once per pass in chunks (only
    if a queued job asks): a queued job is checked against it instead of searching the list
    per job. Jobs queued after the copy is taken are candidates once; the second look finds
    them."""

    def __init__(self, redis: Redis, queue: str, chunk: int) -> None:
        self._redis = redis
        self._queue = queue
        self._chunk = chunk
        self._ids: set[bytes] | None = None

    def holds(self, job_id: str) -> bool:
        if self._ids is None:
            self._ids = set()
            for key in (queue_key(self._queue), intermediate_key(self._queue)):
                self._ids.update(_list_items(self._redis, key, self._chunk))
        return job_id.encode() in self._ids


def _list_items(redis: Redis, key: str, chunk: int) -> Iterator[bytes]:
    start = 0
    while True:
        items = redis.lrange(key, start, start + chunk - 1)
        for item in items:
            yield item if isinstance(item, bytes) else str(item).encode()
        if len(items) < chunk:
            return
        start += chunk
