"""The results API of ``dispatcher web``: the vendor's platform hands results over HTTP.

- ``PUT /orders/{integration_id}/{order_id}/result``: Kombo's result body as JSON → 202 with
  the receipt (:meth:`dispatcher.store.results.Outbox.submit`: stored and queued atomically);
- ``GET /orders/{integration_id}/{order_id}/result``: the result's state (``pending``,
  ``written``, ``failed`` with the reason);
- ``GET /orders/{integration_id}/{order_id}``: the order's timeline.

Every route wants ``Authorization: Bearer <token>``, one of ``DISPATCHER_API_TOKEN``
(comma-separated for rotation, at least 24 characters each, compared in constant time).
Wrong or missing tokens are logged (at most one line a minute per client, never the token)
and limited per client (an address; an IPv6 client per /64): beyond a small budget the
client gets 429 until it refills, whatever it sends.

Answers: 200 the written body again (its receipt), 202 stored and queued, 400 malformed JSON
or a path id that is not UTF-8 (``%FF``, an encoded lone surrogate: never replaced by
U+FFFD), 401 missing or wrong token, 404 an order the dispatcher never dispatched (nothing
stored) or nothing known, 409 a final result already written or on its way, 413 a body over
``DISPATCHER_RESULT_MAX_BYTES``, 422 a body Kombo would refuse or that cannot be sent (naming
the field: nesting, lone surrogates, CR/LF or user info in a URL, ``"87"`` for a number, a
non-ASCII integration id), 429 too many wrong tokens, 503 Redis unreachable (nothing stored).
Errors are ``{"error": one line}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dispatcher import tracing
from dispatcher.kombo.models import check_id
from dispatcher.kombo.results import InvalidResultError, check_integration_id
from dispatcher.logs import escape_controls
from dispatcher.ops.timeline import order_timeline
from dispatcher.settings import Settings
from dispatcher.store.results import FinalResultError, Outbox, UnknownOrderError, parse_result

__all__ = ["TokenGuard", "client_key", "results_routes"]

log = logging.getLogger("dispatcher.web.results")


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def client_key(host: str | None) -> str:
    """Whom a wrong-token budget belongs to: the client's address; an IPv6 client's /64
    (one host holds a whole /64); an IPv4-mapped address as IPv4."""
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class _Budget:
    tokens: float
    at: float
    refused: int = 0  # wrong tokens since the last log line
    logged_at: float = -math.inf


class TokenGuard:
    """Wrong bearer tokens per client, in memory (one ``dispatcher web`` process): a budget
    of ``burst`` failures refilled at ``per_minute``; an empty budget refuses the client
    (429) before its token is even compared. At most ``max_clients`` are tracked (the least
    recently seen is forgotten first), so memory stays bounded whoever knocks."""

    def __init__(
        self,
        *,
        burst: int = 10,
        per_minute: float = 10.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Budget] = OrderedDict()

    def _budget(self, client: str) -> _Budget:
        now = self._clock()
        budget = self._clients.get(client)
        if budget is None:
            budget = _Budget(tokens=float(self.burst), at=now)
            self._clients[client] = budget
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
            budget.tokens = min(float(self.burst), budget.tokens + (now - budget.at) * self.rate)
            budget.at = now
        return budget

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it has budget left."""
        budget = self._budget(client)
        if budget.tokens >= 1.0:
            return None
        return (1.0 - budget.tokens) / self.rate

    def failed(self, client: str, why: str) -> None:
        """Count a wrong or missing token; log it, at most one line a minute per client."""
        budget = self._budget(client)
        budget.tokens = max(0.0, budget.tokens - 1.0)
        budget.refused += 1
        now = self._clock()
        if now - budget.logged_at >= 60.0:
            log.warning(
                "results API: %s bearer token from %s (%d refused since the last line; %s)",
                why,
                escape_controls(client),
                budget.refused,
                "limited" if budget.tokens < 1.0 else f"{int(budget.tokens)} more before 429",
            )
            budget.logged_at = now
            budget.refused = 0


_UNAUTHORIZED = "missing or wrong bearer token (DISPATCHER_API_TOKEN)"


def results_routes(settings: Settings, redis: Redis) -> list[BaseRoute]:
    """The routes above, or none when ``DISPATCHER_API_TOKEN`` is not set."""
    tokens = [t.get_secret_value().encode() for t in settings.api_token if t.get_secret_value()]
    if not tokens:
        return []
    api = _ResultsAPI(settings, redis, tokens)
    path = "/orders/{integration_id}/{order_id}"
    return [
        Route(f"{path}/result", api.put_result, methods=["PUT"], name="put_result"),
        Route(f"{path}/result", api.get_result, methods=["GET"], name="get_result"),
        Route(path, api.get_order, methods=["GET"], name="get_order"),
    ]


class _ResultsAPI:
    def __init__(self, settings: Settings, redis: Redis, tokens: list[bytes]) -> None:
        self.settings = settings
        self.redis = redis
        self.tokens = tokens
        self.outbox = Outbox.from_settings(redis, settings)
        self.limit = settings.result_max_bytes
        self.guard = TokenGuard()

    def _authorized(self, request: Request) -> JSONResponse | None:
        """None when the request carries a right token, else the answer refusing it."""
        client = client_key(request.client.host if request.client else None)
        wait = self.guard.retry_after(client)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            return _error(
                429,
                f"too many wrong bearer tokens from this client: try again in {seconds}s",
                headers={"Retry-After": str(seconds)},
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            self.guard.failed(client, "missing")
            return _error(401, _UNAUTHORIZED)
        candidate = given.strip().encode("utf-8", "surrogateescape")
        # Every token is compared, in constant time, whichever matches.
        matches = [hmac.compare_digest(candidate, token) for token in self.tokens]
        if any(matches):
            return None
        self.guard.failed(client, "wrong")
        return _error(401, _UNAUTHORIZED)

    def _ids(self, request: Request, *, suffix: int = 1) -> tuple[str, str] | JSONResponse:
        """The order named by the path (``suffix``: path segments after the ids), or the
        answer refusing the request."""
        refused = self._authorized(request)
        if refused is not None:
            return refused
        ids = _raw_path_ids(request, suffix)
        if isinstance(ids, JSONResponse):
            return ids
        integration_id, order_id = ids
        for name, value in (("integration_id", integration_id), ("order_id", order_id)):
            try:
                check_id(value)
            except ValueError as exc:
                return _error(422, f"{name}: {exc}", field=name)
        try:
            check_integration_id(integration_id)
        except InvalidResultError as exc:
            return _error(422, str(exc), field=exc.field)
        return integration_id, order_id

    async def _body(self, request: Request) -> bytes | JSONResponse:
        too_large = _error(
            413, f"result body over {self.limit} bytes (DISPATCHER_RESULT_MAX_BYTES)"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return too_large
        raw = bytearray()
        # A client that goes away mid-body raises ClientDisconnect: left to BodyLimits
        # (web/bodies.py), which logs it in one DEBUG line; there is nobody to answer.
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.limit:
                return too_large
        return bytes(raw)

    # With tracing on, a span whose trace the result's write job joins.
    @tracing.server_span("PUT /orders/{integration_id}/{order_id}/result")
    async def put_result(self, request: Request) -> Response:
        found = self._ids(request)
        if isinstance(found, JSONResponse):
            return found
        integration_id, order_id = found
        raw = await self._body(request)
        if not isinstance(raw, bytes):
            return raw
        try:
            data = json.loads(raw)
        except RecursionError:  # valid JSON, deeper than Python parses: no field to name
            return _error(422, "result: nested too deeply", field="result")
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            result = parse_result(data)
        except InvalidResultError as exc:
            return _error(422, f"{exc.field}: {exc.problem}", field=exc.field)
        defaulted = isinstance(data, dict) and data.get("completed_at") is None
        try:
            receipt = await run_in_threadpool(
                lambda: self.outbox.submit(
                    integration_id,
                    order_id,
                    result,
                    completed_at_defaulted=defaulted,
                    require_dispatched=True,
                )
            )
        except UnknownOrderError as exc:
            return _error(404, str(exc))
        except FinalResultError as exc:
            return _error(409, str(exc))
        except (RedisError, OSError) as exc:
            log.warning(
                "results API: order %s (integration %s) not stored: %s",
                escape_controls(order_id),
                escape_controls(integration_id),
                exc,
            )
            return _error(503, "storage unavailable: nothing stored, submit again later")
        # The written body again: done, here is its receipt; anything stored: accepted.
        return JSONResponse(receipt.as_dict(), status_code=200 if receipt.written else 202)

    async def get_result(self, request: Request) -> Response:
        found = self._ids(request)
        if isinstance(found, JSONResponse):
            return found
        try:
            record = await run_in_threadpool(self.outbox.get, *found)
        except (RedisError, OSError):
            return _error(503, "storage unavailable")
        if record is None:
            return _error(404, "no result was submitted for this order (or it expired)")
        return JSONResponse(record.as_dict())

    async def get_order(self, request: Request) -> Response:
        found = self._ids(request, suffix=0)
        if isinstance(found, JSONResponse):
            return found
        integration_id, order_id = found
        try:
            events = await run_in_threadpool(
                order_timeline, self.redis, self.settings, integration_id, order_id
            )
        except (RedisError, OSError):
            return _error(503, "storage unavailable")
        if not events:
            return _error(404, "the dispatcher knows nothing of this order")
        return JSONResponse(
            {"integration_id": integration_id, "order_id": order_id, "timeline": events}
        )


def _raw_path_ids(request: Request, suffix: int) -> tuple[str, str] | JSONResponse:
    """The path's ids decoded strictly from the raw path: the server's decoding replaces
    bytes that are not UTF-8 (``%FF``, an encoded lone surrogate) with U+FFFD, which would
    name another order."""
    raw = request.scope.get("raw_path")
    params = request.path_params
    if not isinstance(raw, bytes):
        return params["integration_id"], params["order_id"]
    parts = raw.split(b"?", 1)[0].split(b"/")
    # [<root path>]/orders/{integration_id}/{order_id}[/result]: counted from the end.
    end = len(parts) - suffix
    decoded: list[str] = []
    for name, part in zip(("integration_id", "order_id"), parts[end - 2 : end], strict=False):
        octets = unquote_to_bytes(part)
        try:
            decoded.append(octets.decode("utf-8"))
        except UnicodeDecodeError as exc:
            byte = octets[exc.start]
            return _error(
                400, f"{name}: is not UTF-8 (byte 0x{byte:02X} at {exc.start})", field=name
            )
    if len(decoded) != 2:
        return params["integration_id"], params["order_id"]
    return decoded[0], decoded[1]
