"""Query parameters and cursors of the orders endpoints, and the page they select.

A cursor carries the last order's keyset key and a fingerprint of everything it is only
valid with (endpoint, integration, filters): another filter with an old cursor is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from dispatcher.testing.sim.data import ORDER_STATUSES, Key, StoredOrder, to_us
from dispatcher.testing.sim.envelope import invalid

__all__ = [
    "decode_cursor",
    "encode_cursor",
    "filter_hash",
    "parse_created_after",
    "parse_csv",
    "parse_page_size",
    "parse_statuses",
    "take_page",
]

_MAX_PAGE_SIZE = 250
_DEFAULT_PAGE_SIZE = 100

# The pattern Kombo documents for created_after; re.ASCII so that \d means 0-9 only.
_CREATED_AFTER_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?Z?", re.ASCII
)
_PAGE_SIZE_RE = re.compile(r"[0-9]{1,6}")


def parse_page_size(value: str | None) -> int:
    if value is None:
        return _DEFAULT_PAGE_SIZE
    if not _PAGE_SIZE_RE.fullmatch(value) or not 1 <= int(value) <= _MAX_PAGE_SIZE:
        raise invalid(f"page_size must be an integer from 1 to {_MAX_PAGE_SIZE}, got {value!r}")
    return int(value)


def parse_csv(value: str | None, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not items:
        raise invalid(f"{name} must be a comma-separated list with at least one entry")
    return items


def parse_statuses(value: str | None) -> frozenset[str] | None:
    statuses = parse_csv(value, "statuses")
    bad = sorted(statuses - set(ORDER_STATUSES)) if statuses else []
    if bad:
        raise invalid(
            f"statuses contains {', '.join(map(repr, bad))}; "
            f"allowed values are {', '.join(ORDER_STATUSES)}"
        )
    return statuses


def parse_created_after(value: str | None) -> int | None:
    if value is None:
        return None
    match = _CREATED_AFTER_RE.fullmatch(value)
    message = f"created_after must be a date-time like 2024-05-01T12:00:00.000Z, got {value!r}"
    if not match:
        raise invalid(message)
    year, month, day, hour, minute, second, fraction = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            micros, tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        raise invalid(message) from None
    return to_us(dt)


def filter_hash(*parts: object) -> str:
    """Fingerprint of everything a cursor is only valid with (endpoint, integration, filters)."""
    canonical = json.dumps([sorted(p) if isinstance(p, frozenset) else p for p in parts])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(key: Key, fingerprint: str) -> str:
    raw = f"{key[0]}|{fingerprint}|{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(value: str | None, fingerprint: str) -> Key | None:
    if not value:  # an empty cursor= is what some clients send for "first page"
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")
        created, cursor_fingerprint, order_id = raw.split("|", 2)
        key = (int(created), order_id)
    except ValueError:  # covers binascii.Error and UnicodeDecodeError
        raise invalid(f"cursor {value!r} is not a cursor this API issued") from None
    if cursor_fingerprint != fingerprint:
        raise invalid(
            "cursor was issued for a different endpoint, integration or filters: keep ids, "
            "statuses and created_after the same while paging"
        )
    return key


def take_page(
    orders: Iterable[StoredOrder], statuses: frozenset[str] | None, page_size: int
) -> tuple[list[StoredOrder], Key | None]:
    """The first page_size matching orders, and the cursor key if at least one more matches."""
    page: list[StoredOrder] = []
    for order in orders:
        if statuses is not None and order.status not in statuses:
            continue
        if len(page) == page_size:
            return page, page[-1].key  # a further match exists, so there is a next page
        page.append(order)
    return page, None
