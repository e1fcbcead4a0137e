"""The seen store's values (``{ns}:seen:{integration}``, order id -> value): when an order was
first dispatched and the last full sweep that saw it OPEN (``<unix time>[:<generation>]``), or
that the vendor rejected it (``rejected:<unix time>``). Written by the ledger's scripts; read
by the ledger, the reconciler, ``replay`` and ``show``.
"""

from __future__ import annotations

from dispatcher._text import as_str

__all__ = ["NOT_MARKED", "REJECTED_PREFIX", "mark_slack", "parse_seen", "seen_generation"]


# The seen value of a rejected order: "rejected:<unix time>" (never a bare number, so it
# cannot be mistaken for a dispatch time).
REJECTED_PREFIX = "rejected:"


def parse_seen(value: bytes | str) -> tuple[float | None, int]:
    """(first seen unix time, generation of the last full sweep that saw it OPEN) of a seen
    value; (None, 0) for a value this version does not write."""
    text = as_str(value)
    first, _, generation = text.partition(":")
    if not first.isdigit():
        return None, 0
    return float(first), int(generation) if generation.isdigit() else 0


def mark_slack(keep_generations: int) -> int:
    # How many full sweeps an OPEN order's mark may lag behind: a full sweep re-marks only
    # marks older than that, so with the default (3 sweeps) it writes one in three sweeps;
    # pruning waits the same number of sweeps longer.
    return max(0, keep_generations - 1)


def seen_generation(value: bytes | str) -> int:
    """The generation in a seen value; a huge one for a rejected order (never re-marked)."""
    first_seen, generation = parse_seen(value)
    return NOT_MARKED if first_seen is None else generation


NOT_MARKED = 1 << 62
