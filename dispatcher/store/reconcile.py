"""The reconciler: every order the ledger dispatched is live or done, every pending result has
a live write; whatever is neither is put back.

RQ's bookkeeping is not the record of an order's fate: the ledger is. An order marked seen
(``{ns}:seen:{integration}``) within the reconciler's window (the shorter of the job's result
and failure TTLs after its dispatch: a finished or failed job is still there that long) must
be in one of these places:

- live: in its queue, its integration's list (waiting for its turn: dispatcher.store.fair)
  or its intermediate list (popped by a worker, not started), in the
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
from dispatcher.store.ledger import Ledger
from dispatcher.store.lua import script
from dispatcher.store.results import Outbox
from dispatcher.store.rq_internals import (
    QUEUES_KEY,
    canceled_key,
    deferred_key,
    executions_key,
    failed_key,
    fair_list_key,
    finished_key,
    intermediate_key,
    job_key,
    queue_key,
    scheduled_key,
    started_key,
)
from dispatcher.store.seen import REJECTED_PREFIX, parse_seen

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

# The first looks (read-only but for dropping dispatch records) and the atomic second looks
# with their repairs, one script each (KEYS and ARGV in their files; a job's place is
# store/lua/_rq_place.lua's).
_LOOK_ORDERS = script("reconcile_look_orders")
_LOOK_RESULTS = script("reconcile_look_results")
_REPAIR_ORDER = script("reconcile_repair_order")
_REPAIR_RESULT = script("reconcile_repair_result")


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
        answer = _LOOK_ORDERS(self.redis, keys, args)
        jobs = dict(batch)
        found: list[_Candidate] = []
        for at in range(0, len(answer), 3):
            order_id, verdict = as_str(answer[at]), as_str(answer[at + 1])
            job_id = jobs[order_id]
            if verdict == "queued" and copy.holds(job_id, integration_id):
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
            fair_list_key(queue, integration_id),
        ]
        args: list[Any] = [
            mode, job_id, order_id, order_ref(integration_id, order_id), queue_key(queue),
            len(self.handlers), *self.handlers,
        ]  # fmt: skip
        if mode == "repair":
            args.extend(self.ledger.shared_job_items())
        outcome, where = _REPAIR_ORDER(self.redis, keys, args, integration_id=integration_id)
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
        answer = _LOOK_RESULTS(self.redis, keys, args)
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
        outcome, where = _REPAIR_RESULT(
            self.redis, keys, args, integration_id=candidate.integration_id
        )
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
    if a queued job asks), and of each integration's list (the fair feeder's: a queued job
    waits there for its turn), read once per pass when one of its jobs asks: a queued job is
    checked against them instead of searching the lists per job. Jobs queued after the copy
    is taken are candidates once; the second look finds them."""

    def __init__(self, redis: Redis, queue: str, chunk: int) -> None:
        self._redis = redis
        self._queue = queue
        self._chunk = chunk
        self._ids: set[bytes] | None = None
        self._waiting: dict[str, set[bytes]] = {}

    def holds(self, job_id: str, integration_id: str | None = None) -> bool:
        if self._ids is None:
            self._ids = set()
            for key in (queue_key(self._queue), intermediate_key(self._queue)):
                self._ids.update(_list_items(self._redis, key, self._chunk))
        if job_id.encode() in self._ids:
            return True
        if integration_id is None:
            return False
        waiting = self._waiting.get(integration_id)
        if waiting is None:
            key = fair_list_key(self._queue, integration_id)
            waiting = self._waiting[integration_id] = set(
                _list_items(self._redis, key, self._chunk)
            )
        return job_id.encode() in waiting


def _list_items(redis: Redis, key: str, chunk: int) -> Iterator[bytes]:
    start = 0
    while True:
        items = redis.lrange(key, start, start + chunk - 1)
        for item in items:
            yield item if isinstance(item, bytes) else str(item).encode()
        if len(items) < chunk:
            return
        start += chunk
