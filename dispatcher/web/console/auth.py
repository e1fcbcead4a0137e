"""The console's locks: the session cookie, CSRF tokens and the login rate limit.

The cookie is ``<payload>.<HMAC-SHA256>``, the payload a random nonce and the issue time,
signed with a key derived from ``DISPATCHER_CONSOLE_TOKEN`` (so changing the token logs
everyone out). A signature is not enough: the session must also be live in Redis
(:class:`Sessions`, :meth:`Keys.console_session`), and logout deletes it, so a cookie
captured before logout is dead after it, for pages and POSTs alike. The CSRF token of a
session is the HMAC of its nonce under another label: a page carries it in every form, a
POST without it (or with another session's) is refused. Before login, the login form is
bound the same way to a short-lived pre-session cookie.

Login attempts (:class:`LoginLimiter`) are counted in Redis in a fixed window: per client
address (an IPv6 client by its /64, since one host holds a whole /64), and across every such
client (a global cap, against guesses spread over many addresses). A browser that logged in
before carries a signed device cookie: its attempts are counted on their own and pass the
address limit and the global cap, so someone else's failures, from the operator's address
or anywhere, never lock out an operator's browser (OWASP's "device cookies").
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
from redis.exceptions import ResponseError

from dispatcher._text import as_str
from dispatcher.store.keys import Keys
from dispatcher.store.wrongtype import WrongKeyTypeError, is_wrong_type

__all__ = [
    "LoginLimiter",
    "Session",
    "Sessions",
    "Signer",
    "client_address",
    "shown_key",
]

SESSION_COOKIE = "dispatcher_console"
LOGIN_COOKIE = "dispatcher_console_login"
DEVICE_COOKIE = "dispatcher_console_device"
LOGIN_FORM_TTL = 3600.0
DEVICE_TTL = 30 * 24 * 3600.0
# Attempts of clients without a device cookie, all together, per window: this many times
# the per-client limit.
GLOBAL_FACTOR = 10


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


class Sessions:
    """Live console sessions in Redis, by nonce: created at login, deleted at logout."""

    def __init__(self, redis: Redis, keys: Keys, ttl: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def start(self, session: Session) -> None:
        self.redis.set(self.keys.console_session(session.nonce), 1, ex=max(1, int(self.ttl)))

    def alive(self, session: Session) -> bool:
        """Raises :class:`WrongKeyTypeError` when the session's key holds another type than
        the string :meth:`start` writes (TYPE rather than EXISTS: one round trip either way,
        and a planted key of any type is not a session)."""
        key = self.keys.console_session(session.nonce)
        found = as_str(self.redis.type(key))
        if found not in ("none", "string"):
            raise WrongKeyTypeError(key, found, "string")
        return found == "string"

    def end(self, session: Session) -> None:
        self.redis.delete(self.keys.console_session(session.nonce))


class LoginLimiter:
    """At most ``attempts`` logins per client in a window of ``window`` seconds, and
    ``GLOBAL_FACTOR`` times as many across every client without a device cookie."""

    def __init__(self, redis: Redis, keys: Keys, *, attempts: int, window: int) -> None:
        self.redis = redis
        self.keys = keys
        self.attempts = attempts
        self.window = window

    def attempt(self, client: str, device: Session | None = None) -> float | None:
        """Count one attempt of ``client`` (its address), or of ``device`` when the browser
        has a device cookie; None when allowed, else seconds until the window ends.
        An attempt refused by its client's own limit does not count towards the global cap
        (one address hammering on cannot spend it). One round trip, two for a client
        without a device cookie. Raises RedisError when Redis does not answer or refuses."""
        wait = self._count(self._key(client, device), self.attempts)
        if wait is None and device is None:
            wait = self._count(self.keys.console_login_all, self.attempts * GLOBAL_FACTOR)
        return wait

    def _count(self, key: str, limit: int) -> float | None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window, nx=True)
            pipe.ttl(key)
            try:
                count, _, ttl = pipe.execute()
            except ResponseError as exc:
                if not is_wrong_type(exc):
                    raise
                # Redis's answer names no key; this one is the only key the pipeline touched.
                raise WrongKeyTypeError(key, as_str(self.redis.type(key)), "string") from None
        if int(count) > limit:
            return float(max(1, int(ttl)))
        return None

    def succeeded(self, client: str, device: Session | None = None) -> None:
        """A correct token: the client's count starts again."""
        self.redis.delete(self._key(client, device))

    def _key(self, client: str, device: Session | None) -> str:
        return self.keys.console_login(f"device:{device.nonce}" if device else client)


def shown_key(keys: Keys, key: str) -> str:
    """``key`` as logs and pages may name it: a session's or a device's nonce is cut to its
    first characters (enough to find the key with ``redis-cli --scan --pattern``; the
    cookie's HMAC is needed besides, but the nonce is the session's name all the same)."""
    for prefix in (keys.console_session(""), keys.console_login("device:")):
        if key.startswith(prefix):
            return f"{key[: len(prefix) + _SHOWN_NONCE]}…"
    return key


_SHOWN_NONCE = 6


def client_address(host: str | None) -> str:
    """The client's address as a key segment: a parsed IP address (an IPv6 one as its /64
    network: one host holds a whole /64 and could take a new address per attempt), else
    ``unknown``. Behind a reverse proxy listed in ``DISPATCHER_TRUSTED_PROXIES``, uvicorn
    puts the forwarded address here; from anyone else, X-Forwarded-For is ignored."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
