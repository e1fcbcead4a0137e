"""The dispatcher's web app (needs the ``web`` extra): ``/metrics`` and ``/healthz``.

Other features add their routes through ``extra_routes`` (the webhook receiver does), so
one ``dispatcher web`` process serves them all. :func:`server_config` is how ``dispatcher
web`` runs it under uvicorn, with the bounds an Internet-facing receiver needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar
from urllib.parse import quote

import h11
import uvicorn
from redis import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from dispatcher.ops.status import BrokenKey, Snapshot, take_snapshot
from dispatcher.settings import Settings
from dispatcher.store.connection import ServerCheck, check_server
from dispatcher.store.key_types import shared_keys
from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import queue_key
from dispatcher.store.wrongtype import MetWrongTypes, find_wrong_types
from dispatcher.web.bodies import body_middleware
from dispatcher.web.metrics import CONTENT_TYPE, exposition
from dispatcher.web.results_api import results_routes

__all__ = ["create_app", "relative_slash_redirects", "server_config"]

log = logging.getLogger("dispatcher.web")


def create_app(
    settings: Settings,
    redis: Redis,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> Starlette:
    """The Starlette app: ``GET /metrics`` (Prometheus text), ``GET /healthz`` (200 when
    Redis answers and the keys every process shares hold their types, 503 otherwise), plus
    ``extra_routes``, plus the operator console at ``/`` when ``DISPATCHER_CONSOLE_TOKEN``
    is set. ``background`` tasks run while the app serves (its lifespan), e.g. the webhook
    receiver's confirmation of kept orders.

    Endpoints are plain functions: Starlette runs them in its thread pool, where the
    blocking Redis client belongs.
    """

    # Wrong-type keys of one console client or session (no list names them): the console
    # records those it meets; /metrics counts them among the broken keys until repaired.
    met = MetWrongTypes()

    def snapshot() -> Snapshot:
        taken = take_snapshot(redis, settings)
        extra = [w for w in met.still_broken(redis) if w.key not in
                 {b.key for b in taken.broken_keys}]  # fmt: skip
        if not extra:
            return taken
        more = tuple(BrokenKey(w.key, None, str(w)) for w in extra)
        return dataclasses.replace(taken, broken_keys=taken.broken_keys + more)

    def metrics(request: Request) -> Response:
        body = exposition(snapshot)
        return Response(body, media_type=CONTENT_TYPE)

    # The shared keys only: one TYPE each, one round trip, however many integrations. A broken
    # key of one integration is that integration's problem (status, /metrics), like a failing
    # Kombo integration; a broken schedule or queue stops every integration.
    orders_key, results_key = queue_key(settings.queue), queue_key(settings.results_queue)

    def healthz(request: Request) -> Response:
        # Per request: the throughput hash among them is this hour's.
        shared = shared_keys(Keys(settings.namespace), orders_key, results_queue_key=results_key)
        try:
            redis.ping()
            wrong = find_wrong_types(redis, shared)
        except (RedisError, OSError) as exc:
            log.warning("healthz: Redis does not answer: %s", exc)
            return PlainTextResponse(f"redis: {type(exc).__name__}\n", status_code=503)
        server = _server(redis)
        if wrong or server.refusal:
            lines = "".join(f"redis: {w}\n" for w in wrong)
            lines += f"redis: {server.refusal}\n" if server.refusal else ""
            log.warning("healthz: %s", lines.strip().replace("\n", "; "))
            return PlainTextResponse(lines, status_code=503)
        # Settings that risk data are detail, not ill health: restarting would not fix them.
        detail = "".join(f"problem: {p}\n" for p in server.problems)
        detail += "".join(f"notice: {n}\n" for n in server.notices)
        return PlainTextResponse("ok\n" + detail)

    # The results API (web/results_api.py) needs its token; without one it is not mounted.
    results = results_routes(settings, redis)
    if not results:
        log.warning("DISPATCHER_API_TOKEN is not set: the results API (/orders/...) is off")
    routes: list[BaseRoute] = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *results,
        *extra_routes,
    ]
    if settings.console_token is not None:
        # The operator console at / (dispatcher/web/console/): off without its token, and
        # then not loaded (its templates, Jinja2).
        from dispatcher.web.console import console_routes

        routes.extend(console_routes(settings, redis, met))
        log.info("the operator console is on at /")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(task()) for task in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(
        routes=routes,
        middleware=body_middleware(settings.web_body_timeout, settings.web_body_budget),
        lifespan=lifespan,
    )
    relative_slash_redirects(app)
    return app


def relative_slash_redirects(app: Starlette) -> None:
    """Redirect ``/path/`` to ``/path`` (and back) with a relative ``Location``.

    Starlette's own redirect spells the whole URL from the request's ``Host`` header, which
    the client chooses: a cache or a proxy keyed on the path would serve a redirect to the
    attacker's host. A path-only ``Location`` names no host at all.
    """
    router = app.router
    router.redirect_slashes = False
    not_found = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and path != "/" and not path.startswith("//"):
            other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
            if any(route.matches(other)[0] is not Match.NONE for route in router.routes):
                location = quote(str(scope.get("root_path", "")) + other["path"])
                query = scope.get("query_string", b"").decode("latin-1")
                target = f"{location}?{query}" if query else location
                await RedirectResponse(target, 307)(scope, receive, send)
                return
        await not_found(scope, receive, send)

    router.default = default


def _server(redis: Redis) -> ServerCheck:
    try:
        return check_server(redis)
    except (RedisError, OSError):  # INFO refused (an ACL), or Redis went away since the PING
        return ServerCheck()


def server_config(
    app: Starlette, settings: Settings, *, host: str, port: int, access_log: bool = False
) -> uvicorn.Config:
    """How ``dispatcher web`` serves ``app``: uvicorn's h11 server with a deadline on request
    headers (``DISPATCHER_WEB_HEADER_TIMEOUT``), at most ``DISPATCHER_WEB_MAX_CONNECTIONS``
    connections or requests at once (503 beyond), and h11's 16 KiB cap on a request's headers.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_header_deadline_protocol(settings.web_header_timeout),
        limit_concurrency=settings.web_max_connections,
        # X-Forwarded-For and -Proto are believed only from DISPATCHER_TRUSTED_PROXIES
        # (uvicorn's default believes any loopback client: the console's login limit then
        # counted whatever address a local client claimed).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        log_config=None,
        access_log=access_log,
        server_header=False,
    )


def _header_deadline_protocol(seconds: float) -> type[_HeaderDeadlineProtocol]:
    # uvicorn builds the protocol itself, from the class: the deadline rides on a subclass.
    return type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout": seconds})


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request's headers.

    uvicorn has no header timeout: ``timeout_keep_alive`` starts only after a response, and
    any byte received cancels it. A client that connects and sends nothing, or sends its
    headers a byte at a time (slowloris), kept its connection forever. Here, whenever the
    connection waits for a request (from the connection's start, or the previous answer), the
    request's headers must be complete within ``header_timeout`` seconds, however they trickle
    in; else the connection is closed. The body's deadline is the app's (the webhook answers
    408). A response sent before the client finished its body (a refusal, a GET with a body)
    closes the connection: uvicorn would otherwise read and discard whatever trickles in
    for ever, since each byte cancels its keep-alive timer.
    """

    header_timeout: ClassVar[float] = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_headers()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        # h11's client state is IDLE until a request's headers are complete.
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._stop_deadline()
        elif self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        # A client that began a request is worth a line; an idle kept-alive one is closed as
        # quietly as uvicorn's keep-alive timeout closes it.
        started, _ = self.conn.trailing_data
        if started:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info(
                "closed the connection of %s: request headers not complete within %g s "
                "(DISPATCHER_WEB_HEADER_TIMEOUT)",
                client,
                self.header_timeout,
            )
        self.transport.close()
