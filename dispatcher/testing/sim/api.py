"""The fake Kombo API: integrations and their orders in memory, auth, routes, endpoints.

Request handling runs here for both ways in: in process (:meth:`Simulator.transport`) and
over a socket (:meth:`Simulator.serve`, :mod:`dispatcher.testing.sim.server`).
"""

from __future__ import annotations

import collections
import copy
import functools
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dispatcher.testing.sim.bodies import json_body, validate_packages, validate_result
from dispatcher.testing.sim.cursors import (
    decode_cursor,
    encode_cursor,
    filter_hash,
    parse_created_after,
    parse_csv,
    parse_page_size,
    parse_statuses,
    take_page,
)
from dispatcher.testing.sim.data import (
    CLOSED_STATUSES,
    CLOSED_WEIGHTS,
    JSON,
    ORDER_ATTRIBUTES,
    ORDER_STATUSES,
    IntegrationOrders,
    StoredOrder,
    iso_now,
    make_integration_ids,
    make_job,
    make_order,
    to_us,
)
from dispatcher.testing.sim.envelope import (
    INPUT_INVALID,
    ApiError,
    RenderedPage,
    error_response,
    invalid,
    json_response,
)
from dispatcher.testing.sim.faults import (
    FAULT_KINDS,
    FaultKind,
    Faults,
    ForcedFault,
    format_seconds,
    take_forced,
)
from dispatcher.testing.sim.server import SimulatorServer, run_server

__all__ = ["DEFAULT_API_KEY", "Simulator"]

DEFAULT_API_KEY = "sim-api-key"

_IN_PROCESS_BASE_URL = "http://kombo.sim/v1"

_Route = Callable[[httpx.Request, str], tuple[int, "JSON | RenderedPage"]]


class Simulator:
    """A fake Kombo assessment API holding orders for several integrations in memory.

    Args:
        integrations: how many integrations to invent, or their exact ids.
        orders: OPEN orders generated per integration.
        closed: COMPLETED/CANCELLED/REJECTED orders per integration (default ``orders // 10``).
        api_key: the bearer token every request must carry.
        seed: makes integration ids, orders and random faults reproducible.
        faults: random fault probabilities and latency; mutable later through ``faults``.
        sleep: how latency waits (tests inject a fake).
        keep_rendered: keep each order's JSON once rendered (about 1 KB an order), so that
            serving a page costs next to nothing: the benchmarks measure the poller, not the
            stand-in for Kombo's servers.
        schema_drift: give about one order in twenty something newer than the published
            schema (an unknown field, an unknown hiring-team role); False for clients that
            validate strictly, such as Kombo's official SDK.
        epoch: generated ``created_at`` values lie in the 30 days before it (default: now);
            with the seed, two simulators of one epoch serve the same bytes.
    """

    def __init__(
        self,
        integrations: int | Sequence[str] = 3,
        orders: int = 20,
        *,
        closed: int | None = None,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 0,
        faults: Faults | None = None,
        sleep: Callable[[float], None] = time.sleep,
        keep_rendered: bool = False,
        schema_drift: bool = True,
        epoch: datetime | None = None,
    ) -> None:
        if orders < 0 or (closed is not None and closed < 0):
            raise ValueError("orders and closed must not be negative")
        self.api_key = api_key
        self.seed = seed
        self.faults: Faults = faults if faults is not None else Faults()
        self.integration_ids: list[str] = make_integration_ids(integrations, seed)
        self.request_count = 0
        self.requests_by_path: collections.Counter[str] = collections.Counter()
        self.results: dict[tuple[str, str], JSON] = {}
        # Result writes Kombo applied, per (integration, order): what exactly-once tests count.
        self.applied_writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.write_concurrency_limit: int | None = None
        """Result writes in flight per integration beyond which a write is answered 429
        ``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED`` (Kombo's is about 30); None: no limit."""
        self.writes_in_flight: collections.Counter[str] = collections.Counter()
        self.max_writes_in_flight: collections.Counter[str] = collections.Counter()
        """The most result writes ever in flight at once, per integration."""
        self.packages: dict[str, list[JSON]] = {}
        # When each integration's list was last PUT (GET answers it as updated_at).
        self.packages_updated: dict[str, str] = {}
        self._open_per_integration = orders
        self._closed_per_integration = orders // 10 if closed is None else closed
        self._sleep = sleep
        self._keep_rendered = keep_rendered
        self.schema_drift = schema_drift
        self._lock = threading.Lock()
        self._index = {iid: i for i, iid in enumerate(self.integration_ids)}
        # Orders are generated per integration on first access: 1,000 integrations start
        # instantly and a run that touches only a few of them never pays for the rest.
        self._states: dict[str, IntegrationOrders] = {}
        self._forced: list[ForcedFault] = []
        self._fault_rng = random.Random(f"kombo-sim/{seed}/faults")
        # Generated created_at values lie in the 30 days before this instant (ms resolution):
        # now, or ``epoch`` for two simulators that must serve the same bytes.
        self._epoch_us = to_us(epoch or datetime.now(UTC)) // 1000 * 1000

    @property
    def base_url(self) -> str:
        """Base URL to use with :meth:`transport` (any host works; this one reads well)."""
        return _IN_PROCESS_BASE_URL

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers every request in process through :meth:`handle`."""
        return httpx.MockTransport(self.handle)

    # ---------------------------------------------------------------- state (lock held)

    def _state(self, integration_id: str) -> IntegrationOrders:
        state = self._states.get(integration_id)
        if state is None:
            if integration_id not in self._index:
                raise KeyError(f"unknown integration {integration_id!r}")
            state = self._generate(integration_id)
            self._states[integration_id] = state
        return state

    def _generate(self, integration_id: str) -> IntegrationOrders:
        # Seeded by the integration id, not by position or access order, so lazy generation
        # gives the same orders whichever integration is touched first.
        rng = random.Random(f"kombo-sim/{self.seed}/{integration_id}")
        index = self._index[integration_id]
        state = IntegrationOrders(index, [make_job(rng) for _ in range(rng.randint(3, 12))])
        statuses = ["OPEN"] * self._open_per_integration + rng.choices(
            CLOSED_STATUSES, CLOSED_WEIGHTS, k=self._closed_per_integration
        )
        window_ms = 30 * 86_400_000
        state.load(
            [
                make_order(
                    rng,
                    state.jobs,
                    f"{index}-{n}",
                    status,
                    self._epoch_us - int(rng.random() * window_ms) * 1000,
                    drift=self.schema_drift,
                )
                for n, status in enumerate(statuses)
            ]
        )
        return state

    # ---------------------------------------------------------------- test helpers

    def generate_all(self) -> None:
        """Generate every integration's orders now instead of on first access.

        Generation costs about 10 µs per order; benchmarks call this first so that it is not
        part of what they measure.
        """
        with self._lock:
            for integration_id in self.integration_ids:
                self._state(integration_id)

    def add_order(
        self,
        integration_id: str,
        *,
        status: str = "OPEN",
        created_at: datetime | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add an order (as a customer ordering a package would) and return it in API shape.

        ``fields`` replace top-level keys of a generated order (``id``, ``package_id``,
        ``candidate``, ``application``, ``job``) or add unknown ones. ``created_at`` defaults
        to now, which sorts the order after every generated one.
        """
        _check_status(status)
        created_us = to_us(created_at or datetime.now(UTC))
        fields = copy.deepcopy(fields)  # the caller may keep mutating what it passed in
        with self._lock:
            state = self._state(integration_id)
            state.added += 1
            rng = random.Random(f"kombo-sim/{self.seed}/{integration_id}/added/{state.added}")
            tag = f"{state.index}-a{state.added}"
            order = make_order(rng, state.jobs, tag, status, created_us, drift=self.schema_drift)
            for name, value in fields.items():
                if name in ORDER_ATTRIBUTES:
                    setattr(order, name, value)
                else:
                    order.extra = {**(order.extra or {}), name: value}
            if not isinstance(order.id, str) or not order.id or order.id in state.by_id:
                raise ValueError(f"order id {order.id!r} is invalid or already used")
            state.insert(order)
            return copy.deepcopy(order.render())

    def set_status(self, integration_id: str, order_id: str, status: str) -> None:
        """Change an order's status, as the ATS or another vendor process might."""
        _check_status(status)
        with self._lock:
            self._order(integration_id, order_id).status = status

    def orders(self, integration_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """All orders of an integration (optionally one status) in API shape and API order."""
        with self._lock:
            state = self._state(integration_id)
            selected = [o.render() for o in state.orders if status is None or o.status == status]
            return copy.deepcopy(selected)  # rendered orders share jobs with the stored ones

    def created_at(self, integration_id: str, order_id: str) -> datetime:
        """The internal creation time of an order (the API does not return it)."""
        with self._lock:
            created_us = self._order(integration_id, order_id).created_us
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=created_us)

    def _order(self, integration_id: str, order_id: str) -> StoredOrder:
        order = self._state(integration_id).by_id.get(order_id)
        if order is None:
            raise KeyError(f"unknown order {order_id!r} in {integration_id!r}")
        return order

    def fail_next(
        self,
        kind: FaultKind,
        count: int = 1,
        *,
        integration_id: str | None = None,
    ) -> None:
        """Force the next ``count`` admitted requests (optionally of one integration) to fail.

        Forced faults are used up before random ones are drawn. Requests refused for bad
        auth or an unknown integration or path do not use them up.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._forced.append(ForcedFault(kind, count, integration_id))

    # ---------------------------------------------------------------- request handling

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one API request. Thread-safe; latency is spent outside the lock.

        A result write counts as in flight for its integration from its arrival to its
        answer (latency included); beyond ``write_concurrency_limit`` it is refused with 429
        ``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED`` and Kombo's two headers. A ``drop_answer``
        fault raises httpx.RemoteProtocolError after the request was processed.
        """
        writing = _is_result_write(request)
        integration = request.headers.get("X-Integration-Id", "")
        limit: int | None = None
        in_flight = 0
        if writing:
            with self._lock:
                self.writes_in_flight[integration] += 1
                in_flight = self.writes_in_flight[integration]
                limit = self.write_concurrency_limit
                if limit is None or in_flight <= limit:
                    self.max_writes_in_flight[integration] = max(
                        self.max_writes_in_flight[integration], in_flight
                    )
        try:
            if writing and limit is not None and in_flight > limit:
                with self._lock:
                    self.request_count += 1
                    interaction = self.request_count
                    self.requests_by_path[request.url.path] += 1
                error = ApiError(
                    429,
                    "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
                    f"More than {limit} write requests in flight for this integration.",
                    {"Concurrency-Limit": str(limit), "Concurrency-Remaining": "0"},
                )
                return error_response(error, interaction)
            return self._handle(request)
        finally:
            if writing:
                with self._lock:
                    self.writes_in_flight[integration] -= 1

    def _handle(self, request: httpx.Request) -> httpx.Response:
        latency = self.faults.latency
        if latency > 0:
            self._sleep(latency)
        with self._lock:
            self.request_count += 1
            interaction = self.request_count
            self.requests_by_path[request.url.path] += 1
        fault: FaultKind | None = None
        try:
            route, integration_id = self._admit(request)
            fault = self._draw_fault(integration_id)
            if fault == "rate_limit":
                raise ApiError(
                    429,
                    "PLATFORM.RATE_LIMIT_EXCEEDED",
                    "Too many requests: slow down and retry after the Retry-After delay.",
                    {"Retry-After": format_seconds(self.faults.retry_after)},
                )
            if fault == "server_error":
                raise ApiError(500, "PLATFORM.UNKNOWN_ERROR", "Simulated internal error.")
            status, payload = route(request, integration_id)
            response = json_response(status, payload)
        except ApiError as exc:
            response = error_response(exc, interaction)
        except Exception as exc:  # a simulator bug must still look like an API answer
            error = ApiError(500, "PLATFORM.UNKNOWN_ERROR", f"simulator error: {exc!r}")
            response = error_response(error, interaction)
        if fault == "drop_answer":
            raise httpx.RemoteProtocolError(
                "simulated: the request was processed, its answer lost", request=request
            )
        if fault == "malformed":
            # The request was processed (a write did happen) but the answer is cut short, as
            # when a connection drops mid-body: clients must not assume a garbled 200 did nothing.
            body = response.content
            return httpx.Response(
                200, headers={"Content-Type": "application/json"}, content=body[: len(body) // 2]
            )
        return response

    def _admit(self, request: httpx.Request) -> tuple[_Route, str]:
        """Check auth, route and integration, in that order; return the route to run."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise ApiError(
                401,
                "PLATFORM.AUTHENTICATION_INVALID",
                "The Authorization header must be 'Bearer <your API key>'.",
            )
        route = self._route(request.method, request.url.path)
        integration_id = request.headers.get("X-Integration-Id")
        if not integration_id or integration_id not in self._index:
            raise ApiError(
                404,
                "PLATFORM.INTEGRATION_NOT_FOUND",
                f"No integration with the id {integration_id!r} (X-Integration-Id header).",
            )
        return route, integration_id

    def _route(self, method: str, path: str) -> _Route:
        parts = path.rstrip("/").split("/")
        routes: dict[str, _Route] = {}
        if parts[:3] == ["", "v1", "assessment"]:
            rest = parts[3:]
            if rest == ["orders"]:
                routes = {"GET": self._get_orders}
            elif rest == ["orders", "open"]:
                routes = {"GET": self._get_open_orders}
            elif len(rest) == 3 and rest[0] == "orders" and rest[1] and rest[2] == "result":
                routes = {"PUT": functools.partial(self._put_result, order_id=rest[1])}
            elif rest == ["packages"]:
                routes = {"GET": self._get_packages, "PUT": self._put_packages}
        if not routes:
            raise ApiError(404, None, f"No endpoint at {method} {path}.")
        if method not in routes:
            raise ApiError(
                405, None, f"{method} is not allowed on {path}.", {"Allow": ", ".join(routes)}
            )
        return routes[method]

    def _draw_fault(self, integration_id: str) -> FaultKind | None:
        with self._lock:
            forced = take_forced(self._forced, integration_id)
            if forced is not None:
                return forced
            # One draw per request, whatever the probabilities, keeps the sequence reproducible
            # when a test flips faults on and off.
            draw = self._fault_rng.random()
        return self.faults.kind_drawn(draw)

    # ---------------------------------------------------------------- endpoints

    def _get_orders(self, request: httpx.Request, integration_id: str) -> tuple[int, RenderedPage]:
        params = request.url.params
        page_size = parse_page_size(params.get("page_size"))
        ids = parse_csv(params.get("ids"), "ids")
        statuses = parse_statuses(params.get("statuses"))
        created_after = parse_created_after(params.get("created_after"))
        fingerprint = filter_hash("orders", integration_id, ids, statuses, created_after)
        after = decode_cursor(params.get("cursor"), fingerprint)
        lower = None if created_after is None else (created_after, "")
        with self._lock:
            items = self._state(integration_id).scan(ids, lower, after)
            page, last = take_page(items, statuses, page_size)
            # Rendered under the lock so that each order's status is read consistently.
            results = [order.render_json(keep=self._keep_rendered) for order in page]
        cursor = None if last is None else encode_cursor(last, fingerprint)
        return 200, RenderedPage(cursor, results)

    def _get_open_orders(
        self, request: httpx.Request, integration_id: str
    ) -> tuple[int, RenderedPage]:
        params = request.url.params
        page_size = parse_page_size(params.get("page_size"))
        fingerprint = filter_hash("orders/open", integration_id)
        after = decode_cursor(params.get("cursor"), fingerprint)
        with self._lock:
            items = self._state(integration_id).scan(None, None, after)
            page, last = take_page(items, frozenset({"OPEN"}), page_size)
            # The deprecated endpoint predates the status field.
            results = [
                order.render_json(with_status=False, keep=self._keep_rendered) for order in page
            ]
        cursor = None if last is None else encode_cursor(last, fingerprint)
        return 200, RenderedPage(cursor, results)

    def _put_result(
        self, request: httpx.Request, integration_id: str, *, order_id: str
    ) -> tuple[int, JSON]:
        with self._lock:
            exists = order_id in self._state(integration_id).by_id
        if not exists:
            raise ApiError(
                404, INPUT_INVALID, f"order {order_id!r} does not exist in {integration_id}"
            )
        body = json_body(request)
        warnings = validate_result(body)  # outside the lock: base64 checks can be slow
        with self._lock:
            order = self._order(integration_id, order_id)  # orders are never deleted
            if order.status != "OPEN":
                raise invalid(
                    f"order {order_id} is {order.status}; a result can change it only while OPEN"
                )
            self.results[(integration_id, order_id)] = body
            self.applied_writes[(integration_id, order_id)] += 1
            order.status = body["status"]
        return 200, {"status": "success", "data": {}, "warnings": warnings}

    def _get_packages(self, request: httpx.Request, integration_id: str) -> tuple[int, JSON]:
        with self._lock:
            packages = copy.deepcopy(self.packages.get(integration_id, []))
            updated_at = self.packages_updated.get(integration_id)
        # Kombo's schema (and its SDK) has updated_at on every listed package, maybe null.
        listed = [{**package, "updated_at": updated_at} for package in packages]
        return 200, {"status": "success", "data": {"packages": listed}}

    def _put_packages(self, request: httpx.Request, integration_id: str) -> tuple[int, JSON]:
        packages = validate_packages(json_body(request))
        with self._lock:
            self.packages[integration_id] = packages
            self.packages_updated[integration_id] = iso_now()
        return 200, {"status": "success", "data": {}, "warnings": []}

    # ---------------------------------------------------------------- sockets

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
        """Serve the API over HTTP in a daemon thread; ``port=0`` picks a free port."""
        return SimulatorServer(self, host, port)

    def serve_forever(
        self, host: str, port: int, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve the API over HTTP in this thread until KeyboardInterrupt (for the CLI).

        ``ready`` is called with the base URL once the socket listens (``port=0``: the port
        picked).
        """
        run_server(self, host, port, ready)


def _check_status(status: str) -> None:
    if status not in ORDER_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ORDER_STATUSES)}, got {status!r}")


def _is_result_write(request: httpx.Request) -> bool:
    parts = request.url.path.rstrip("/").split("/")
    return request.method == "PUT" and len(parts) == 6 and parts[-1] == "result"
