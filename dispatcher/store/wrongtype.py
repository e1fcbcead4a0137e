"""Keys of the wrong type: a data problem to name, not an outage to wait out.

Redis answers a command on a key holding another type (a string where the seen hash belongs)
with ``WRONGTYPE Operation against a key holding the wrong kind of value``: a
:class:`redis.exceptions.ResponseError` that names no key. A ``ConnectionError`` or
``TimeoutError`` means Redis is away and waiting helps; a wrong-type key stays broken until an
operator repairs or deletes it, so it must be reported, naming the key, by whoever meets it.
This module is the one place that knows about wrong-type keys:

- before a script writes: its guard (``dispatcher/store/lua/_type_guard.lua``) checks its
  keys' types first (Redis does not roll back a script that fails part-way) and
  :func:`key_types_checked` turns its answer into a :class:`WrongKeyTypeError` naming the key;
- after a command failed: :func:`is_wrong_type` and :func:`is_refusal` tell a data problem
  from an outage, and :func:`find_wrong_types` (callers pass the keys their failed commands
  touched, one ``TYPE`` per key, pipelined) finds the culprit; the keys every process
  shares, and each integration's, are listed in :mod:`dispatcher.store.key_types`;
- :class:`WrongType` renders the one line every report uses (logs, sweep records,
  ``dispatcher status``, ``/healthz``), with the error code :data:`WRONGTYPE_CODE`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ReadOnlyError, ResponseError

from dispatcher._text import as_str
from dispatcher.logs import escape_controls

__all__ = [
    "WRONGTYPE_CODE",
    "MetWrongTypes",
    "WrongKeyTypeError",
    "WrongType",
    "describe",
    "find_wrong_types",
    "is_refusal",
    "is_wrong_type",
    "key_types_checked",
    "name_wrong_type",
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


@dataclass(frozen=True, slots=True)
class WrongType:
    """One key holding another type than the dispatcher (or RQ) keeps there."""

    key: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{_holds(self.key, self.found, self.expected)}: repair or delete it"


class WrongKeyTypeError(ResponseError):
    """A key holds another type than the dispatcher writes there; nothing was written.

    A ResponseError, as Redis's own WRONGTYPE answer is, so that whoever handles that
    handles this; the message names the key, the type found and the type expected.
    """

    def __init__(
        self, key: str, found: str, expected: str, *, integration_id: str | None = None
    ) -> None:
        self.key = key
        self.found = found
        self.expected = expected
        self.integration_id = integration_id
        where = f"integration {integration_id}: " if integration_id is not None else ""
        super().__init__(
            f"{where}{_holds(key, found, expected)}; nothing was written: repair or delete it"
        )


# The error a guarded script answers (dispatcher/store/lua/_type_guard.lua): "<marker> <index
# of the key in KEYS> <type found>".
_WRONG_TYPE = "DISPATCHER_WRONGTYPE"


@contextmanager
def key_types_checked(
    keys: Sequence[str], expected: Sequence[str], *, integration_id: str | None = None
) -> Iterator[None]:
    """Around a script whose type guard checks ``expected`` (its ``KEY_TYPES``): its answer
    about a key of the wrong type is raised as a :class:`WrongKeyTypeError` naming the key."""
    try:
        yield
    except ResponseError as exc:
        marker, _, rest = str(exc).partition(" ")
        index, _, found = rest.partition(" ")
        if marker != _WRONG_TYPE or not index.isdigit() or not 1 <= int(index) <= len(expected):
            raise
        position = int(index) - 1
        raise WrongKeyTypeError(
            keys[position],
            found.split()[0] if found else "?",
            expected[position],
            integration_id=integration_id,
        ) from None


def name_wrong_type(
    redis: Redis, exc: ResponseError, key: str, expected: str, *, integration_id: str
) -> ResponseError:
    """Redis's bare WRONGTYPE answer to a command on ``key`` (it names no key) as a
    :class:`WrongKeyTypeError`; any other refusal as it is."""
    if not str(exc).startswith("WRONGTYPE"):
        return exc
    found = redis.type(key)
    return WrongKeyTypeError(key, as_str(found), expected, integration_id=integration_id)


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
    return escape_controls(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class MetWrongTypes:
    """Wrong-type keys a process met that no list of keys names (the console's per-client
    and per-session keys: finding them would take a SCAN), for ``dispatcher_redis_broken_keys``.

    Process-local and bounded (an attacker who can write Redis can plant any number of
    keys): each is TYPE-checked again, all in one round trip, when :meth:`still_broken` is
    asked, and forgotten once repaired or deleted.
    """

    LIMIT = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._met: dict[str, tuple[str, str]] = {}  # key -> (type expected, key as shown)

    def add(self, key: str, expected: str, shown: str) -> None:
        """``key`` held another type than ``expected``; ``shown``: the key as logs may name
        it (a session's nonce masked)."""
        with self._lock:
            if key in self._met or len(self._met) < self.LIMIT:
                self._met[key] = (expected, shown)

    def still_broken(self, redis: Redis) -> list[WrongType]:
        """The keys met that still hold another type (named as shown), one round trip."""
        with self._lock:
            met = dict(self._met)
        if not met:
            return []
        wrong = find_wrong_types(redis, {key: expected for key, (expected, _) in met.items()})
        broken = {w.key for w in wrong}
        with self._lock:
            for key in met.keys() - broken:
                self._met.pop(key, None)
        return [WrongType(met[w.key][1], w.found, w.expected) for w in wrong]


def _holds(key: str, found: str, expected: str) -> str:
    return f"key {escape_controls(key)} holds a {found} where a {expected} belongs"
