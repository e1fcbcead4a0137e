"""What the results outbox (dispatcher.store.results) hands its callers: an order's result as
it holds it (:class:`OutboxRecord`, read from ``{ns}:outbox:{integration}:{order}``), the
receipt of a submit (:class:`ResultReceipt`) and the refusals of one (nothing stored)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher._text import as_float, as_str

__all__ = [
    "STATES",
    "FinalResultError",
    "OutboxRecord",
    "ResultInFlightError",
    "ResultReceipt",
    "ResultState",
    "UnknownOrderError",
    "record_from_hash",
]

ResultState = Literal["pending", "written", "failed"]
STATES: tuple[ResultState, ...] = ("pending", "written", "failed")


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


class ResultInFlightError(FinalResultError):
    """A final result of the order is on its way to Kombo (an attempt was sent): Kombo may
    already hold it and takes no other, so a different body is refused (nothing stored)."""

    def __init__(self, integration_id: str, order_id: str, status: str) -> None:
        super().__init__(integration_id, order_id, status)
        Exception.__init__(
            self,
            f"order {order_id} (integration {integration_id}): a final result ({status}) is "
            "being written; Kombo takes no other result",
        )


class UnknownOrderError(LookupError):
    """The dispatcher never dispatched the order (unknown, rejected, or an unknown
    integration): nothing was stored."""

    def __init__(self, integration_id: str, order_id: str, rejected: bool = False) -> None:
        self.integration_id = integration_id
        self.order_id = order_id
        why = "it rejected it" if rejected else "unknown order or integration"
        super().__init__(
            f"order {order_id} (integration {integration_id}): the dispatcher never "
            f"dispatched this order ({why})"
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

    @property
    def written(self) -> bool:
        """The body was already written (a duplicate of the written one)."""
        return self.state == "written"

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
    digest: str = ""
    sent: bool = False
    read_back: str | None = None
    kombo_result: dict[str, Any] | None = None
    next_submission_id: str | None = None

    @property
    def result_url(self) -> str | None:
        """Where the customer sees the result: the written body's, or the one Kombo showed
        it holds when a read-back found another body there."""
        held = self.kombo_result or self.body
        url = held.get("result_url")
        return url if isinstance(url, str) else None

    def as_dict(self, *, with_body: bool = False) -> dict[str, Any]:
        """The JSON shape of ``GET /orders/{integration}/{order}/result`` and ``results
        --json`` (the body only when asked: attachments are large)."""
        out: dict[str, Any] = {
            "integration_id": self.integration_id,
            "order_id": self.order_id,
            "state": self.state,
            "status": self.status,
            "result_url": self.result_url,
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
            "read_back": self.read_back,
        }
        if self.kombo_result is not None:
            out["kombo_result"] = self.kombo_result
        if self.next_submission_id is not None:
            out["next_submission_id"] = self.next_submission_id
        if with_body:
            out["body"] = self.body
        return out


def record_from_hash(raw: Mapping[bytes | str, bytes | str]) -> OutboxRecord:
    """An outbox hash (``HGETALL``) as a record; a field missing or unreadable gets its
    default."""
    fields = {as_str(k): as_str(v) for k, v in raw.items()}
    try:
        body = json.loads(fields.get("body", "{}"))
    except ValueError:
        body = {}
    try:
        warnings = tuple(str(w) for w in json.loads(fields.get("warnings", "[]")))
    except (ValueError, TypeError):
        warnings = ()
    state = fields.get("state", "pending")
    try:
        kombo_result = json.loads(fields["kombo_result"]) if "kombo_result" in fields else None
    except ValueError:
        kombo_result = None
    return OutboxRecord(
        integration_id=fields.get("integration", ""),
        order_id=fields.get("order", ""),
        state=_state(state),
        status=fields.get("status", ""),
        body=body if isinstance(body, dict) else {},
        submission_id=fields.get("submission", ""),
        submitted_at=as_float(fields.get("submitted_at")) or 0.0,
        job_id=fields.get("job", ""),
        attempts=int(as_float(fields.get("attempts")) or 0),
        next_attempt_at=as_float(fields.get("next_attempt_at")),
        last_error=fields.get("last_error"),
        written_at=as_float(fields.get("written_at")),
        warnings=warnings,
        lost_answer=fields.get("lost_answer") == "1",
        reason=fields.get("reason"),
        failed_at=as_float(fields.get("failed_at")),
        digest=fields.get("digest", ""),
        sent=fields.get("sent") == "1",
        read_back=fields.get("read_back"),
        kombo_result=kombo_result if isinstance(kombo_result, dict) else None,
        next_submission_id=fields.get("next_submission"),
    )


def _state(value: str) -> ResultState:
    for state in STATES:
        if value == state:
            return state
    return "pending"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
