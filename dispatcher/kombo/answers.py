"""What a Kombo answer says: its JSON body or its error (the envelope), its warnings, how long
its ``Retry-After`` asks to wait, and the client's own errors about it (a refused key, an
answer over the size limit)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

import httpx

from dispatcher.kombo.errors import KomboError, KomboLimitError
from dispatcher.kombo.pages import decode_json

__all__ = [
    "decode_answer",
    "is_key_refusal",
    "key_refused",
    "retry_after_seconds",
    "too_large",
    "warnings_of",
]


def is_key_refusal(error: KomboError) -> bool:
    """Whether Kombo refused the API key (not this integration: every request will fail)."""
    if error.code is not None:
        return error.code.startswith("PLATFORM.AUTHENTICATION")
    return error.status_code == 401


def key_refused(error: KomboError) -> KomboError:
    # Kombo's own message ("The Authorization header must be 'Bearer <your API key>'")
    # sends the operator looking at headers they never wrote: the key is what is wrong.
    return KomboError(
        "the key in KOMBO_API_KEY was refused",
        code=error.code,
        title=error.title,
        log_url=error.log_url,
        status_code=error.status_code,
        integration_id=error.integration_id,
    )


def too_large(
    method: str, path: str, integration_id: str, status: int, size: str
) -> KomboLimitError:
    return KomboLimitError(
        f"{method} /{path}: answer of {size} is over the limit (DISPATCHER_MAX_RESPONSE_BYTES)",
        code="RESPONSE_TOO_LARGE",
        status_code=status,
        integration_id=integration_id,
    )


def decode_answer(
    response: httpx.Response, content: bytes, integration_id: str
) -> tuple[Any, KomboError | None]:
    try:
        body = decode_json(content)
    except ValueError:
        # A truncated or garbled body is most often a transient proxy fault: retry it.
        return None, KomboError(
            f"malformed JSON in the response (HTTP {response.status_code})",
            code=None,
            status_code=503 if response.is_success else response.status_code,
            integration_id=integration_id,
        )
    if response.is_success and isinstance(body, dict) and body.get("status") != "error":
        return body, None
    envelope = body.get("error") if isinstance(body, dict) else None
    if not isinstance(envelope, dict):
        envelope = {}
    message = envelope.get("message")
    return None, KomboError(
        str(message) if message else f"HTTP {response.status_code} {response.reason_phrase}",
        code=_str_or_none(envelope.get("code")),
        title=_str_or_none(envelope.get("title")),
        log_url=_str_or_none(envelope.get("log_url")),
        status_code=response.status_code,
        integration_id=integration_id,
    )


def warnings_of(body: Any) -> list[str]:
    warnings = body.get("warnings") if isinstance(body, dict) else None
    if not isinstance(warnings, list):
        return []
    return [str(item.get("message")) if isinstance(item, dict) else str(item) for item in warnings]


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
