"""What the HTTP handlers share: settings from the environment, one HTTP client each,
posting with an idempotency key, and sorting failures into retry-later and never-retry the
same way."""

from __future__ import annotations

import json
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
    tracing,
    untrusted_text,
)

from ._text import one_line

# The connection pool of a handler's one httpx.Client, shared by a worker's threads.
SHARED_POOL = httpx.Limits(max_connections=None, max_keepalive_connections=256)


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
        # One client for every thread of the worker (httpx.Client is thread-safe). httpx
        # keeps 20 idle connections by default: with --threads 50 the other 30 would be
        # opened and closed on every request. The thread count bounds the open ones.
        # Traced when tracing is on: a client span per call, traceparent sent to the vendor.
        self._client = tracing.instrument(
            httpx.Client(timeout=self.settings.timeout, transport=transport, limits=SHARED_POOL)
        )

    def close(self) -> None:
        """Release the HTTP connection pool (the worker calls this at shutdown)."""
        self._client.close()


def post_json(
    client: httpx.Client,
    url: str | httpx.URL,
    body: Any,
    context: HandlerContext,
    *,
    what: str,
    token: str | None = None,
) -> httpx.Response:
    """POST ``body``; return a 2xx response, or raise RetryLater / PermanentFailure."""
    headers = {"Idempotency-Key": context.idempotency_key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = client.post(url, json=body, headers=headers)
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
