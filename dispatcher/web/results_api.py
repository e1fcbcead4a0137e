"""The results API of ``dispatcher web``: the vendor's platform hands results over HTTP.

- ``PUT /orders/{integration_id}/{order_id}/result``: Kombo's result body as JSON → 202 with
  the receipt (:meth:`dispatcher.store.outbox.Outbox.submit`: stored and queued atomically);
- ``GET /orders/{integration_id}/{order_id}/result``: the result's state (``pending``,
  ``written``, ``failed`` with the reason);
- ``GET /orders/{integration_id}/{order_id}``: the order's timeline.

Every route wants ``Authorization: Bearer <token>``, one of ``DISPATCHER_API_TOKEN``
(comma-separated for rotation, compared in constant time). Answers: 400 malformed JSON, 401
missing or wrong token, 404 nothing known, 409 a final result already written, 413 a body
over ``DISPATCHER_RESULT_MAX_BYTES``, 422 a body Kombo would refuse (naming the field), 503
Redis unreachable (nothing stored). Errors are ``{"error": one line}``.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dispatcher.kombo.models import check_id
from dispatcher.kombo.results import InvalidResultError
from dispatcher.logs import escape_controls
from dispatcher.ops.timeline import order_timeline
from dispatcher.settings import Settings
from dispatcher.store.outbox import FinalResultError, Outbox, parse_result

__all__ = ["results_routes"]

log = logging.getLogger("dispatcher.web.results")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


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

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        candidate = given.strip().encode()
        # Every token is compared, in constant time, whichever matches.
        matches = [hmac.compare_digest(candidate, token) for token in self.tokens]
        return any(matches)

    def _ids(self, request: Request) -> tuple[str, str] | JSONResponse:
        """The order named by the path, or the answer refusing the request."""
        if not self._authorized(request):
            return _error(401, _UNAUTHORIZED)
        integration_id = request.path_params["integration_id"]
        order_id = request.path_params["order_id"]
        for name, value in (("integration_id", integration_id), ("order_id", order_id)):
            try:
                check_id(value)
            except ValueError as exc:
                return _error(422, f"{name}: {exc}", field=name)
        return integration_id, order_id

    async def _body(self, request: Request) -> bytes | JSONResponse:
        too_large = _error(
            413, f"result body over {self.limit} bytes (DISPATCHER_RESULT_MAX_BYTES)"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return too_large
        raw = bytearray()
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > self.limit:
                    return too_large
        except ClientDisconnect:
            return _error(400, "the client went away before the body was complete")
        return bytes(raw)

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
        except (ValueError, RecursionError):
            return _error(400, "the body is not valid JSON")
        try:
            result = parse_result(data)
        except InvalidResultError as exc:
            return _error(422, f"{exc.field}: {exc.problem}", field=exc.field)
        defaulted = isinstance(data, dict) and data.get("completed_at") is None
        try:
            receipt = await run_in_threadpool(
                lambda: self.outbox.submit(
                    integration_id, order_id, result, completed_at_defaulted=defaulted
                )
            )
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
        return JSONResponse(receipt.as_dict(), status_code=202)

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
        found = self._ids(request)
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
