"""Kombo's answers as the simulator gives them: the error envelope and JSON bodies.

An :class:`ApiError` raised anywhere in request handling becomes Kombo's error envelope
(``{"status": "error", "error": {code, title, message, log_url}}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "INPUT_INVALID",
    "ApiError",
    "RenderedPage",
    "dumps",
    "error_response",
    "invalid",
    "json_response",
]

_LOG_URL = "https://app.kombo.dev/sim/logs?interactionId={n}"

INPUT_INVALID = "PLATFORM.INPUT_INVALID"
_TITLES: dict[str, str] = {
    "PLATFORM.AUTHENTICATION_INVALID": "The provided API key is invalid.",
    "PLATFORM.INTEGRATION_NOT_FOUND": "The integration could not be found.",
    INPUT_INVALID: "The input is invalid.",
    "PLATFORM.RATE_LIMIT_EXCEEDED": "You have exceeded the rate limit.",
    "PLATFORM.UNKNOWN_ERROR": "An unknown error occurred.",
}


class ApiError(Exception):
    """An error answer: raised anywhere in request handling, rendered as the Kombo envelope."""

    def __init__(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def invalid(message: str) -> ApiError:
    return ApiError(400, INPUT_INVALID, message)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class RenderedPage:
    """A page whose orders are already JSON: joined, not serialized again."""

    next: str | None
    results: list[bytes]

    def to_json(self) -> bytes:
        return b"".join(
            (
                b'{"status":"success","data":{"next":',
                dumps(self.next),
                b',"results":[',
                b",".join(self.results),
                b"]}}",
            )
        )


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"Content-Type": "application/json", **(headers or {})},
        content=payload.to_json() if isinstance(payload, RenderedPage) else dumps(payload),
    )


def error_response(error: ApiError, interaction: int) -> httpx.Response:
    payload = {
        "status": "error",
        "error": {
            "code": error.code,
            "title": _TITLES.get(error.code) if error.code else None,
            "message": error.message,
            "log_url": _LOG_URL.format(n=interaction),
        },
    }
    return json_response(error.status, payload, error.headers)
