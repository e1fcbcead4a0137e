"""The reconciler's periodic pass and its record (store/reconcile.py does the checking).

A pass is due every ``DISPATCHER_RECONCILE_INTERVAL`` seconds, fleet-wide: ``next_at`` in
``{ns}:reconcile``. Whichever process (a poller) finds it due takes a lease
(``{ns}:reconcile-lease``) in the same script, renews it after every batch and releases it
after the pass; a process that dies mid-pass loses it when it expires, and the pass, still
due, is run by another. Each pass's figures and repairs are recorded in ``{ns}:reconcile`` for
``dispatcher status`` and ``/metrics`` (``dispatcher_reconciled_total{kind}``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.typing import EncodableT, FieldT

from dispatcher._text import as_str
from dispatcher.logs import escape_controls
from dispatcher.store.keys import Keys
from dispatcher.store.lua import script
from dispatcher.store.reconcile import Reconciler, ReconcileReport

__all__ = ["LEASE_TTL", "PeriodicReconcile", "read_state", "record"]

# The periodic pass's lease; renewed after every batch.
LEASE_TTL = 60.0

# The pass's lease: taken when the pass is due, in one step (KEYS and ARGV in the files).
_CLAIM = script("reconcile_claim")
_RENEW = script("lease_renew")
_RELEASE = script("lease_release")


class PeriodicReconcile:
    """The pass every ``interval`` seconds, run by whichever process (a poller) takes the
    lease when it is due: one pass at a time across every process of the namespace."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval: float,
        owner: str,
        *,
        lease_ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reconciler = reconciler
        self.interval = interval
        self.owner = owner
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._keys = reconciler.keys

    def run_if_due(self, stop: threading.Event | None = None) -> ReconcileReport | None:
        """Run a pass if one is due and no other process runs it; record it."""
        redis = self.reconciler.redis
        ttl_ms = int(self.lease_ttl * 1000)
        keys = [self._keys.reconcile, self._keys.reconcile_lease]
        if not _CLAIM(redis, keys, [self._clock(), self.owner, ttl_ms]):
            return None
        try:

            def keep_alive() -> None:
                _RENEW(redis, [self._keys.reconcile_lease], [self.owner, ttl_ms])

            report = self.reconciler.run(stop=stop, keep_alive=keep_alive)
            record(redis, self._keys, report, next_at=self._clock() + self.interval)
            return report
        except Exception as exc:
            # The next attempt waits one interval, as after a pass: a failing pass must not
            # run in a loop.
            redis.hset(
                self._keys.reconcile,
                mapping={
                    "next_at": repr(self._clock() + self.interval),
                    "last_error": escape_controls(f"{type(exc).__name__}: {exc}")[:500],
                },
            )
            raise
        finally:
            _RELEASE(redis, [self._keys.reconcile_lease], [self.owner])


def record(
    redis: Redis, keys: Keys, report: ReconcileReport, *, next_at: float | None = None
) -> None:
    """Save a pass (the periodic one or ``dispatcher reconcile``) for ``status`` and
    ``/metrics``: its figures, and its repairs added to the counters."""
    if report.dry_run:
        return
    with redis.pipeline(transaction=True) as pipe:
        fields: dict[FieldT, EncodableT] = {
            "last_pass_at": repr(report.started_at),
            "last_duration": repr(round(report.duration, 3)),
            "last_orders_checked": str(report.orders_checked),
            "last_results_checked": str(report.results_checked),
            "last_repaired": str(len(report.findings)),
            "last_error": "",
        }
        if next_at is not None:
            fields["next_at"] = repr(next_at)
        pipe.hset(keys.reconcile, mapping=fields)
        for kind, count in report.counts().items():
            pipe.hincrby(keys.reconcile, f"reconciled|{kind}", count)
        pipe.execute()


def read_state(redis: Redis, keys: Keys) -> dict[str, Any]:
    """The reconciler's record: the last pass (``last_*``), ``next_at`` and ``reconciled``
    (repairs by kind since the namespace began). Empty when no pass ever ran."""
    raw = redis.hgetall(keys.reconcile)
    state: dict[str, Any] = {}
    reconciled: dict[str, int] = {}
    for raw_field, raw_value in raw.items():
        name, value = as_str(raw_field), as_str(raw_value)
        if name.startswith("reconciled|"):
            try:
                reconciled[name.partition("|")[2]] = int(value)
            except ValueError:
                continue
        elif name == "last_error":
            state[name] = value or None
        else:
            try:
                state[name] = float(value)
            except ValueError:
                continue
    if state or reconciled:
        state["reconciled"] = reconciled
    return state
