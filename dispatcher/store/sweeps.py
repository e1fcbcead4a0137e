"""The sweep record: what the poller keeps about one integration's sweeps, in the hash
``{ns}:sweep:{integration}`` (:meth:`dispatcher.store.keys.Keys.sweep`).

The poller writes it after every sweep (:meth:`SweepRecord.to_fields`, a partial update: a
failed sweep leaves the last successful one's fields as they were); the next sweep,
``dispatcher status`` and ``dispatcher integrations list`` read it (:meth:`SweepRecord.from_hash`).
The field names are those of deployed data: rename none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.typing import EncodableT, FieldT

from dispatcher.untrusted import untrusted_text

__all__ = ["ERROR_COUNT", "INVALID_ORDER_FIELDS", "MAX_MESSAGE", "SweepRecord"]

# Counted with HINCRBY by the poller (one per failed sweep), never set from a record.
ERROR_COUNT = "error_count"
# The invalid-order fields, deleted together once a complete full sweep finds none.
INVALID_ORDER_FIELDS = ("invalid_orders", "last_invalid_order", "last_invalid_at")
# Fields holding Kombo's words (an error message, an order id): cleaned again when read, for
# records written before the poller cleaned them and by whatever else can write Redis.
_UNTRUSTED = frozenset({"last_error", "last_invalid_order", "last_error_code", "last_sweep_kind"})
MAX_MESSAGE = 500

_FLOATS = frozenset(
    {
        "last_attempt_at",
        "duration",
        "last_sweep_at",
        "watermark",
        "full_sweep_at",
        "last_error_at",
        "last_invalid_at",
    }
)
_INTS = frozenset(
    {
        "consecutive_failures",
        "orders_seen",
        "orders_new",
        "pages",
        "generation",
        "invalid_orders",
        ERROR_COUNT,
    }
)


@dataclass(frozen=True, slots=True)
class SweepRecord:
    """One integration's sweep hash, typed. ``None``: the field is absent (or unreadable).

    Times are unix seconds. A sweep sets ``last_attempt_at``, ``duration`` and
    ``consecutive_failures``; a complete one also ``last_sweep_at``, ``watermark`` (its start),
    the counts and ``last_sweep_kind``, and a full one ``full_sweep_at`` and ``generation``
    (what pruning reads); a failed one ``last_error``, ``last_error_code`` (``""`` when
    Kombo gave none) and ``last_error_at``; one that met invalid orders the ``invalid_*``
    fields.
    """

    last_attempt_at: float | None = None
    duration: float | None = None
    consecutive_failures: int | None = None
    last_sweep_at: float | None = None
    watermark: float | None = None
    orders_seen: int | None = None
    orders_new: int | None = None
    pages: int | None = None
    last_sweep_kind: str | None = None  # "full" or "incremental"
    full_sweep_at: float | None = None
    generation: int | None = None
    last_error: str | None = None
    last_error_code: str | None = None
    last_error_at: float | None = None
    invalid_orders: int | None = None
    last_invalid_order: str | None = None
    last_invalid_at: float | None = None
    error_count: int | None = None  # read only: the poller counts it with HINCRBY

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> SweepRecord:
        """The record from ``HGETALL``'s answer (bytes, or text from a decoding client).

        A field that does not parse as its type is read as absent, like a missing one: one
        garbled value must not stop the poller or ``status``. Unknown fields are ignored."""
        values: dict[str, float | int | str | None] = {}
        for key, value in raw.items():
            name = key.decode(errors="replace") if isinstance(key, bytes) else key
            if name not in _FIELDS:
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            values[name] = _parse(name, text)
        return cls(**values)  # type: ignore[arg-type]  # each value parsed as its field's type

    def to_fields(self) -> dict[FieldT, EncodableT]:
        """The fields to ``HSET``: those that are set (``error_count`` never: it is counted)."""
        return {
            name: value
            for name in _FIELDS
            if name != ERROR_COUNT and (value := getattr(self, name)) is not None
        }


_FIELDS = tuple(f.name for f in dataclasses.fields(SweepRecord))


def _parse(name: str, text: str) -> float | int | str | None:
    try:
        if name in _FLOATS:
            return float(text) if text else None
        if name in _INTS:
            return int(text) if text else None
    except ValueError:
        return None
    return untrusted_text(text, MAX_MESSAGE) if name in _UNTRUSTED else text
