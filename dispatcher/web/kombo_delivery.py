"""A Kombo webhook delivery as it arrives: its signature (``X-Kombo-Signature``, an
HMAC-SHA256 of the raw body), its body read within a limit, its event and its order parsed.
What the receiver does with them is dispatcher/web/webhook.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from pydantic_core import from_json
from starlette.requests import Request

from dispatcher.kombo.models import Order, OrderValidationError, id_problem, parse_order

__all__ = [
    "INLINE_ORDER_EVENT",
    "MAX_BODY_BYTES",
    "ORDER_EVENT",
    "ORDER_EVENTS",
    "SIGNATURE_HEADER",
    "BodyTooLarge",
    "Event",
    "InvalidEvent",
    "new_mac",
    "parse_delivered_order",
    "parse_event",
    "read_body",
    "sign",
    "signature_matches",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Kombo-Signature"
MAX_BODY_BYTES = 1024 * 1024
ORDER_EVENT = "assessment:order-received"
INLINE_ORDER_EVENT = "inline-assessment:order-received"
ORDER_EVENTS = frozenset({ORDER_EVENT, INLINE_ORDER_EVENT})


def sign(secret: SecretStr | str | bytes, body: bytes) -> str:
    """Kombo's signature of ``body``: base64url, without ``=`` padding, of its HMAC-SHA256."""
    return _signature(hmac.new(_key(secret), body, hashlib.sha256))


def verify_signature(secret: SecretStr | str | bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is Kombo's signature of the raw ``body`` under ``secret``.

    The comparison takes constant time. Only the exact unpadded base64url form is accepted:
    a padded or standard-base64 spelling of the right digest is refused like a wrong one,
    since Kombo never sends it.
    """
    return signature_matches(hmac.new(_key(secret), body, hashlib.sha256), header)


def new_mac(secret: SecretStr | str | bytes) -> hmac.HMAC:
    """An HMAC-SHA256 under ``secret``, to feed a body to as it arrives (:func:`read_body`)
    and check with :func:`signature_matches`."""
    return hmac.new(_key(secret), digestmod=hashlib.sha256)


def _signature(mac: hmac.HMAC) -> str:
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def signature_matches(mac: hmac.HMAC, header: str | None) -> bool:
    if not header:
        return False
    try:
        given = header.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(_signature(mac).encode("ascii"), given)


def _key(secret: SecretStr | str | bytes) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode("utf-8") if isinstance(secret, str) else secret


class BodyTooLarge(Exception):
    pass


class InvalidEvent(Exception):
    """The event cannot be used; the message says which field and why (never a value)."""


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    data: Any


async def read_body(request: Request, limit: int, mac: hmac.HMAC) -> list[bytes]:
    """The body's chunks, each fed to ``mac`` as it arrives; refused from ``Content-Length``
    or mid-stream once it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if size + len(chunk) > limit:
            raise BodyTooLarge
        size += len(chunk)
        mac.update(chunk)
        chunks.append(chunk)
    return chunks


def parse_event(body: bytes) -> Event:
    try:
        # pydantic-core's parser, as for Kombo's pages: unlike json.loads it refuses what no
        # str may hold on its way to Redis, the logs or a URL (a lone surrogate, "\ud800", or
        # its raw UTF-8 bytes) and any body not in UTF-8, so all that is a 400 here, never a
        # 500 later. Its messages name a position, never the content.
        event = from_json(body)
    except ValueError as exc:
        raise InvalidEvent(f"body is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidEvent("body must be a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEvent("field id: required, the event id (a non-empty string)")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent(f"event {event_id}: field type: required (a non-empty string)")
    return Event(event_id, event_type, event.get("data"))


def parse_delivered_order(data: Any) -> tuple[str, Order]:
    """The integration id and the order of an order event's ``data``; InvalidEvent names the
    field that is wrong."""
    if not isinstance(data, dict):
        raise InvalidEvent("field data: required, the order (a JSON object)")
    integration_id = data.get("integration_id")
    if not isinstance(integration_id, str) or not integration_id:
        raise InvalidEvent("field data.integration_id: required (a non-empty string)")
    # It names Redis keys and log lines, like the order id: the same rules.
    problem = id_problem(integration_id)
    if problem is not None:
        raise InvalidEvent(f"field data.integration_id: {problem}")
    # The poller's orders do not carry it (the job does, beside the order): keep both paths'
    # jobs the same.
    fields = {key: value for key, value in data.items() if key != "integration_id"}
    try:
        return integration_id, parse_order(fields)
    except OrderValidationError as exc:
        raise InvalidEvent(f"order {exc.order_id}: field data.{exc.field}: {exc.problem}") from None
