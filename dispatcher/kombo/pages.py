"""Kombo's order pages, decoded defensively: a page of orders, its cursor, and what spoils it.

A re-sweep reads only a page's ids and cursor (:func:`read_page`); a page the fast path cannot
read is decoded in full and checked value by value (:func:`parse_page`), so that one order's
bad value spoils that order, not its page. :func:`follow_pages` follows the cursors, each once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from json import loads as _json_loads
from typing import Annotated, Any, NotRequired

from pydantic import Field, TypeAdapter
from pydantic_core import from_json
from typing_extensions import TypedDict

from dispatcher.kombo.errors import KomboLimitError
from dispatcher.kombo.models import Order, OrderValidationError, RawOrder, RawOrders

__all__ = [
    "InvalidPageError",
    "OrdersPage",
    "decode_json",
    "follow_pages",
    "parse_page",
    "read_page",
]


class InvalidPageError(Exception):
    """A page failed validation as a whole (no list of orders, a cursor that is not text):
    nothing of it may be dispatched. One invalid order does not fail its page: see
    :attr:`OrdersPage.invalid` and :attr:`RawOrder.problem`."""

    def __init__(self, integration_id: str, error: OrderValidationError) -> None:
        self.integration_id = integration_id
        self.order_id = error.order_id
        self.field = error.field
        super().__init__(f"integration {integration_id}: {error}")


@dataclass(frozen=True, slots=True)
class OrdersPage:
    """One page of orders and the cursor of the next (``None`` on the last page).

    The orders are kept as Kombo sent them (``results``: ids checked, the orders decoded
    when first accessed) and validated when asked for: :attr:`orders` validates them all,
    the ledger only those it has not seen.
    """

    integration_id: str
    results: Sequence[RawOrder]
    next: str | None
    # Orders without a usable id (none, not a string, not Unicode): they cannot be deduped,
    # so they are reported on every sweep and never dispatched; the rest of the page is.
    invalid: Sequence[OrderValidationError] = ()

    @property
    def orders(self) -> list[Order]:
        """Every order of the page, validated (again on each access); InvalidPageError names
        the first invalid order and field."""
        if self.invalid:
            raise InvalidPageError(self.integration_id, self.invalid[0])
        try:
            return [raw.parse() for raw in self.results]
        except OrderValidationError as exc:
            raise InvalidPageError(self.integration_id, exc) from None


def follow_pages(
    endpoint: str,
    integration_id: str,
    fetch: Callable[[str | None], OrdersPage],
    max_pages: int | None,
) -> Iterator[OrdersPage]:
    """Pages from the first to the last, following each cursor once: a cursor already
    followed (A -> A, A -> B -> A) would repeat pages forever, so it ends the listing with
    ``CURSOR_LOOP`` before its page is fetched again; past ``max_pages`` pages,
    ``TOO_MANY_PAGES`` (cursors that never repeat and never end)."""
    followed: dict[bytes, int] = {}  # digest of a cursor -> the page it fetched
    cursor: str | None = None
    pages = 0
    while True:
        page = fetch(cursor)
        pages += 1
        yield page
        if not page.next:
            return
        if max_pages is not None and pages >= max_pages:
            raise KomboLimitError(
                f"{endpoint}: still more pages after {pages} (DISPATCHER_MAX_PAGES_PER_SWEEP)",
                code="TOO_MANY_PAGES",
                integration_id=integration_id,
            )
        # A digest, not the cursor: Kombo's cursors are short, a hostile one need not be.
        digest = hashlib.blake2b(page.next.encode(), digest_size=16).digest()
        if digest in followed:
            raise KomboLimitError(
                f"{endpoint}: page {pages} leads back to page {followed[digest]} (a cursor loop)",
                code="CURSOR_LOOP",
                integration_id=integration_id,
            )
        followed[digest] = pages + 1
        cursor = page.next


class _Unreadable:
    """Stands in for a value that cannot be read, such as a number of 5,000 digits (more
    than Python converts): only the order holding it is spoiled, not its page."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return f"<{self.problem}>"


def _parse_int(text: str) -> int | _Unreadable:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return _Unreadable(f"a number of {len(text.lstrip('-'))} digits, too large to read")


def decode_json(content: bytes) -> Any:
    """The JSON body, decoded by pydantic-core (twice as fast as json.loads on a page of 250
    orders, which is most of a re-sweep's CPU). When pydantic-core refuses it, the stdlib
    tries again, with any number too large to read replaced by an :class:`_Unreadable` and
    lone surrogates kept (:func:`_unreadable` finds both): one order's bad value must not
    make its whole page unreadable. ValueError when the body is not JSON at all."""
    try:
        return from_json(content)
    except ValueError:
        pass
    try:
        return _json_loads(content, parse_int=_parse_int)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# A UTF-16 surrogate on its own: JSON can spell one ("\ud800"), UTF-8 cannot encode it, so
# neither Redis nor a log line could take the text.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unreadable(value: Any) -> tuple[str, str] | None:
    """(field path, problem) of the first value in ``value`` that cannot be passed on: an
    :class:`_Unreadable` number, or text (a value or a key) holding a lone surrogate."""
    stack: list[tuple[str, Any]] = [("", value)]  # iterative: nesting may be deep
    while stack:
        path, item = stack.pop()
        if isinstance(item, _Unreadable):
            return path or "(order)", item.problem
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return path or "(order)", "text that is not valid Unicode"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if _LONE_SURROGATE.search(key):
                    return path or "(order)", "a key that is not valid Unicode"
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            for index in reversed(range(len(item))):
                stack.append((f"{path}.{index}" if path else str(index), item[index]))
    return None


class _OrderId(TypedDict):
    id: Annotated[str, Field(min_length=1)]


class _PageData(TypedDict):
    results: list[_OrderId]
    next: NotRequired[str | None]


class _PageIds(TypedDict):
    status: NotRequired[str]
    data: _PageData


# Reads a page's cursor and order ids in pydantic-core, skipping over the rest of each order:
# a tenth of the cost of decoding the orders into Python objects (bench/resweep.py).
_PAGE_IDS: TypeAdapter[_PageIds] = TypeAdapter(_PageIds)


def read_page(integration_id: str, content: bytes) -> OrdersPage | None:
    """The page with its orders left undecoded; None when the body is anything but a
    well-formed page (the full decode then says what is wrong)."""
    try:
        envelope = _PAGE_IDS.validate_json(content)
    except ValueError:  # pydantic's ValidationError is one
        return None
    if envelope.get("status") == "error":
        return None
    data = envelope["data"]
    ids = [order["id"] for order in data["results"]]

    def decode() -> list[Any]:
        results: list[Any] = from_json(content)["data"]["results"]
        return results

    return OrdersPage(integration_id, RawOrders(ids, decode), data.get("next") or None)


def parse_page(integration_id: str, body: Any) -> OrdersPage:
    data = body.get("data") if isinstance(body, dict) else None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(results, list):
        raise InvalidPageError(
            integration_id,
            OrderValidationError("(page)", "data.results", "missing or not a list"),
        )
    next_cursor = data.get("next")
    if next_cursor is not None and (
        not isinstance(next_cursor, str) or _LONE_SURROGATE.search(next_cursor)
    ):
        raise InvalidPageError(
            integration_id,
            OrderValidationError("(page)", "data.next", "not a string (valid Unicode) or null"),
        )
    raw_orders: list[RawOrder] = []
    invalid: list[OrderValidationError] = []
    for position, raw in enumerate(results):
        # This path runs only when the fast one could not read the page: checking every
        # value of every order is affordable here.
        try:
            order = RawOrder.check(raw, position)
        except OrderValidationError as exc:
            invalid.append(exc)
            continue
        if _LONE_SURROGATE.search(order.id):  # an id Redis cannot store cannot be deduped
            invalid.append(
                OrderValidationError(f"#{position}", "id", "text that is not valid Unicode")
            )
            continue
        found = _unreadable(raw)
        if found is None:
            raw_orders.append(order)
        else:
            problem = OrderValidationError(order.id, *found)
            raw_orders.append(order._replace(problem=problem))
    return OrdersPage(integration_id, raw_orders, next_cursor or None, invalid)
