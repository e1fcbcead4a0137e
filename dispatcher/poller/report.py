"""What a sweep found: one integration's (:class:`IntegrationSweep`), every integration's
(:class:`SweepReport`, what ``poll --once --json`` prints), and the sweep record that one
integration's outcome leaves in Redis (:func:`sweep_record`, :func:`with_invalid_orders`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dispatcher.store.sweeps import SweepRecord

__all__ = ["IntegrationSweep", "SweepReport", "sweep_record", "with_invalid_orders"]


@dataclass(slots=True)
class IntegrationSweep:
    """The outcome of sweeping one integration."""

    integration_id: str
    full: bool = True
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    pruned: int = 0
    error: str | None = None
    error_code: str | None = None
    error_order_id: str | None = None
    interrupted: bool = False
    consecutive_failures: int = 0
    # New orders left out because they can never validate ("order X: field Y: problem"):
    # not a failure of the sweep, which dispatched the orders beside them.
    invalid_orders: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SweepReport:
    """The outcome of one sweep of every integration (``poll --once --json`` prints it)."""

    integrations: int = 0
    pages: int = 0
    orders_seen: int = 0
    orders_new: int = 0
    # Integrations not swept to the end because a stop was requested (SIGTERM, SIGINT).
    interrupted: int = 0
    invalid_orders: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    results: list[IntegrationSweep] = field(default_factory=list)

    def add(self, one: IntegrationSweep) -> None:
        self.results.append(one)
        self.integrations += 1
        self.pages += one.pages
        self.orders_seen += one.orders_seen
        self.orders_new += one.orders_new
        self.interrupted += one.interrupted
        self.invalid_orders += len(one.invalid_orders)
        if one.error is not None:
            self.errors[one.integration_id] = one.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "integrations": self.integrations,
            "pages": self.pages,
            "orders_seen": self.orders_seen,
            "orders_new": self.orders_new,
            "interrupted": self.interrupted,
            "invalid_orders": self.invalid_orders,
            "errors": dict(self.errors),
        }


def with_invalid_orders(
    result: IntegrationSweep, record: SweepRecord, now: float
) -> tuple[SweepRecord, bool]:
    """The sweep's ``record`` with its invalid orders; and True when the last ones recorded
    are to be forgotten.

    They stay recorded until a complete full sweep (which sees every OPEN order) finds none:
    an incremental sweep does not see older orders again.
    """
    if result.invalid_orders:
        return replace(
            record,
            invalid_orders=len(result.invalid_orders),
            # Cleaned and bounded when recorded: the message quotes an order id, which Kombo chose.
            last_invalid_order=result.invalid_orders[0],
            last_invalid_at=now,
        ), False
    return record, result.full and result.error is None and not result.interrupted


def sweep_record(
    result: IntegrationSweep, started: float, now: float, generation: int | None
) -> SweepRecord:
    """The sweep hash fields one sweep sets (the invalid-order fields aside)."""
    record = SweepRecord(
        last_attempt_at=now,
        duration=round(now - started, 3),
        consecutive_failures=result.consecutive_failures,
    )
    if result.error is None and not result.interrupted:
        record = replace(
            record,
            last_sweep_at=now,
            watermark=started,
            orders_seen=result.orders_seen,
            orders_new=result.orders_new,
            pages=result.pages,
            last_sweep_kind="full" if result.full else "incremental",
        )
        if generation is not None:
            record = replace(record, full_sweep_at=started, generation=generation)
    elif result.error is not None:
        record = replace(
            record,
            last_error=result.error,
            last_error_code=result.error_code or "",
            last_error_at=now,
        )
    return record
