"""Kombo API client on httpx: orders (current and deprecated endpoint), typed and retried.

The transport (retries, limits, the key) and the endpoints; Kombo's errors are in
:mod:`dispatcher.kombo.errors`, what an answer says (body or error, warnings, Retry-After) in
:mod:`dispatcher.kombo.answers`, the decoding of its order pages in :mod:`dispatcher.kombo.pages`.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from dispatcher import tracing
from dispatcher.kombo.answers import (
    decode_answer,
    is_key_refusal,
    key_refused,
    retry_after_seconds,
    too_large,
    warnings_of,
)
from dispatcher.kombo.errors import KomboError, KomboStopped
from dispatcher.kombo.models import kombo_time
from dispatcher.kombo.packages import PACKAGE_FIELDS, InvalidPackagesError, Package, parse_packages
from dispatcher.kombo.pages import OrdersPage, follow_pages, parse_page, read_page
from dispatcher.kombo.results import AssessmentResult
from dispatcher.untrusted import no_cookies

if TYPE_CHECKING:
    from dispatcher.settings import Settings

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "KomboClient", "RequestObserver"]

log = logging.getLogger(__name__)

RequestObserver = Callable[[str, int | None, float], None]
"""Told of every HTTP request the client makes (each retry too): the endpoint as
``"GET /assessment/orders"``, the HTTP status (``None`` when no response came) and the
seconds it took."""

_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 30.0
# 2**16 seconds is far past the cap already: a larger exponent only risks overflowing a float
# (a client retrying in a tight loop once reached attempt 1,025).
_BACKOFF_MAX_EXPONENT = 16

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The largest Kombo answer read (DISPATCHER_MAX_RESPONSE_BYTES): a page of 250 orders with
long job descriptions is a few MB."""


_Request = TypeVar("_Request", bound=Callable[..., Any])


def _traced(request: _Request) -> _Request:
    """A request, retries included, in a span (tracing on): its HTTP attempts are the
    children (the httpx instrumentation), its retries the events."""

    @functools.wraps(request)
    def traced(self: KomboClient, method: str, path: str, integration_id: str, **kw: Any) -> Any:
        attributes = {"dispatcher.integration_id": integration_id, "url.path": f"/{path}"}
        with tracing.span(f"kombo {method}", attributes=attributes):
            return request(self, method, path, integration_id, **kw)

    return traced  # type: ignore[return-value]


class KomboClient:
    """A synchronous, thread-safe client of Kombo's assessment API.

    Retries 429s, 5xx, timeouts and connection errors with exponential backoff and full
    jitter, honouring ``Retry-After``, for at most ``retry_budget`` seconds per request.
    Once ``should_stop()`` is true it sends nothing more, retries included, and raises
    :class:`KomboStopped`. An answer is read up to ``max_response_bytes`` (decompressed);
    a larger one is a :class:`KomboLimitError`.
    The API key is held as a secret and never logged, raised or shown in a repr.
    ``observer``, when given, is called after every request (see :data:`RequestObserver`).
    """

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str = "https://api.kombo.dev/v1",
        *,
        timeout: float = 30.0,
        retry_budget: float = 120.0,
        connect_retry_budget: float | None = None,
        max_connections: int = 16,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        observer: RequestObserver | None = None,
        should_stop: Callable[[], bool] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._observer = observer
        self._should_stop = should_stop
        self.max_response_bytes = max_response_bytes
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        # One connection pool, used by the client and by the direct path (see _send).
        self._transport = transport or httpx.HTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )
        # Traced when tracing is on (dispatcher.tracing): a client span per request.
        self._http = tracing.instrument(httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            timeout=timeout,
            transport=self._transport,
            headers={"Accept": "application/json", "User-Agent": "kombo-dispatcher"},
            cookies=no_cookies(),  # every integration's requests go to one host
        ))  # fmt: skip
        self._base = str(self._http.base_url)
        self._headers = dict(self._http.headers)
        self._timeout = self._http.timeout.as_dict()
        self._direct: bool | None = None  # decided at the first request (see _send)
        self.retry_budget = retry_budget
        # How long connection failures are retried, counted from the first of an outage
        # and shared by every request: a command a person waits on (poll --once) gives up
        # on a refused KOMBO_BASE_URL in seconds, not after each request's whole budget.
        self.connect_retry_budget = min(connect_retry_budget or retry_budget, retry_budget)
        self._unreachable_since: float | None = None
        # Where requests go, for network errors: a wrong KOMBO_BASE_URL shows at once.
        self._host = self._http.base_url.netloc.decode("ascii", "replace")
        # Set at the first connection failure, cleared by an answer: said once per outage.
        self._unreachable_said = threading.Event()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> KomboClient:
        """The client the settings describe: KOMBO_API_KEY (a ConfigError when it is not
        set), KOMBO_BASE_URL, KOMBO_TIMEOUT, KOMBO_RETRY_BUDGET and
        DISPATCHER_MAX_RESPONSE_BYTES. ``overrides`` are keyword arguments of the
        constructor, given where a process needs otherwise (no retry while a webhook
        delivery waits, a connection per worker thread)."""
        options: dict[str, Any] = {
            "timeout": settings.kombo_timeout,
            "retry_budget": settings.kombo_retry_budget,
            "max_response_bytes": settings.max_response_bytes,
            **overrides,
        }
        return cls(settings.require_kombo(), settings.kombo_base_url, **options)

    def __repr__(self) -> str:
        return f"KomboClient(base_url={str(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KomboClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- orders -----------------------------------------------------------------------------

    def get_orders(
        self,
        integration_id: str,
        *,
        statuses: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        created_after: datetime | str | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> OrdersPage:
        """One page of ``GET /assessment/orders`` with Kombo's filters."""
        params: dict[str, str] = {}
        if statuses:
            params["statuses"] = ",".join(statuses)
        if ids:
            params["ids"] = ",".join(ids)
        if created_after is not None:
            params["created_after"] = _format_created_after(created_after)
        if page_size is not None:
            params["page_size"] = str(page_size)
        if cursor:
            params["cursor"] = cursor
        return self._get_page("assessment/orders", integration_id, params)

    def get_open_orders(
        self, integration_id: str, *, page_size: int | None = None, cursor: str | None = None
    ) -> OrdersPage:
        """One page of the deprecated ``GET /assessment/orders/open`` (orders carry no status)."""
        params: dict[str, str] = {}
        if page_size is not None:
            params["page_size"] = str(page_size)
        if cursor:
            params["cursor"] = cursor
        return self._get_page("assessment/orders/open", integration_id, params)

    def iter_order_pages(
        self,
        integration_id: str,
        *,
        statuses: Sequence[str] | None = ("OPEN",),
        ids: Sequence[str] | None = None,
        created_after: datetime | str | None = None,
        page_size: int | None = None,
        max_pages: int | None = None,
    ) -> Iterator[OrdersPage]:
        """Every page of ``GET /assessment/orders``, keeping the filters while paging.

        Raises :class:`KomboLimitError` instead of following a cursor already followed
        (``CURSOR_LOOP``) or reading more than ``max_pages`` pages (``TOO_MANY_PAGES``).
        """
        return follow_pages(
            "GET /assessment/orders",
            integration_id,
            lambda cursor: self.get_orders(
                integration_id,
                statuses=statuses,
                ids=ids,
                created_after=created_after,
                page_size=page_size,
                cursor=cursor,
            ),
            max_pages,
        )

    def iter_open_order_pages(
        self, integration_id: str, *, page_size: int | None = None, max_pages: int | None = None
    ) -> Iterator[OrdersPage]:
        """Every page of the deprecated open-orders endpoint (limits as in iter_order_pages)."""
        return follow_pages(
            "GET /assessment/orders/open",
            integration_id,
            lambda cursor: self.get_open_orders(integration_id, page_size=page_size, cursor=cursor),
            max_pages,
        )

    def _get_page(self, path: str, integration_id: str, params: dict[str, str]) -> OrdersPage:
        body = self._request(
            "GET",
            path,
            integration_id,
            params=params,
            fast_decode=lambda content: read_page(integration_id, content),
        )
        return body if isinstance(body, OrdersPage) else parse_page(integration_id, body)

    # -- transport --------------------------------------------------------------------------

    @_traced
    def _request(
        self,
        method: str,
        path: str,
        integration_id: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        fast_decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """The decoded body of a successful answer, retrying what is worth retrying.

        ``fast_decode``, when given, is tried first on a 2xx body; when it returns None, the
        body is decoded in full and judged as usual.
        """
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "X-Integration-Id": integration_id,
        }
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            # Checked before every attempt: a stop request ends retrying at once (the
            # retry's sleep returns early then; looping on would hammer Kombo).
            if self._should_stop is not None and self._should_stop():
                raise KomboStopped(f"integration {integration_id}: stopped before {method} /{path}")
            retry_after: float | None = None
            try:
                response, content = self._send(
                    method, path, integration_id, params=params, json=json, headers=headers
                )
                if fast_decode is not None and response.is_success:
                    decoded = fast_decode(content)
                    if decoded is not None:
                        return decoded
                body, error = decode_answer(response, content, integration_id)
                if error is not None and is_key_refusal(error):
                    error = key_refused(error)
                retry_after = retry_after_seconds(response)
                if error is not None and method != "GET" and response.is_success:
                    # Kombo took the write (2xx) but its answer was garbled in transit: a
                    # retry would repeat the write (and a result, no longer OPEN, would be
                    # refused). Only a read needs the body.
                    log.warning(
                        "kombo %s /%s: unreadable answer to a successful write (HTTP %d)",
                        method,
                        path,
                        response.status_code,
                        extra={"integration_id": integration_id},
                    )
                    return {}
            except (httpx.TransportError, httpx.DecodingError) as exc:
                # DecodingError: a body its Content-Encoding cannot undo (garbled gzip),
                # judged like a garbled body: retried.
                body = None
                error = self._network_error(exc, method, path, integration_id)
            if error is None:
                return body
            # Whoever retries later (the results outbox) honours Kombo's Retry-After too.
            error.retry_after = retry_after
            if not error.retryable:
                raise error
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if self._out_of_budget(error, started, delay):
                raise error
            # An unreachable host was said once for the outage (_network_error): its
            # retries are DEBUG, or a refused port made ~50 WARNING lines a minute.
            log.log(
                logging.DEBUG if error.unreachable else logging.WARNING,
                "kombo %s /%s failed (%s), retry %d in %.1fs",
                method,
                path,
                error,
                attempt,
                delay,
                extra={"integration_id": integration_id},
            )
            tracing.event(
                "retry",
                attempt=attempt,
                delay_s=delay,
                status=error.status_code,
                code=(error.code or "")[:100] or None,  # Kombo's text: bounded
            )
            self._sleep(delay)

    def _out_of_budget(self, error: KomboError, started: float, delay: float) -> bool:
        """Whether retrying after ``delay`` would pass the request's retry budget, or, for
        a host that cannot be reached, the outage's (``connect_retry_budget``)."""
        now = self._clock()
        if now - started + delay > self.retry_budget:
            return True
        since = self._unreachable_since
        return (
            error.unreachable
            and since is not None
            and now - since + delay > self.connect_retry_budget
        )

    def _network_error(
        self,
        exc: httpx.TransportError | httpx.DecodingError,
        method: str,
        path: str,
        integration_id: str,
    ) -> KomboError:
        """The error of a request that got no answer, naming the host; the first connection
        failure of an outage is logged at once (retries go on as usual)."""
        if isinstance(exc, httpx.DecodingError):  # an answer came, garbled
            return KomboError(
                f"{type(exc).__name__} on {method} /{path}", integration_id=integration_id
            )
        reason = str(exc) or type(exc).__name__
        connecting = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if connecting and not self._unreachable_said.is_set():
            self._unreachable_said.set()
            self._unreachable_since = self._clock()
            log.warning(
                "kombo: cannot connect to %s (KOMBO_BASE_URL): %s: %s; retrying for up to %.0fs",
                self._host,
                type(exc).__name__,
                reason,
                self.connect_retry_budget,
            )
        error = KomboError(
            f"{type(exc).__name__} on {method} /{path} to {self._host}: {reason}",
            integration_id=integration_id,
        )
        error.unreachable = connecting
        return error

    def _backoff(self, attempt: int) -> float:
        """Full jitter over an exponential ceiling, capped (the exponent too)."""
        exponent = min(attempt - 1, _BACKOFF_MAX_EXPONENT)
        return self._rng.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**exponent))

    def _send(
        self,
        method: str,
        path: str,
        integration_id: str,
        *,
        params: dict[str, str] | None,
        json: Any,
        headers: dict[str, str],
    ) -> tuple[httpx.Response, bytes]:
        """One request: the response and its body, read no further than max_response_bytes
        (a page of huge orders, or an endless body, must not fill the poller's memory)."""
        if self._direct is None:
            self._direct = not tracing.client_needed()
        sent = time.perf_counter()
        status: int | None = None
        try:
            if self._direct:
                # What httpx.Client.send does here, without its per-request work (see
                # tracing.client_needed): about a tenth of a results worker's CPU per write.
                request = httpx.Request(
                    method,
                    self._base + path,
                    params=params,
                    json=json,
                    headers={**self._headers, **headers},
                    extensions={"timeout": self._timeout},
                )
                response = self._transport.handle_request(request)
                response.request = request
            else:
                request = self._http.build_request(
                    method, path, params=params, json=json, headers=headers
                )
                response = self._http.send(request, stream=True)
            status = response.status_code
            self._unreachable_said.clear()  # an answer came: a later outage is news
            self._unreachable_since = None
            try:
                limit = self.max_response_bytes
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise too_large(method, path, integration_id, status, f"{declared} bytes")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise too_large(
                            method, path, integration_id, status, f"more than {limit} bytes"
                        )
            except (httpx.TransportError, httpx.DecodingError):
                status = None  # no whole answer came
                raise
            finally:
                response.close()
        finally:
            self._observe(method, path, status, sent)
        return response, bytes(body)

    def _observe(self, method: str, path: str, status: int | None, sent: float) -> None:
        if self._observer is not None:
            self._observer(f"{method} /{path}", status, time.perf_counter() - sent)

    # -- write-back -------------------------------------------------------------------------

    def put_result(self, integration_id: str, order_id: str, result: AssessmentResult) -> list[str]:
        """``PUT /assessment/orders/{id}/result``; returns Kombo's warnings (messages)."""
        body = self._request(
            "PUT",
            f"assessment/orders/{quote(order_id, safe='')}/result",
            integration_id,
            json=result.to_body(),
        )
        return warnings_of(body)

    def get_packages(self, integration_id: str) -> list[Package]:
        """``GET /assessment/packages``: the packages Kombo holds for the integration."""
        body = self._request("GET", "assessment/packages", integration_id)
        data = body.get("data") if isinstance(body, dict) else None
        raw = data.get("packages") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise KomboError(
                "GET /assessment/packages: data.packages missing or not a list",
                status_code=200,
                integration_id=integration_id,
            )
        # Kombo may add fields: only the four it takes back are compared and shown.
        trimmed = [
            {k: v for k, v in item.items() if k in PACKAGE_FIELDS}
            if isinstance(item, dict)
            else item
            for item in raw
        ]
        try:
            return parse_packages(trimmed, source="GET /assessment/packages", listed=True)
        except InvalidPackagesError as exc:
            raise KomboError(str(exc), status_code=200, integration_id=integration_id) from None

    def set_packages(self, integration_id: str, packages: Sequence[Package]) -> list[str]:
        """``PUT /assessment/packages``: replace the whole list (left-out packages are marked
        deleted); returns Kombo's warnings (messages)."""
        body = self._request(
            "PUT",
            "assessment/packages",
            integration_id,
            json={"packages": [package.model_dump(mode="json") for package in packages]},
        )
        return warnings_of(body)


def _format_created_after(value: datetime | str) -> str:
    return value if isinstance(value, str) else kombo_time(value)
