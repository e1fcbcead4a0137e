"""What the HTTP handlers share: posting with an idempotency key, and sorting failures into
retry-later and never-retry the same way."""

from __future__ import annotations

import json
from typing import Any

import httpx

from dispatcher import HandlerContext, PermanentFailure, RetryLater

# The connection pool of a handler's one httpx.Client, shared by a worker's threads.
SHARED_POOL = httpx.Limits(max_connections=None, max_keepalive_connections=256)


def post_json(
    client: httpx.Client,
    url: str,
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
    """The most telling one-line message in an error response."""
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
                return _one_line(value, limit)
    text = response.text.strip()
    return _one_line(text, limit) if text else response.reason_phrase


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
