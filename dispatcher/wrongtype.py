"""Keys of the wrong type: a data problem to name, not an outage to wait out.

Redis answers a command on a key holding another type (a string where the seen hash belongs)
with ``WRONGTYPE Operation against a key holding the wrong kind of value``: a
:class:`redis.exceptions.ResponseError` that names no key. A ``ConnectionError`` or
``TimeoutError`` means Redis is away and waiting helps; a wrong-type key stays broken until an
operator repairs or deletes it, so it must be reported, naming the key, by whoever meets it.
This module is the one place that tells the two apart and finds the key: callers pass the
keys their failed commands touched, one ``TYPE`` per key (pipelined) finds the culprit, and
:class:`WrongType` renders the one line that every report uses (logs, sweep records,
``dispatcher status``, ``/healthz``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ReadOnlyError, ResponseError

from dispatcher._text import as_str
from dispatcher.store.keys import Keys, WrongKeyTypeError

__all__ = [
    "WRONGTYPE_CODE",
    "WrongType",
    "describe",
    "find_wrong_types",
    "integration_keys",
    "is_refusal",
    "is_wrong_type",
    "printable",
    "shared_keys",
]

WRONGTYPE_CODE = "REDIS.WRONGTYPE"
"""The error code a sweep record carries when one of the integration's keys is broken."""


def is_wrong_type(exc: BaseException) -> bool:
    """True for Redis's ``WRONGTYPE`` answer (a script's error reply of that kind included)."""
    return isinstance(exc, WrongKeyTypeError) or (
        isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)
    )


def is_refusal(exc: BaseException) -> bool:
    """True when Redis answered but refused the command (a wrong-type key, a script's error):
    a problem of the data that retrying does not fix. A read-only replica (a failover in
    progress) is an outage, like a connection error."""
    return isinstance(exc, ResponseError) and not isinstance(exc, ReadOnlyError)


def printable(text: str) -> str:
    """``text`` with control characters escaped: key names hold attacker-controlled ids, and a
    problem must stay one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@dataclass(frozen=True, slots=True)
class WrongType:
    """One key holding another type than the dispatcher (or RQ) keeps there."""

    key: str
    found: str
    expected: str

    def __str__(self) -> str:
        return (
            f"key {printable(self.key)} holds a {self.found} where a {self.expected} belongs: "
            "repair or delete it"
        )


def find_wrong_types(redis: Redis, expected: Mapping[str, str]) -> list[WrongType]:
    """The keys of ``expected`` (key -> Redis type) that hold another type, in one round trip.

    A missing key (``none``) is never wrong: every command treats it as empty.
    """
    if not expected:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for key in expected:
            pipe.type(key)
        found = [as_str(t) for t in pipe.execute()]
    return [
        WrongType(key, kind, want)
        for (key, want), kind in zip(expected.items(), found, strict=True)
        if kind not in ("none", want)
    ]


def describe(exc: BaseException, wrong: Iterable[WrongType]) -> str:
    """One line for a failed command: the broken keys found, else Redis's own first line."""
    found = "; ".join(str(w) for w in wrong)
    if found:
        return found
    return printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def shared_keys(keys: Keys, queue_key: str) -> dict[str, str]:
    """The keys every poller, worker and webhook shares (key -> type), for ``/healthz`` and
    for diagnosing a failed command: one broken, and nothing works."""
    return {
        keys.schedule: "zset",
        keys.integrations: "set",
        keys.paused: "set",
        keys.seen_integrations: "set",
        keys.swept_integrations: "set",
        keys.stats: "hash",
        keys.step_stats: "hash",
        keys.kombo_requests: "hash",
        queue_key: "list",
        "rq:queues": "set",
    }


def integration_keys(keys: Keys, integration_id: str) -> dict[str, str]:
    """The keys of one integration the poller touches (key -> type)."""
    return {
        keys.seen(integration_id): "hash",
        keys.sweep(integration_id): "hash",
        keys.lease(integration_id): "string",
    }
