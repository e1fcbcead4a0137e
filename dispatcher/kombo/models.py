"""Typed models of Kombo's assessment order, as its schema says.

Tolerant where Kombo may grow (unknown fields are kept, an unknown enum value is kept as a
plain string) and strict where a wrong value would mislead a handler (types, required fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NamedTuple, overload

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dispatcher._text import first_problem

__all__ = [
    "Application",
    "Candidate",
    "HiringTeamMember",
    "HiringTeamRole",
    "Job",
    "Location",
    "Order",
    "OrderStatus",
    "OrderValidationError",
    "RawOrder",
    "RawOrders",
    "check_id",
    "id_problem",
    "kombo_time",
    "parse_order",
]

# Ids from Kombo name Redis keys, job ids and log lines: bounded, and without the characters
# that would forge a log line or a key (C0 controls, NUL included, DEL, C1 controls) or that
# cannot be encoded (a lone surrogate, which json.loads lets through). Real Kombo ids are a
# few dozen letters and digits.
MAX_ID_LENGTH = 256
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def kombo_time(value: datetime) -> str:
    """A time as Kombo writes one: UTC, milliseconds, ``Z`` (``2024-05-01T12:00:03.250Z``).

    A naive time is taken as UTC: Kombo stores instants.
    """
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an id from Kombo, or None when it can be one."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long, at most {MAX_ID_LENGTH} allowed"
    bad = _BAD_ID_CHAR.search(value)
    if bad is not None:
        kind = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
        return f"contains {kind} (U+{ord(bad.group()):04X}) at position {bad.start()}"
    return None


def check_id(value: str) -> str:
    """Return ``value`` if it can be an id from Kombo, else raise ValueError saying why."""
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


KomboId = Annotated[str, AfterValidator(check_id)]


class OrderStatus(StrEnum):
    OPEN = "OPEN"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


class HiringTeamRole(StrEnum):
    RECRUITER = "RECRUITER"
    HIRING_MANAGER = "HIRING_MANAGER"


# A value this version does not know (Kombo may add one) stays a plain string instead of
# failing the whole page.
_Role = Annotated[HiringTeamRole | str, Field(union_mode="left_to_right")]


class _KomboModel(BaseModel):
    # Unknown fields are kept (and passed on to handlers), never fatal: Kombo adds fields.
    model_config = ConfigDict(extra="allow", frozen=True)


class Candidate(_KomboModel):
    remote_id: str | None = None
    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None

    @property
    def full_name(self) -> str:
        """First and last name, or the email when both are missing."""
        name = " ".join(part for part in (self.first_name, self.last_name) if part)
        return name or self.email


class Application(_KomboModel):
    remote_id: str | None = None


class Location(_KomboModel):
    street_1: str | None = None
    street_2: str | None = None
    city: str | None = None
    state: str | None = None
    zip_code: str | None = None
    country: str | None = None
    raw: str | None = None


class HiringTeamMember(_KomboModel):
    remote_id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    hiring_team_roles: list[_Role]


class Job(_KomboModel):
    remote_id: str | None = None
    name: str | None = None
    job_code: str | None = None
    description: str | None = None
    location: Location | None = None
    hiring_team: list[HiringTeamMember] = Field(default_factory=list)


class Order(_KomboModel):
    """One assessment order. ``status`` is absent on the deprecated open-orders endpoint."""

    id: KomboId
    package_id: KomboId
    status: OrderStatus | str | None = Field(None, union_mode="left_to_right")
    candidate: Candidate
    application: Application
    job: Job

    def to_payload(self) -> dict[str, Any]:
        """The order as Kombo sent it (unknown fields included), JSON-ready."""
        return self.model_dump(mode="json", exclude_unset=True)


class OrderValidationError(ValueError):
    """An order failed validation; the message names the order and the field."""

    def __init__(self, order_id: str, field: str, problem: str) -> None:
        self.order_id = order_id
        self.field = field
        self.problem = problem
        super().__init__(f"order {order_id}: field {field}: {problem}")


def parse_order(raw: Any, *, position: int | None = None) -> Order:
    """Validate one order, raising OrderValidationError that names the order and the field."""
    try:
        return Order.model_validate(raw)
    except ValidationError as exc:
        order_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(order_id, str) or id_problem(order_id) is not None:
            # An id that is not one is not echoed (it may be huge, or forge a log line).
            order_id = f"#{position}" if position is not None else "?"
        raise OrderValidationError(order_id, *first_problem(exc, default="(order)")) from None


class RawOrder(NamedTuple):
    """An order as Kombo sent it, with its id checked and the rest validated on demand.

    A page of 250 orders costs far more to validate than to dedupe: the ledger validates only
    the orders it has not seen (:meth:`parse`), and sends ``data``, what Kombo sent, on to
    the handlers' job. (A named tuple: a page makes 250 of them, and it is the cheapest.)
    """

    id: str
    data: dict[str, Any]
    position: int
    # Set when the order can never validate whatever the ledger knows (a number too large to
    # read, text that is not Unicode): parse() raises it, and only for an order not seen yet.
    problem: OrderValidationError | None = None

    @classmethod
    def check(cls, raw: Any, position: int) -> RawOrder:
        """Wrap one element of a page; OrderValidationError unless it is an object with a
        non-empty string id (what deduplication needs)."""
        order_id = raw.get("id") if type(raw) is dict else None
        if type(order_id) is not str or not order_id:
            parse_order(raw, position=position)  # raises, naming the field
            raise OrderValidationError(f"#{position}", "id", "not a non-empty string")
        return cls(order_id, raw, position)

    def parse(self) -> Order:
        """The validated order; OrderValidationError names the order and the field."""
        if self.problem is not None:
            raise self.problem
        return parse_order(self.data, position=self.position)


class RawOrders(Sequence[RawOrder]):
    """A page's orders: their ids known at once, the orders decoded on first access.

    Decoding 250 orders into Python objects costs ten times more than reading their ids
    (``KomboClient`` reads those first, in pydantic-core, without building the orders); a
    re-sweep, where every order was seen before, never needs the orders themselves.
    """

    __slots__ = ("_decode", "_ids", "_orders")

    def __init__(self, ids: list[str], decode: Callable[[], list[Any]]) -> None:
        """``decode`` returns the page's orders as Kombo sent them, in the order of ``ids``."""
        self._ids = ids
        self._decode: Callable[[], list[Any]] | None = decode
        self._orders: list[RawOrder] | None = None

    @property
    def ids(self) -> list[str]:
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> RawOrder: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RawOrder]: ...
    def __getitem__(self, index: int | slice) -> RawOrder | Sequence[RawOrder]:
        return self._load()[index]

    def _load(self) -> list[RawOrder]:
        if self._orders is None:
            assert self._decode is not None
            self._orders = [
                RawOrder(order_id, raw, position)
                for position, (order_id, raw) in enumerate(
                    zip(self._ids, self._decode(), strict=True)  # ValueError if they differ
                )
            ]
            self._decode = None
        return self._orders
