"""One deadline and one budget for every request body of ``dispatcher web``.

Every route that reads a body (the webhook, the results API's PUT, the console's POSTs,
the login form included) reads it through :class:`BodyLimits`, an ASGI middleware around
the whole app, so no route can forget them:

- the body must be complete within ``DISPATCHER_WEB_BODY_TIMEOUT`` seconds of the request's
  headers, however it trickles in; else 408 and the connection is closed. Without it, 1,000
  clients trickling bodies to ``POST /console/login`` held every connection the server
  allows and ``/healthz`` and the webhook answered 503 for as long as they liked;
- the bytes of bodies being read, across requests, stay within
  ``DISPATCHER_WEB_BODY_BUDGET``; a request that would pass it answers 503 (each route
  still caps its own body: 1 MiB for the webhook, 16 KiB for a console form,
  ``DISPATCHER_RESULT_MAX_BYTES`` for a result). A request alone is never refused by the
  budget, so one body up to its route's cap always gets through;
- a client that goes away before its body is complete is one DEBUG line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.logs import escape_controls

__all__ = ["BodyBudget", "BodyBusy", "BodyLimits", "BodyTimeout", "body_middleware"]

log = logging.getLogger("dispatcher.web")


class BodyTimeout(Exception):
    """The body was not complete within the deadline (raised by ``receive``)."""


class BodyBusy(Exception):
    """The body budget is spent by other requests' bodies (raised by ``receive``)."""


class BodyBudget:
    """Bytes of request bodies held at once, across requests.

    The app runs on one event loop: no lock needed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, mine: int) -> bool:
        """Room for ``size`` more bytes of a request already holding ``mine``?"""
        others = self.held - mine
        if others > 0 and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class _Body:
    """What one request's body has done so far."""

    __slots__ = ("complete", "held", "started")

    def __init__(self) -> None:
        self.complete = False
        self.held = 0
        self.started = False


class BodyLimits:
    """ASGI middleware: the deadline and budget above on every HTTP request's body.

    Mounted inside Starlette's error middleware (``Starlette(middleware=...)``), so that
    its refusals are answers, not 500s.
    """

    def __init__(self, app: ASGIApp, *, timeout: float, budget: BodyBudget) -> None:
        self.app = app
        self.timeout = timeout
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body = _Body()

        async def limited() -> Message:
            if body.complete:  # after the body: only the disconnect is left to wait for
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if not self.budget.take(size, body.held):
                    raise BodyBusy
                body.held += size
                body.complete = not message.get("more_body", False)
            else:
                body.complete = True
            return message

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                body.started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except BodyTimeout:
            log.warning(
                "%s: body not complete within %g s (DISPATCHER_WEB_BODY_TIMEOUT): "
                "connection closed",
                _request_line(scope),
                self.timeout,
            )
            await _refuse(body, send, 408, "body not complete in time")
        except BodyBusy:
            log.warning(
                "%s: %d bytes of request bodies are being read (DISPATCHER_WEB_BODY_BUDGET): "
                "answered 503",
                _request_line(scope),
                self.budget.held,
            )
            await _refuse(body, send, 503, "too many request bodies being read; retry later")
        except ClientDisconnect:
            log.debug("%s: the client went away before its body was complete", _request_line(scope))
        finally:
            self.budget.give(body.held)


def _request_line(scope: Scope) -> str:
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "a client"
    path = escape_controls(str(scope.get("path", "")))[:200]
    return f"{scope.get('method', '?')} {path} from {who}"


async def _refuse(body: _Body, send: Send, status: int, message: str) -> None:
    if body.started:  # the route answered already: nothing more to say
        return
    content = json.dumps({"message": message}, separators=(",", ":")).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        # The rest of the body is never read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def body_middleware(timeout: float, budget: int) -> list[Middleware]:
    """The middleware list of an app whose bodies obey ``timeout`` and ``budget`` (bytes)."""
    return [Middleware(BodyLimits, timeout=timeout, budget=BodyBudget(budget))]
