"""The console's locks: the session cookie, CSRF tokens and the login rate limit.

No server-side session store: the cookie is ``<payload>.<HMAC-SHA256>``, the payload a random
nonce and the issue time, signed with a key derived from ``DISPATCHER_CONSOLE_TOKEN`` (so
changing the token logs everyone out). The CSRF token of a session is the HMAC of its nonce
under another label: a page carries it in every form, a POST without it (or with another
session's) is refused. Before login, the login form is bound the same way to a short-lived
pre-session cookie. Login attempts are counted per client address in Redis
(:meth:`Keys.console_login`), in a fixed window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr
from redis import Redis

from dispatcher.store.keys import Keys

__all__ = ["LoginLimiter", "Session", "Signer", "client_address"]

SESSION_COOKIE = "dispatcher_console"
LOGIN_COOKIE = "dispatcher_console_login"
LOGIN_FORM_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session (or pre-session): its nonce and when it was issued."""

    nonce: str
    issued_at: float


class Signer:
    """Signs and verifies the console's cookies and derives their CSRF tokens."""

    def __init__(
        self, token: SecretStr, namespace: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._token = token.get_secret_value().encode()
        self._key = hmac.new(
            self._token, f"dispatcher console {namespace}".encode(), hashlib.sha256
        ).digest()
        self._clock = clock

    def token_matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the console token (constant time)."""
        return hmac.compare_digest(candidate.encode(), self._token)

    def issue(self, purpose: str) -> tuple[str, Session]:
        """A new cookie value for ``purpose`` (``session`` or ``login``) and its session."""
        session = Session(secrets.token_urlsafe(18), self._clock())
        payload = _b64(json.dumps([purpose, session.nonce, int(session.issued_at)]).encode())
        return f"{payload}.{self._mac('cookie', payload)}", session

    def verify(self, purpose: str, value: str | None, max_age: float) -> Session | None:
        """The session of a cookie value signed for ``purpose`` and younger than
        ``max_age`` seconds, else None (anything malformed is None)."""
        if not value or len(value) > 512:
            return None
        payload, _, mac = value.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("cookie", payload).encode()):
            return None
        try:
            kind, nonce, issued = json.loads(base64.urlsafe_b64decode(payload + "=="))
        except (ValueError, TypeError):
            return None
        if kind != purpose or not isinstance(nonce, str) or not isinstance(issued, int):
            return None
        if not 0 <= self._clock() - issued < max_age:
            return None
        return Session(nonce, float(issued))

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session: forms carry it, POSTs must."""
        return self._mac("csrf", session.nonce)

    def csrf_matches(self, session: Session | None, candidate: str | None) -> bool:
        if session is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.csrf(session).encode())

    def _mac(self, label: str, text: str) -> str:
        digest = hmac.new(self._key, f"{label}\x00{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)


class LoginLimiter:
    """At most ``attempts`` logins per client address in a window of ``window`` seconds."""

    def __init__(self, redis: Redis, keys: Keys, *, attempts: int, window: int) -> None:
        self.redis = redis
        self.keys = keys
        self.attempts = attempts
        self.window = window

    def attempt(self, client: str) -> float | None:
        """Count one attempt; None when allowed, else seconds until the window ends.
        One round trip. Raises RedisError when Redis does not answer or refuses."""
        key = self.keys.console_login(client)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window, nx=True)
            pipe.ttl(key)
            count, _, ttl = pipe.execute()
        if int(count) > self.attempts:
            return float(max(1, int(ttl)))
        return None

    def succeeded(self, client: str) -> None:
        """A correct token: the client's count starts again."""
        self.redis.delete(self.keys.console_login(client))


def client_address(host: str | None) -> str:
    """The client's address as a key segment: a parsed IP address, else ``unknown``.
    (Behind a reverse proxy, uvicorn puts the forwarded address here for trusted proxies.)"""
    try:
        return str(ipaddress.ip_address(host or ""))
    except ValueError:
        return "unknown"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
