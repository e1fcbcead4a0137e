"""The console's routes: pages (Jinja2, autoescaped), its two kinds of POST, static files.

Every page but the login form needs a valid session cookie; every POST a CSRF token (403
without). Responses carry a CSP without inline script, ``frame-ancestors 'none'`` and
``no-store``. Redis is blocking: each request's reads run in Starlette's thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dispatcher import _text
from dispatcher.ops.status import take_snapshot
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.wrongtype import (
    MetWrongTypes,
    WrongKeyTypeError,
    WrongType,
    is_refusal,
    is_wrong_type,
)
from dispatcher.web.console import data
from dispatcher.web.console.auth import (
    DEVICE_COOKIE,
    DEVICE_TTL,
    LOGIN_COOKIE,
    LOGIN_FORM_TTL,
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    Sessions,
    Signer,
    client_address,
    shown_key,
)

__all__ = ["SECURITY_HEADERS", "console_routes"]

log = logging.getLogger("dispatcher.web.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MAX_FORM_BYTES = 16 * 1024
_MAX_QUERY = 200
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}

Endpoint = Callable[[Request], Awaitable[Response]]


def console_routes(
    settings: Settings, redis: Redis, met: MetWrongTypes | None = None
) -> list[BaseRoute]:
    """The console's routes for ``create_app``; ``DISPATCHER_CONSOLE_TOKEN`` must be set.
    ``met``: where the console records a wrong-type key of one client or session (its login
    count, its session), for ``dispatcher_redis_broken_keys``."""
    if settings.console_token is None:
        raise ValueError("DISPATCHER_CONSOLE_TOKEN is not set: the console is off")
    return _Console(settings, redis, met or MetWrongTypes()).routes()


class _Console:
    def __init__(self, settings: Settings, redis: Redis, met: MetWrongTypes) -> None:
        assert settings.console_token is not None
        self.settings = settings
        self.redis = redis
        self.met = met
        self.keys = Keys(settings.namespace)
        self.signer = Signer(settings.console_token, settings.namespace)
        self.sessions = Sessions(redis, Keys(settings.namespace), settings.console_session_ttl)
        self.limiter = LoginLimiter(
            redis,
            Keys(settings.namespace),
            attempts=settings.console_login_attempts,
            window=settings.console_login_window,
        )
        self.env = Environment(
            loader=PackageLoader("dispatcher.web.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["ts"] = _text.timestamp
        self.env.filters["duration"] = _text.duration
        package = resources.files("dispatcher.web.console") / "static"
        self.static = {name: (package / name).read_bytes() for name in _STATIC}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", self.logout, methods=["POST"]),
            Route("/console/live", self.page(self.live), methods=["GET"]),
            Route("/console/integrations", self.page(self.integrations), methods=["GET"]),
            Route("/console/integrations", self.action(self.pause), methods=["POST"]),
            Route("/console/failures", self.page(self.failures), methods=["GET"]),
            Route("/console/failures/retry", self.action(self.retry), methods=["POST"]),
            Route("/console/order", self.page(self.order), methods=["GET"]),
            Route("/console/results", self.page(self.results), methods=["GET"]),
            Route("/console/static/{name}", self.static_file, methods=["GET"]),
            # Browsers ask for it on every page; no icon, and no 404 in their consoles.
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        ]

    # -- plumbing -------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        """The request's session: signed, young enough, and live in Redis (not logged out).
        Raises RedisError when Redis does not answer."""
        session = self.signer.verify(
            "session", request.cookies.get(SESSION_COOKIE), self.settings.console_session_ttl
        )
        if session is None or not await run_in_threadpool(self.sessions.alive, session):
            return None
        return session

    def page(self, view: Callable[[Request, Session], Awaitable[Response]]) -> Endpoint:
        """A page: without a session, back to the login form (401 for the live fragment)."""

        async def endpoint(request: Request) -> Response:
            try:
                session = await self.session(request)
            except RedisError as exc:
                return self.unavailable(exc)
            if session is None:
                if request.url.path.endswith("/console/live"):
                    return self.secured(Response("log in again\n", 401, media_type="text/plain"))
                return self.secured(RedirectResponse(f"{_base(request)}/", 303))
            return await self.guarded(view, request, session)

        return endpoint

    def action(
        self, view: Callable[[Request, Session, Mapping[str, list[str]]], Awaitable[Response]]
    ) -> Endpoint:
        """A POST: a session and its CSRF token, or 403."""

        async def endpoint(request: Request) -> Response:
            form = await _read_form(request)
            if isinstance(form, Response):
                return self.secured(form)
            try:
                session = await self.session(request)
            except RedisError as exc:
                return self.unavailable(exc)
            if not self.signer.csrf_matches(session, _one(form, "csrf")):
                return self.secured(_plain("403: missing or wrong CSRF token, or no session", 403))
            assert session is not None
            return await self.guarded(lambda r, s: view(r, s, form), request, session)

        return endpoint

    async def guarded(
        self, view: Callable[[Request, Session], Awaitable[Response]], request: Request, s: Session
    ) -> Response:
        try:
            response = await view(request, s)
        except RedisError as exc:
            return self.unavailable(exc)
        return self.secured(response)

    def unavailable(self, exc: RedisError) -> Response:
        if isinstance(exc, WrongKeyTypeError):
            # A key of one client or session: no list names it (status and /healthz check
            # the shared ones), so this line and /metrics do. Never a session's full nonce.
            shown = shown_key(self.keys, exc.key)
            self.met.add(exc.key, exc.expected, shown)
            log.error("console: %s", WrongType(shown, exc.found, exc.expected))
        elif is_wrong_type(exc):
            log.error("console: a Redis key has the wrong type (dispatcher status names "
                      "the shared ones): %s", str(exc).splitlines()[0])  # fmt: skip
        elif is_refusal(exc):
            log.error("console: Redis refused a command: %s", str(exc).splitlines()[0])
        else:
            log.warning("console: Redis: %s: %s", type(exc).__name__, exc)
            return self.secured(_plain(f"503: Redis does not answer: {type(exc).__name__}", 503))
        if is_wrong_type(exc):
            message = "503: a Redis key has the wrong type: the server's log names it"
        else:
            message = "503: Redis refused a command: the server's log says which"
        return self.secured(_plain(message, 503))

    def secured(self, response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    def render(
        self, request: Request, template: str, session: Session | None, **context: Any
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            base=_base(request),
            csrf=self.signer.csrf(session) if session is not None else "",
            namespace=self.settings.namespace,
            **context,
        )
        return HTMLResponse(html)

    def set_cookie(
        self, request: Request, response: Response, name: str, value: str, age: float
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(age),
            path=f"{_base(request)}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    # -- login ----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        try:
            session = await self.session(request)
        except RedisError as exc:
            return self.unavailable(exc)
        if session is None:
            return self.login_form(request)
        return await self.guarded(self.overview, request, session)

    def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        value, pre = self.signer.issue("login")
        response = self.render(request, "login.html", None, login_csrf=self.signer.csrf(pre),
                               error=error)  # fmt: skip
        response.status_code = status
        self.set_cookie(request, response, LOGIN_COOKIE, value, LOGIN_FORM_TTL)
        return self.secured(response)

    async def login(self, request: Request) -> Response:
        form = await _read_form(request)
        if isinstance(form, Response):
            return self.secured(form)
        pre = self.signer.verify("login", request.cookies.get(LOGIN_COOKIE), LOGIN_FORM_TTL)
        if not self.signer.csrf_matches(pre, _one(form, "csrf")):
            return self.secured(_plain("403: missing or wrong CSRF token: reload the page", 403))
        client = client_address(request.client.host if request.client else None)
        # A browser that logged in before: its own attempts only (see auth.py).
        device = self.signer.verify("device", request.cookies.get(DEVICE_COOKIE), DEVICE_TTL)
        try:
            wait = await run_in_threadpool(self.limiter.attempt, client, device)
        except RedisError as exc:
            return self.unavailable(exc)
        if wait is not None:
            log.warning(
                "console: too many login attempts from %s%s",
                client,
                " (a known browser)" if device else "",
            )
            response = self.login_form(
                request, f"Too many login attempts: try again in {_text.duration(wait)}.", 429
            )
            response.headers["Retry-After"] = str(int(wait))
            return response
        if not self.signer.token_matches(_one(form, "token") or ""):
            log.warning("console: wrong token from %s", client)
            return self.login_form(request, "Wrong token.", 403)
        value, session = self.signer.issue("session")
        try:
            await run_in_threadpool(self.limiter.succeeded, client, device)
            await run_in_threadpool(self.sessions.start, session)
        except RedisError as exc:
            return self.unavailable(exc)
        log.info("console: login from %s", client)
        response = RedirectResponse(f"{_base(request)}/", 303)
        self.set_cookie(request, response, SESSION_COOKIE, value,
                        self.settings.console_session_ttl)  # fmt: skip
        if device is None:
            device_value, _ = self.signer.issue("device")
            self.set_cookie(request, response, DEVICE_COOKIE, device_value, DEVICE_TTL)
        response.delete_cookie(LOGIN_COOKIE, path=f"{_base(request)}/")
        return self.secured(response)

    async def logout(self, request: Request) -> Response:
        form = await _read_form(request)
        if isinstance(form, Response):
            return self.secured(form)
        try:
            session = await self.session(request)
        except RedisError as exc:
            return self.unavailable(exc)
        if not self.signer.csrf_matches(session, _one(form, "csrf")):
            return self.secured(_plain("403: missing or wrong CSRF token, or no session", 403))
        assert session is not None
        try:
            # Server-side: the cookie, wherever a copy of it is, is dead from now on.
            await run_in_threadpool(self.sessions.end, session)
        except RedisError as exc:
            return self.unavailable(exc)
        log.info("console: logout")
        response = RedirectResponse(f"{_base(request)}/", 303)
        response.delete_cookie(SESSION_COOKIE, path=f"{_base(request)}/")
        return self.secured(response)

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        view = await run_in_threadpool(
            lambda: data.overview(self.redis, self.settings, window=_window(request))
        )
        return self.render(
            request, "overview.html", session, view=view, page="overview",
            windows=list(data.WINDOWS), kind_help=data.KIND_HELP,
        )  # fmt: skip

    async def live(self, request: Request, session: Session) -> Response:
        view = await run_in_threadpool(
            lambda: data.overview(self.redis, self.settings, window=_window(request))
        )
        return self.render(
            request, "live.html", session, view=view, windows=list(data.WINDOWS),
            kind_help=data.KIND_HELP,
        )  # fmt: skip

    async def integrations(self, request: Request, session: Session) -> Response:
        params = request.query_params
        query = (params.get("q") or "")[:_MAX_QUERY]
        state = params.get("state") or ""
        state = state if state in data.STATES else ""
        sort = params.get("sort") or "state"
        sort = sort if sort in data.SORTS else "state"
        desc = params.get("dir") == "desc"
        snapshot = await run_in_threadpool(take_snapshot, self.redis, self.settings)
        failed = await run_in_threadpool(data.failed_per_integration, self.redis, self.settings)
        rows = data.integration_rows(
            snapshot, query=query, state=state, sort=sort, desc=desc, failed=failed
        )
        filters = {"q": query, "state": state, "sort": sort, "dir": "desc" if desc else "asc"}
        return self.render(
            request, "integrations.html", session, rows=rows, total=len(snapshot.integrations),
            filters=filters, states=data.STATES, sorts=list(data.SORTS), page="integrations",
            sort_link=lambda column: urlencode({**filters, "sort": column, "dir": (
                "asc" if column != sort or desc else "desc")}),
        )  # fmt: skip

    async def pause(
        self, request: Request, session: Session, form: Mapping[str, list[str]]
    ) -> Response:
        pause, resume = _one(form, "pause"), _one(form, "resume")
        target = pause or resume
        if not target:
            return _plain("400: name an integration to pause or resume", 400)
        known = await run_in_threadpool(
            data.set_paused, self.redis, self.settings, target, paused=bool(pause)
        )
        if not known:
            return _plain("404: no such integration", 404)
        log.info("console: integration %s %s", target, "paused" if pause else "resumed")
        back = {k: (_one(form, k) or "")[:_MAX_QUERY] for k in ("q", "state", "sort", "dir")}
        return RedirectResponse(f"{_base(request)}/console/integrations?{urlencode(back)}", 303)

    async def failures(self, request: Request, session: Session) -> Response:
        query = (request.query_params.get("q") or "")[:_MAX_QUERY]
        jobs, total = await run_in_threadpool(
            lambda: data.failures(self.redis, self.settings, query=query)
        )
        retried = request.query_params.get("retried", "")
        return self.render(
            request, "failures.html", session, jobs=jobs, total=total, query=query,
            shown_limit=data.FAILURES_SHOWN, page="failures", now=_now(),
            retried=int(retried) if retried.isdigit() else None,
        )  # fmt: skip

    async def retry(
        self, request: Request, session: Session, form: Mapping[str, list[str]]
    ) -> Response:
        query = (_one(form, "q") or "")[:_MAX_QUERY]
        if _one(form, "all"):

            def matching() -> list[str]:
                jobs, _ = data.failures(
                    self.redis, self.settings, query=query, limit=data.RETRY_ALL_LIMIT
                )
                return [job.job_id for job in jobs]

            job_ids = await run_in_threadpool(matching)
        else:
            job_ids = [job_id[:100] for job_id in form.get("job", [])[:100]]
        requeued, _ = await run_in_threadpool(data.retry_jobs, self.redis, self.settings, job_ids)
        log.info("console: re-queued %d failed jobs", len(requeued))
        back = urlencode({"q": query, "retried": len(requeued)})
        return RedirectResponse(f"{_base(request)}/console/failures?{back}", 303)

    async def order(self, request: Request, session: Session) -> Response:
        order_id = (request.query_params.get("id") or "").strip()[:_MAX_QUERY]
        timelines = (
            await run_in_threadpool(data.order_timelines, self.redis, self.settings, order_id)
            if order_id
            else []
        )
        return self.render(
            request, "order.html", session, order_id=order_id, timelines=timelines,
            page="order", now=_now(),
        )  # fmt: skip

    async def results(self, request: Request, session: Session) -> Response:
        view = await run_in_threadpool(data.results, self.redis, self.settings)
        return self.render(request, "results.html", session, view=view, page="results",
                           now=_now())  # fmt: skip

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return _plain("404: not found", 404)
        response = Response(self.static[name], media_type=_STATIC[name])
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "max-age=300"
        return response


async def _read_form(request: Request) -> Mapping[str, list[str]] | Response:
    """An urlencoded form of at most 16 KiB (else 413). A body of another kind reads as an
    empty form: no CSRF token, so 403."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return _plain("413: form too large", 413)
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=300)
    except (UnicodeDecodeError, ValueError):
        return _plain("400: unreadable form", 400)


def _window(request: Request) -> str:
    """The chart's window asked for (``?window=24h``); the default for anything else."""
    window = request.query_params.get("window") or data.DEFAULT_WINDOW
    return window if window in data.WINDOWS else data.DEFAULT_WINDOW


def _one(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status, media_type="text/plain; charset=utf-8")


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _now() -> float:
    import time

    return time.time()
