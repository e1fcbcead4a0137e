"""What the HTTP handlers share: settings from the environment, one HTTP client each,
posting with an idempotency key, and sorting failures into retry-later and never-retry the
same way."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, cast

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher import (
    BaseHandler,
    HandlerContext,
    PermanentFailure,
    RetryLater,
    handler_settings,
    no_cookies,
    tracing,
    untrusted_text,
)

from ._text import one_line

# The connection pool of one thread's httpx.Client: a thread makes one call at a time, so a
# connection or two (a redirect, a retry racing a close) is all it keeps open.
THREAD_POOL = httpx.Limits(max_connections=None, max_keepalive_connections=2)
# What httpx.Client sends on every request, sent on the direct path too (see
# HttpHandler._post), all but Accept-Encoding: the answers are small JSON, sent plain.
_CLIENT_HEADERS = {
    "Accept": "*/*",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}


class HttpSettings(BaseSettings):
    """Settings every HTTP handler has: read from the environment and ``.env``, and a request
    timeout (each handler names its own variable for it)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    timeout: float = Field(30.0, gt=0)


_SettingsT = TypeVar("_SettingsT", bound=HttpSettings)


class HttpHandler(BaseHandler, Generic[_SettingsT]):
    """A handler that calls one HTTP endpoint: its settings (from the environment unless
    given) and one connection pool, closed by the worker at shutdown."""

    settings_class: ClassVar[type[HttpSettings]]

    def __init__(
        self,
        settings: _SettingsT | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # settings_class is _SettingsT's class; a ClassVar cannot say so to mypy.
        self.settings = settings or cast("_SettingsT", handler_settings(self.settings_class))
        self._transport = transport
        # One client per thread of the worker, each with its own small pool: one client
        # shared by 50 threads spent a third of a threaded worker's CPU in httpcore's pool
        # (a lock taken per request, and every pooled connection scanned under it). The
        # certificate store is loaded once and shared (an SSLContext is thread-safe).
        self._ssl: ssl.SSLContext | None = None
        self._local = threading.local()
        self._clients: list[httpx.Client | httpx.BaseTransport] = []
        self._clients_lock = threading.Lock()
        self._timeout = httpx.Timeout(self.settings.timeout).as_dict()
        self._direct: bool | None = None  # decided at the first request (see _post)

    @property
    def _client(self) -> httpx.Client:
        """This thread's client (traced when tracing is on: a client span per call,
        traceparent sent to the vendor)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._clients_lock:
                if self._ssl is None and self._transport is None:
                    self._ssl = httpx.create_ssl_context()
                client = tracing.instrument(
                    httpx.Client(
                        timeout=self.settings.timeout,
                        transport=self._transport,
                        limits=THREAD_POOL,
                        verify=self._ssl if self._ssl is not None else True,
                        cookies=no_cookies(),  # the client serves every customer's orders
                    )
                )
                self._clients.append(client)
            self._local.client = client
        return client

    @property
    def _thread_transport(self) -> httpx.BaseTransport:
        """This thread's connection pool, used without a client (see _post)."""
        if self._transport is not None:
            return self._transport
        transport: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            with self._clients_lock:
                if self._ssl is None:
                    self._ssl = httpx.create_ssl_context()
                transport = httpx.HTTPTransport(verify=self._ssl, limits=THREAD_POOL)
                self._clients.append(transport)
            self._local.transport = transport
        return transport

    def _post(
        self,
        url: str | httpx.URL,
        body: Any,
        context: HandlerContext,
        *,
        what: str,
        token: str | None = None,
    ) -> httpx.Response:
        """POST ``body``; return a 2xx response, or raise RetryLater / PermanentFailure.

        Straight through the thread's transport unless an httpx.Client is needed
        (:func:`dispatcher.tracing.client_needed`: tracing, a proxy): its per-request work
        was about 0.1 ms of CPU per call of 0.5, 8% of a threaded worker's CPU per order,
        and the handlers use none of it. Neither path keeps a cookie a vendor sets answering
        one order for the next.
        """
        if self._direct is None:
            self._direct = not tracing.client_needed()
        headers = {"Idempotency-Key": context.idempotency_key}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if not self._direct:
            return _checked(lambda: self._client.post(url, json=body, headers=headers), what)
        request = httpx.Request(
            "POST",
            url,
            json=body,
            headers={**_CLIENT_HEADERS, **headers},
            extensions={"timeout": self._timeout},
        )
        return _checked(lambda: _send(self._thread_transport, request), what)

    def close(self) -> None:
        """Release every thread's HTTP connections (the worker calls this at shutdown)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()


def _send(transport: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
    """What httpx.Client.send does with a request, without following redirects."""
    response = transport.handle_request(request)
    response.request = request
    try:
        response.read()
    finally:
        response.close()
    return response


def _checked(send: Callable[[], httpx.Response], what: str) -> httpx.Response:
    """``send()``'s 2xx response; a timeout, an unreachable host, a 429 or a 5xx raise
    RetryLater, any other status PermanentFailure."""
    try:
        response = send()
    except httpx.TimeoutException as exc:
        raise RetryLater(f"{what} timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise RetryLater(f"{what} unreachable ({type(exc).__name__})") from None
    if response.is_success:
        return response
    detail = vendor_message(response)
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryLater(f"{what} answered HTTP {response.status_code}: {detail}")
    raise PermanentFailure(f"{what} answered HTTP {response.status_code}: {detail}")


def vendor_message(response: httpx.Response, limit: int = 300) -> str:
    """The most telling one-line message in an error response, secrets masked before it is
    cut (a token straddling the cut would otherwise leave its beginning behind)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        for field in ("message", "error_description", "detail", "error", "title"):
            value = body.get(field)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return _masked_line(value, limit)
    text = response.text.strip()
    return _masked_line(text, limit) if text else response.reason_phrase


def _masked_line(text: str, limit: int) -> str:
    # Whitespace and line breaks made single spaces first, as one_line does, then the one rule.
    return untrusted_text(one_line(text, len(text) + 1), limit)
