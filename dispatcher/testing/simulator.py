"""A fake Kombo assessment API for the demo, the tests and the benchmarks.

The simulator answers the endpoints of the Kombo assessment API that the dispatcher uses:
get orders (current and deprecated), write a result back, and put/get the package list,
with Kombo's error envelope and codes. It is usable in process through an httpx
transport (:meth:`Simulator.transport`) or over a real socket (:meth:`Simulator.serve`).

Generated data is deterministic for a seed and deliberately awkward: nullable fields are
sometimes null, names carry unicode and the odd bit of HTML, and about one order in twenty
carries schema drift (an unknown field or an unknown hiring-team role) that a tolerant
client must accept (``schema_drift=False``, ``sim --no-schema-drift``: none, for clients
such as Kombo's official SDK that reject it; the orders are otherwise the same). Faults
(429, 500, truncated bodies, latency) can be forced one by one with
:meth:`Simulator.fail_next` or drawn at random with the :class:`Faults` probabilities.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import collections
import contextlib
import copy
import functools
import hashlib
import html
import json
import math
import random
import re
import socket
import socketserver
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

__all__ = ["DEFAULT_API_KEY", "Faults", "Simulator", "SimulatorServer"]

DEFAULT_API_KEY = "sim-api-key"

_IN_PROCESS_BASE_URL = "http://kombo.sim/v1"
_LOG_URL = "https://app.kombo.dev/sim/logs?interactionId={n}"

ORDER_STATUSES = ("OPEN", "COMPLETED", "CANCELLED", "REJECTED")
_RESULT_STATUSES = ("COMPLETED", "CANCELLED", "OPEN")
_PACKAGE_TYPES = (
    "BEHAVIORAL",
    "VIDEO_INTERVIEW",
    "SKILLS_TEST",
    "BACKGROUND_CHECK",
    "REFERENCE_CHECK",
)
_MAX_PAGE_SIZE = 250
_DEFAULT_PAGE_SIZE = 100
_MAX_ATTACHMENTS = 5

_INPUT_INVALID = "PLATFORM.INPUT_INVALID"
_TITLES: dict[str, str] = {
    "PLATFORM.AUTHENTICATION_INVALID": "The provided API key is invalid.",
    "PLATFORM.INTEGRATION_NOT_FOUND": "The integration could not be found.",
    _INPUT_INVALID: "The input is invalid.",
    "PLATFORM.RATE_LIMIT_EXCEEDED": "You have exceeded the rate limit.",
    "PLATFORM.UNKNOWN_ERROR": "An unknown error occurred.",
}

# The pattern Kombo documents for created_after; re.ASCII so that \d means 0-9 only.
_CREATED_AFTER_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?Z?", re.ASCII
)
_PAGE_SIZE_RE = re.compile(r"[0-9]{1,6}")

FaultKind = Literal["rate_limit", "server_error", "malformed", "drop_answer"]
_FAULT_KINDS: tuple[FaultKind, ...] = ("rate_limit", "server_error", "malformed", "drop_answer")

JSON = dict[str, Any]
_T = TypeVar("_T")
_Key = tuple[int, str]  # (created_at in µs since the Unix epoch, order id): the keyset order
_Route = Callable[[httpx.Request, str], tuple[int, "JSON | _RenderedPage"]]


@dataclass
class Faults:
    """Random faults, drawn per request from a seeded RNG. Mutable while the simulator runs."""

    rate_limit: float = 0.0
    """Probability per request of 429 ``PLATFORM.RATE_LIMIT_EXCEEDED`` with ``Retry-After``."""
    retry_after: float = 1.0
    """Seconds put in the ``Retry-After`` header of a 429."""
    server_error: float = 0.0
    """Probability per request of 500 ``PLATFORM.UNKNOWN_ERROR``."""
    malformed: float = 0.0
    """Probability per request of a 200 whose body is truncated, invalid JSON."""
    latency: float = 0.0
    """Seconds every request waits before it is answered (simulated network latency)."""
    drop_answer: float = 0.0
    """Probability per request that it is processed (a write applied) but its answer is
    lost: the connection drops (over a socket) or the transport raises (in process)."""


class _ApiError(Exception):
    """An error answer: raised anywhere in request handling, rendered as the Kombo envelope."""

    def __init__(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, _INPUT_INVALID, message)


@dataclass
class _ForcedFault:
    kind: FaultKind
    count: int
    integration_id: str | None


# --------------------------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ATS_PREFIXES = (
    "greenhouse",
    "lever",
    "workable",
    "personio",
    "recruitee",
    "smartrecruiters",
    "teamtailor",
    "ashby",
    "workday",
    "bamboohr",
    "jobvite",
    "successfactors",
)
_PACKAGE_IDS = (
    "typescript_test",
    "python_senior",
    "personality_big5",
    "background_check_de",
    "video_interview_en",
    "reference_check",
)
_FIRST_NAMES = (
    "Anna", "Jonas", "Zoë", "José", "Łukasz", "Sofia", "Mehmet", "Aiko", "Noah", "Amélie",
    "Søren", "Priya", "Olumide", "Chloé", "Mateo", "Ingrid", "Fatima", "Liam", "Emma", "Björn",
    "Siobhán", "Ngozi", "Wei", "Elif", "Sarah", "Thomas", "Julia", "David",
)  # fmt: skip
_LAST_NAMES = (
    "Müller", "García", "O'Brien", "Nowak", "Schmidt", "Y\u0131lmaz", "Tanaka", "Dubois", "Rossi",
    "Jensen", "Kowalski", "Smith", "李", "Nguyễn", "Okafor", "Lindqvist", "Papadopoulos",
    "Fernández", "van der Berg", "Ó Súilleabháin", "Meyer", "Johnson", "Weber", "Brown",
)  # fmt: skip
# Names a careless template would render as markup: downstream code must escape them.
_TRICKY_NAMES = ("<b>Max</b>", "Smith & Sons", "Ann <i>the</i> Great", "Tom &amp; Jerry")
_JOB_TITLES = (
    "Senior Backend Engineer (m/w/d)",
    "Frontend Developer",
    "Data Scientist",
    "Ingénieur·e logiciel",
    "R&D Lead",
    "Customer Success Manager",
    "Werkstudent*in Marketing",
    "Head of People",
    "DevOps Engineer <Kubernetes>",
    "Account Executive, DACH",
    "QA Engineer",
    "Product Designer",
)
_JOB_CODE_PREFIXES = ("ENG", "DS", "MKT", "HR", "SAL", "OPS")
_LOCATION_FIELDS = ("street_1", "street_2", "city", "state", "zip_code", "country", "raw")
_LOCATIONS: tuple[JSON, ...] = tuple(
    dict(zip(_LOCATION_FIELDS, values, strict=True))
    for values in (
        ("Lohmühlenstraße 65", None, "Berlin", "Berlin", "12435", "DE", "Berlin, Germany"),
        ("1 Market St", "Suite 300", "San Francisco", "CA", "94105", "US",
         "1 Market St, Suite 300, San Francisco, CA 94105"),
        (None, None, "London", None, None, "GB", "London, UK"),
        (None, None, None, None, None, None, "Remote (EU)"),
        ("Rue de Rivoli 99", None, "Paris", "Île-de-France", "75001", "FR", "Paris"),
        # Kombo passes the original value through when it cannot map a country to ISO2.
        (None, None, "Kraków", None, None, "Polska", "Kraków, Polska"),
        (None, None, "München", "Bayern", None, "DE", None),
    )
)  # fmt: skip
_ROLE_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("RECRUITER",),
    ("HIRING_MANAGER",),
    ("RECRUITER", "HIRING_MANAGER"),
)
_ROLE_WEIGHTS = (1, 4, 3, 2)
_EMAIL_DOMAINS = ("example.com", "example.org", "mail.example.net")
_PHONE_FORMATS = ("+49 30 {}", "+1 (415) 555-{}", "+44 20 7946 {}", "0176 {}", "+33 1 {}")
_CLOSED_STATUSES = ("COMPLETED", "CANCELLED", "REJECTED")
_CLOSED_WEIGHTS = (6, 2, 2)
_TRANSLIT = str.maketrans(
    {"Ł": "L", "ł": "l", "ø": "o", "Ø": "O", "ß": "ss", "\u0131": "i", "æ": "ae"}
)


def _b58(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_B58, k=n))


# Generation calls these hundreds of thousands of times: random() arithmetic is several times
# faster than rng.choice()/rng.randint(), and just as deterministic.
def _pick(rng: random.Random, seq: Sequence[_T]) -> _T:
    return seq[int(rng.random() * len(seq))]


def _digits(rng: random.Random, low: int, high: int) -> str:
    """A numeric remote id in [low, high)."""
    return str(low + int(rng.random() * (high - low)))


def _maybe(rng: random.Random, p_null: float, value: str) -> str | None:
    return None if rng.random() < p_null else value


@functools.lru_cache(maxsize=1024)
def _ascii_slug(name: str | None) -> str:
    """Fold a display name into an ASCII email local-part fragment ("Łukasz" -> "lukasz")."""
    if not name:
        return ""
    name = re.sub(r"<[^>]*>", "", name).translate(_TRANSLIT)
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def _person_name(rng: random.Random, pool: Sequence[str]) -> str | None:
    r = rng.random()
    if r < 0.05:
        return None
    if r < 0.08:
        return _pick(rng, _TRICKY_NAMES)
    return _pick(rng, pool)


def _make_description(rng: random.Random, title: str | None, city: str | None) -> str | None:
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.15:
        return f"Join our team as {title or 'a new colleague'}."  # plain text, no markup
    where = f" in {html.escape(city)}" if city else ""
    return (
        f"<p>We are looking for a <strong>{html.escape(title or 'new colleague')}</strong> "
        f"to join our team{where}.</p>"
        "<ul><li>Ownership from day one</li><li>Kaffee &amp; Kuchen every Friday</li></ul>"
        '<p>Questions? <a href="https://jobs.example.com/faq">Read our FAQ</a>.</p>'
    )


def _make_team(rng: random.Random) -> list[JSON]:
    if rng.random() < 0.2:
        return []
    members: list[JSON] = []
    for _ in range(rng.randint(1, 4)):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        email = f"{_ascii_slug(first)}.{_ascii_slug(last) or 'x'}@customer.example"
        members.append(
            {
                "remote_id": _maybe(rng, 0.05, _digits(rng, 100, 100_000)),
                "email": _maybe(rng, 0.15, email),
                "first_name": _maybe(rng, 0.05, first),
                "last_name": last,
                "hiring_team_roles": list(rng.choices(_ROLE_SETS, _ROLE_WEIGHTS)[0]),
            }
        )
    if len(members) > 1 and rng.random() < 0.15:
        # Some ATSs list a shared mailbox for several people: an email is not a person key.
        members[0]["email"] = members[1]["email"] = "recruiting@customer.example"
    return members


def _make_job(rng: random.Random) -> JSON:
    title = _maybe(rng, 0.05, rng.choice(_JOB_TITLES))
    location = None if rng.random() < 0.15 else rng.choice(_LOCATIONS)
    code = f"{rng.choice(_JOB_CODE_PREFIXES)}-{rng.randint(2023, 2025)}-{rng.randint(1, 99):02d}"
    return {
        "remote_id": _maybe(rng, 0.03, _digits(rng, 1000, 1_000_000)),
        "name": title,
        "job_code": _maybe(rng, 0.3, code),
        "description": _make_description(rng, title, location["city"] if location else None),
        "location": location,
        "hiring_team": _make_team(rng),
    }


def _drift_job(rng: random.Random, job: JSON) -> JSON:
    """A copy of a job with a hiring-team role the published schema does not list."""
    team = [dict(member) for member in job["hiring_team"]]
    if team:
        team[0]["hiring_team_roles"] = [*team[0]["hiring_team_roles"], "INTERVIEWER"]
    else:
        team = [
            {
                "remote_id": _digits(rng, 100, 100_000),
                "email": "panel@customer.example",
                "first_name": None,
                "last_name": None,
                "hiring_team_roles": ["INTERVIEWER"],
            }
        ]
    return {**job, "hiring_team": team}


_CANDIDATE_FIELDS = ("remote_id", "email", "first_name", "last_name", "phone")
_ORDER_ATTRIBUTES = ("id", "package_id", "candidate", "application", "job")


class _Order:
    """One stored order.

    A generated order keeps its candidate as a tuple and its application as the bare remote
    id, and shares its job with other orders: three small dicts per order would more than
    double the memory of 250k orders, and building the dicts of one page is cheap.
    ``candidate`` and ``application`` may also be dicts (schema drift, or ``add_order``).
    """

    __slots__ = (
        "_json",
        "application",
        "candidate",
        "created_us",
        "extra",
        "id",
        "job",
        "package_id",
        "status",
    )

    def __init__(self, order_id: str, package_id: Any, status: str, created_us: int) -> None:
        self.id = order_id
        self.package_id = package_id
        self.status = status
        self.created_us = created_us
        self.candidate: Any = None
        self.application: Any = None
        self.job: Any = None
        self.extra: JSON | None = None  # unknown top-level fields
        # (status, with_status, the rendered JSON): only the status changes once stored.
        self._json: tuple[str, bool, bytes] | None = None

    @property
    def key(self) -> _Key:
        return (self.created_us, self.id)

    def render(self, *, with_status: bool = True) -> JSON:
        """The order as the API returns it; nested objects are shared, never mutate them."""
        body: JSON = {"id": self.id, "package_id": self.package_id}
        if with_status:
            body["status"] = self.status
        candidate, application = self.candidate, self.application
        body["candidate"] = (
            dict(zip(_CANDIDATE_FIELDS, candidate, strict=True))
            if isinstance(candidate, tuple)
            else candidate
        )
        body["application"] = (
            application if isinstance(application, dict) else {"remote_id": application}
        )
        body["job"] = self.job
        if self.extra:
            body.update(self.extra)
        return body

    def render_json(self, *, with_status: bool = True, keep: bool = False) -> bytes:
        """:meth:`render` as JSON; ``keep``: kept until the status changes (nothing else
        does once the order is stored)."""
        cached = self._json
        if cached is not None and cached[0] == self.status and cached[1] == with_status:
            return cached[2]
        rendered = _dumps(self.render(with_status=with_status))
        if keep:
            self._json = (self.status, with_status, rendered)
        return rendered


def _make_order(
    rng: random.Random,
    jobs: Sequence[JSON],
    tag: str,
    status: str,
    created_us: int,
    *,
    drift: bool = True,
) -> _Order:
    first = _person_name(rng, _FIRST_NAMES)
    last = _person_name(rng, _LAST_NAMES)
    local = ".".join(s for s in (_ascii_slug(first), _ascii_slug(last)) if s) or "candidate"
    order = _Order(_b58(rng, 24), _pick(rng, _PACKAGE_IDS), status, created_us)
    order.candidate = (
        _maybe(rng, 0.03, _digits(rng, 100_000, 10_000_000)),
        # The tag (integration index and order number) keeps every email unique.
        f"{local}+{tag}@{_pick(rng, _EMAIL_DOMAINS)}",
        first,
        last,
        _maybe(rng, 0.3, _pick(rng, _PHONE_FORMATS).format(_digits(rng, 1000, 10_000_000))),
    )
    order.application = _maybe(rng, 0.1, _digits(rng, 100_000, 10_000_000))
    order.job = _pick(rng, jobs)
    if rng.random() < 0.05:
        # Without drift it goes on a throwaway copy: the random draws, and so every later
        # order, stay those of a run with drift.
        _add_drift(rng, order if drift else copy.copy(order))
    return order


def _add_drift(rng: random.Random, order: _Order) -> None:
    """Give an order something newer than the published schema, as a live API may."""
    kind = int(rng.random() * 4)
    if kind == 0:
        order.extra = {"custom_fields": {"source": "LinkedIn", "priority": rng.randint(1, 3)}}
    elif kind == 1:
        candidate = dict(zip(_CANDIDATE_FIELDS, order.candidate, strict=True))
        order.candidate = {**candidate, "custom_fields": {"pronouns": "they/them"}}
    elif kind == 2:
        order.job = _drift_job(rng, order.job)  # jobs are shared: drift goes on a copy
    else:
        order.job = {**order.job, "department": {"remote_id": "42", "name": "Engineering"}}


def _iso_now() -> str:
    """Now as Kombo writes a time: ``2024-05-01T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _us(dt: datetime) -> int:
    """Microseconds since the Unix epoch; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Integration:
    """The orders of one integration, kept sorted by (created_at, id) for keyset paging.

    ``keys`` and ``orders`` are parallel lists, so a page is a bisect plus a walk forward;
    nothing is re-sorted per request.
    """

    __slots__ = ("added", "by_id", "index", "jobs", "keys", "orders")

    def __init__(self, index: int, jobs: list[JSON]) -> None:
        self.index = index
        self.jobs = jobs
        self.keys: list[_Key] = []
        self.orders: list[_Order] = []
        self.by_id: dict[str, _Order] = {}
        self.added = 0

    def load(self, orders: list[_Order]) -> None:
        orders.sort(key=lambda order: order.key)
        self.orders = orders
        self.keys = [order.key for order in orders]
        self.by_id = {order.id: order for order in orders}

    def insert(self, order: _Order) -> None:
        key = order.key
        i = bisect.bisect_right(self.keys, key)
        self.keys.insert(i, key)
        self.orders.insert(i, order)
        self.by_id[order.id] = order

    def scan(
        self, ids: frozenset[str] | None, lower: _Key | None, after: _Key | None
    ) -> Iterator[_Order]:
        """Orders in keyset order with key >= lower and key > after."""
        if ids is not None:
            found = sorted((self.by_id[i] for i in ids if i in self.by_id), key=lambda o: o.key)
            for order in found:
                key = order.key
                if (lower is None or key >= lower) and (after is None or key > after):
                    yield order
            return
        start = 0 if lower is None else bisect.bisect_left(self.keys, lower)
        if after is not None:
            start = max(start, bisect.bisect_right(self.keys, after))
        orders = self.orders
        for i in range(start, len(orders)):
            yield orders[i]


# --------------------------------------------------------------------------------------------
# Query parameters and cursors
# --------------------------------------------------------------------------------------------


def _parse_page_size(value: str | None) -> int:
    if value is None:
        return _DEFAULT_PAGE_SIZE
    if not _PAGE_SIZE_RE.fullmatch(value) or not 1 <= int(value) <= _MAX_PAGE_SIZE:
        raise _invalid(f"page_size must be an integer from 1 to {_MAX_PAGE_SIZE}, got {value!r}")
    return int(value)


def _parse_csv(value: str | None, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not items:
        raise _invalid(f"{name} must be a comma-separated list with at least one entry")
    return items


def _parse_statuses(value: str | None) -> frozenset[str] | None:
    statuses = _parse_csv(value, "statuses")
    bad = sorted(statuses - set(ORDER_STATUSES)) if statuses else []
    if bad:
        raise _invalid(
            f"statuses contains {', '.join(map(repr, bad))}; "
            f"allowed values are {', '.join(ORDER_STATUSES)}"
        )
    return statuses


def _parse_created_after(value: str | None) -> int | None:
    if value is None:
        return None
    match = _CREATED_AFTER_RE.fullmatch(value)
    message = f"created_after must be a date-time like 2024-05-01T12:00:00.000Z, got {value!r}"
    if not match:
        raise _invalid(message)
    year, month, day, hour, minute, second, fraction = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            micros, tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        raise _invalid(message) from None
    return _us(dt)


def _filter_hash(*parts: object) -> str:
    """Fingerprint of everything a cursor is only valid with (endpoint, integration, filters)."""
    canonical = json.dumps([sorted(p) if isinstance(p, frozenset) else p for p in parts])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_cursor(key: _Key, fingerprint: str) -> str:
    raw = f"{key[0]}|{fingerprint}|{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(value: str | None, fingerprint: str) -> _Key | None:
    if not value:  # an empty cursor= is what some clients send for "first page"
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")
        created, cursor_fingerprint, order_id = raw.split("|", 2)
        key = (int(created), order_id)
    except ValueError:  # covers binascii.Error and UnicodeDecodeError
        raise _invalid(f"cursor {value!r} is not a cursor this API issued") from None
    if cursor_fingerprint != fingerprint:
        raise _invalid(
            "cursor was issued for a different endpoint, integration or filters: keep ids, "
            "statuses and created_after the same while paging"
        )
    return key


# --------------------------------------------------------------------------------------------
# Request body validation
# --------------------------------------------------------------------------------------------


def _json_body(request: httpx.Request) -> Any:
    try:
        return json.loads(request.content)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("request body is not valid JSON") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require_str(obj: JSON, field: str, where: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}{field} is required and must be a non-empty string")
    return value


def _require_url(obj: JSON, field: str, where: str = "") -> None:
    value = _require_str(obj, field, where)
    if not value.startswith(("http://", "https://")):
        raise _invalid(f"{where}{field} must be an http(s) URL, got {value!r}")


def _check_completed_at(body: JSON) -> None:
    value = body.get("completed_at")
    if value is None:
        if body["status"] in ("COMPLETED", "CANCELLED"):
            raise _invalid(f"completed_at is required when status is {body['status']}")
        return
    try:
        if not isinstance(value, str) or "T" not in value:
            raise ValueError(value)
        datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(f"completed_at must be an ISO 8601 date-time, got {value!r}") from None


def _check_scores(body: JSON) -> list[JSON]:
    for field in ("score", "max_score"):
        value = body.get(field)
        if value is not None and not _is_number(value):
            raise _invalid(f"{field} must be a number, got {value!r}")
    if body.get("score") is not None and body.get("max_score") is None:
        return [{"message": "score ignored: the ATS can only show a score with its max_score"}]
    return []


def _check_sub_result(attribute: JSON, where: str) -> None:
    _require_str(attribute, "id", where)
    _require_str(attribute, "label", where)
    score = attribute.get("score")
    if not isinstance(score, dict) or not all(_is_number(score.get(k)) for k in ("value", "max")):
        raise _invalid(f"{where}score must be an object with numbers value and max")
    if attribute.get("status") not in ("COMPLETED", "CANCELLED"):
        raise _invalid(f"{where}status must be COMPLETED or CANCELLED")


def _check_attributes(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _invalid("attributes must be a list")
    for i, attribute in enumerate(value):
        where = f"attributes[{i}]."
        if not isinstance(attribute, dict):
            raise _invalid(f"attributes[{i}] must be an object")
        kind = attribute.get("type")
        if kind == "TEXT":
            _require_str(attribute, "label", where)
            if not isinstance(attribute.get("value"), str):
                raise _invalid(f"{where}value is required and must be a string")
        elif kind == "SUB_RESULT":
            _check_sub_result(attribute, where)
        else:
            raise _invalid(f"{where}type must be TEXT or SUB_RESULT, got {kind!r}")


def _check_attachment(attachment: Any, where: str) -> None:
    if not isinstance(attachment, dict):
        raise _invalid(f"{where.rstrip('.')} must be an object")
    _require_str(attachment, "name", where)
    if "data_url" in attachment:
        if "data" in attachment:
            raise _invalid(f"{where}data and {where}data_url are exclusive: give one")
        _require_url(attachment, "data_url", where)
        return
    _require_str(attachment, "content_type", where)
    data = _require_str(attachment, "data", where)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}data is not valid base64") from None


def _check_attachments(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _invalid("attachments must be a list")
    if len(value) > _MAX_ATTACHMENTS:
        raise _invalid(f"attachments allows at most {_MAX_ATTACHMENTS} items, got {len(value)}")
    for i, attachment in enumerate(value):
        _check_attachment(attachment, f"attachments[{i}].")


def _validate_result(body: Any) -> list[JSON]:
    """Validate a result write-back body; return the warnings for the answer."""
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    if body.get("status") not in _RESULT_STATUSES:
        raise _invalid(
            f"status is required and must be one of {', '.join(_RESULT_STATUSES)}, "
            f"got {body.get('status')!r}"
        )
    _require_url(body, "result_url")
    _check_completed_at(body)
    warnings = _check_scores(body)
    _check_attributes(body.get("attributes"))
    _check_attachments(body.get("attachments"))
    if body.get("remote_fields") is not None and not isinstance(body["remote_fields"], dict):
        raise _invalid("remote_fields must be an object")
    return warnings


def _validate_packages(body: Any) -> list[JSON]:
    if not isinstance(body, dict) or not isinstance(body.get("packages"), list):
        raise _invalid("packages is required and must be a list")
    packages: list[JSON] = []
    seen: set[str] = set()
    for i, package in enumerate(body["packages"]):
        where = f"packages[{i}]."
        if not isinstance(package, dict):
            raise _invalid(f"packages[{i}] must be an object")
        for field in ("id", "type", "name", "description"):
            if not isinstance(package.get(field), str):
                raise _invalid(f"{where}{field} is required and must be a string")
        if package["type"] not in _PACKAGE_TYPES:
            raise _invalid(
                f"{where}type must be one of {', '.join(_PACKAGE_TYPES)}, got {package['type']!r}"
            )
        if package["id"] in seen:
            raise _invalid(f"{where}id {package['id']!r} appears twice")
        seen.add(package["id"])
        packages.append({k: package[k] for k in ("id", "type", "name", "description")})
    return packages


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class _RenderedPage:
    """A page whose orders are already JSON: joined, not serialized again."""

    next: str | None
    results: list[bytes]

    def to_json(self) -> bytes:
        return b"".join(
            (
                b'{"status":"success","data":{"next":',
                _dumps(self.next),
                b',"results":[',
                b",".join(self.results),
                b"]}}",
            )
        )


def _json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"Content-Type": "application/json", **(headers or {})},
        content=payload.to_json() if isinstance(payload, _RenderedPage) else _dumps(payload),
    )


class Simulator:
    """A fake Kombo assessment API holding orders for several integrations in memory.

    Args:
        integrations: how many integrations to invent, or their exact ids.
        orders: OPEN orders generated per integration.
        closed: COMPLETED/CANCELLED/REJECTED orders per integration (default ``orders // 10``).
        api_key: the bearer token every request must carry.
        seed: makes integration ids, orders and random faults reproducible.
        faults: random fault probabilities and latency; mutable later through ``faults``.
        sleep: how latency waits (tests inject a fake).
        keep_rendered: keep each order's JSON once rendered (about 1 KB an order), so that
            serving a page costs next to nothing: the benchmarks measure the poller, not the
            stand-in for Kombo's servers.
        schema_drift: give about one order in twenty something newer than the published
            schema (an unknown field, an unknown hiring-team role); False for clients that
            validate strictly, such as Kombo's official SDK.
    """

    def __init__(
        self,
        integrations: int | Sequence[str] = 3,
        orders: int = 20,
        *,
        closed: int | None = None,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 0,
        faults: Faults | None = None,
        sleep: Callable[[float], None] = time.sleep,
        keep_rendered: bool = False,
        schema_drift: bool = True,
    ) -> None:
        if orders < 0 or (closed is not None and closed < 0):
            raise ValueError("orders and closed must not be negative")
        self.api_key = api_key
        self.seed = seed
        self.faults: Faults = faults if faults is not None else Faults()
        self.integration_ids: list[str] = self._make_integration_ids(integrations, seed)
        self.request_count = 0
        self.requests_by_path: collections.Counter[str] = collections.Counter()
        self.results: dict[tuple[str, str], JSON] = {}
        # Result writes Kombo applied, per (integration, order): what exactly-once tests count.
        self.applied_writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.write_concurrency_limit: int | None = None
        """Result writes in flight per integration beyond which a write is answered 429
        ``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED`` (Kombo's is about 30); None: no limit."""
        self.writes_in_flight: collections.Counter[str] = collections.Counter()
        self.max_writes_in_flight: collections.Counter[str] = collections.Counter()
        """The most result writes ever in flight at once, per integration."""
        self.packages: dict[str, list[JSON]] = {}
        # When each integration's list was last PUT (GET answers it as updated_at).
        self.packages_updated: dict[str, str] = {}
        self._open_per_integration = orders
        self._closed_per_integration = orders // 10 if closed is None else closed
        self._sleep = sleep
        self._keep_rendered = keep_rendered
        self.schema_drift = schema_drift
        self._lock = threading.Lock()
        self._index = {iid: i for i, iid in enumerate(self.integration_ids)}
        # Orders are generated per integration on first access: 1,000 integrations start
        # instantly and a run that touches only a few of them never pays for the rest.
        self._states: dict[str, _Integration] = {}
        self._forced: list[_ForcedFault] = []
        self._fault_rng = random.Random(f"kombo-sim/{seed}/faults")
        # Generated created_at values lie in the 30 days before this instant (ms resolution).
        self._epoch_us = _us(datetime.now(UTC)) // 1000 * 1000

    @staticmethod
    def _make_integration_ids(integrations: int | Sequence[str], seed: int) -> list[str]:
        if isinstance(integrations, str):
            integrations = [integrations]
        if not isinstance(integrations, int):
            ids = list(integrations)
            if len(set(ids)) != len(ids):
                raise ValueError("integration ids must be unique")
            return ids
        if integrations < 0:
            raise ValueError("integrations must not be negative")
        rng = random.Random(f"kombo-sim/{seed}/integrations")
        prefixes = list(_ATS_PREFIXES)
        rng.shuffle(prefixes)  # cycle a shuffled list so that a handful of ids all differ
        return [f"{prefixes[i % len(prefixes)]}:{_b58(rng, 22)}" for i in range(integrations)]

    @property
    def base_url(self) -> str:
        """Base URL to use with :meth:`transport` (any host works; this one reads well)."""
        return _IN_PROCESS_BASE_URL

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers every request in process through :meth:`handle`."""
        return httpx.MockTransport(self.handle)

    # ---------------------------------------------------------------- state (lock held)

    def _state(self, integration_id: str) -> _Integration:
        state = self._states.get(integration_id)
        if state is None:
            if integration_id not in self._index:
                raise KeyError(f"unknown integration {integration_id!r}")
            state = self._generate(integration_id)
            self._states[integration_id] = state
        return state

    def _generate(self, integration_id: str) -> _Integration:
        # Seeded by the integration id, not by position or access order, so lazy generation
        # gives the same orders whichever integration is touched first.
        rng = random.Random(f"kombo-sim/{self.seed}/{integration_id}")
        index = self._index[integration_id]
        state = _Integration(index, [_make_job(rng) for _ in range(rng.randint(3, 12))])
        statuses = ["OPEN"] * self._open_per_integration + rng.choices(
            _CLOSED_STATUSES, _CLOSED_WEIGHTS, k=self._closed_per_integration
        )
        window_ms = 30 * 86_400_000
        state.load(
            [
                _make_order(
                    rng,
                    state.jobs,
                    f"{index}-{n}",
                    status,
                    self._epoch_us - int(rng.random() * window_ms) * 1000,
                    drift=self.schema_drift,
                )
                for n, status in enumerate(statuses)
            ]
        )
        return state

    # ---------------------------------------------------------------- test helpers

    def generate_all(self) -> None:
        """Generate every integration's orders now instead of on first access.

        Generation costs about 10 µs per order; benchmarks call this first so that it is not
        part of what they measure.
        """
        with self._lock:
            for integration_id in self.integration_ids:
                self._state(integration_id)

    def add_order(
        self,
        integration_id: str,
        *,
        status: str = "OPEN",
        created_at: datetime | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add an order (as a customer ordering a package would) and return it in API shape.

        ``fields`` replace top-level keys of a generated order (``id``, ``package_id``,
        ``candidate``, ``application``, ``job``) or add unknown ones. ``created_at`` defaults
        to now, which sorts the order after every generated one.
        """
        _check_status(status)
        created_us = _us(created_at or datetime.now(UTC))
        fields = copy.deepcopy(fields)  # the caller may keep mutating what it passed in
        with self._lock:
            state = self._state(integration_id)
            state.added += 1
            rng = random.Random(f"kombo-sim/{self.seed}/{integration_id}/added/{state.added}")
            tag = f"{state.index}-a{state.added}"
            order = _make_order(rng, state.jobs, tag, status, created_us, drift=self.schema_drift)
            for name, value in fields.items():
                if name in _ORDER_ATTRIBUTES:
                    setattr(order, name, value)
                else:
                    order.extra = {**(order.extra or {}), name: value}
            if not isinstance(order.id, str) or not order.id or order.id in state.by_id:
                raise ValueError(f"order id {order.id!r} is invalid or already used")
            state.insert(order)
            return copy.deepcopy(order.render())

    def set_status(self, integration_id: str, order_id: str, status: str) -> None:
        """Change an order's status, as the ATS or another vendor process might."""
        _check_status(status)
        with self._lock:
            self._order(integration_id, order_id).status = status

    def orders(self, integration_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """All orders of an integration (optionally one status) in API shape and API order."""
        with self._lock:
            state = self._state(integration_id)
            selected = [o.render() for o in state.orders if status is None or o.status == status]
            return copy.deepcopy(selected)  # rendered orders share jobs with the stored ones

    def created_at(self, integration_id: str, order_id: str) -> datetime:
        """The internal creation time of an order (the API does not return it)."""
        with self._lock:
            created_us = self._order(integration_id, order_id).created_us
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=created_us)

    def _order(self, integration_id: str, order_id: str) -> _Order:
        order = self._state(integration_id).by_id.get(order_id)
        if order is None:
            raise KeyError(f"unknown order {order_id!r} in {integration_id!r}")
        return order

    def fail_next(
        self,
        kind: FaultKind,
        count: int = 1,
        *,
        integration_id: str | None = None,
    ) -> None:
        """Force the next ``count`` admitted requests (optionally of one integration) to fail.

        Forced faults are used up before random ones are drawn. Requests refused for bad
        auth or an unknown integration or path do not use them up.
        """
        if kind not in _FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._forced.append(_ForcedFault(kind, count, integration_id))

    # ---------------------------------------------------------------- request handling

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one API request. Thread-safe; latency is spent outside the lock.

        A result write counts as in flight for its integration from its arrival to its
        answer (latency included); beyond ``write_concurrency_limit`` it is refused with 429
        ``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED`` and Kombo's two headers. A ``drop_answer``
        fault raises httpx.RemoteProtocolError after the request was processed.
        """
        writing = _is_result_write(request)
        integration = request.headers.get("X-Integration-Id", "")
        limit: int | None = None
        in_flight = 0
        if writing:
            with self._lock:
                self.writes_in_flight[integration] += 1
                in_flight = self.writes_in_flight[integration]
                limit = self.write_concurrency_limit
                if limit is None or in_flight <= limit:
                    self.max_writes_in_flight[integration] = max(
                        self.max_writes_in_flight[integration], in_flight
                    )
        try:
            if writing and limit is not None and in_flight > limit:
                with self._lock:
                    self.request_count += 1
                    interaction = self.request_count
                    self.requests_by_path[request.url.path] += 1
                error = _ApiError(
                    429,
                    "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
                    f"More than {limit} write requests in flight for this integration.",
                    {"Concurrency-Limit": str(limit), "Concurrency-Remaining": "0"},
                )
                return _error_response(error, interaction)
            return self._handle(request)
        finally:
            if writing:
                with self._lock:
                    self.writes_in_flight[integration] -= 1

    def _handle(self, request: httpx.Request) -> httpx.Response:
        latency = self.faults.latency
        if latency > 0:
            self._sleep(latency)
        with self._lock:
            self.request_count += 1
            interaction = self.request_count
            self.requests_by_path[request.url.path] += 1
        fault: FaultKind | None = None
        try:
            route, integration_id = self._admit(request)
            fault = self._draw_fault(integration_id)
            if fault == "rate_limit":
                raise _ApiError(
                    429,
                    "PLATFORM.RATE_LIMIT_EXCEEDED",
                    "Too many requests: slow down and retry after the Retry-After delay.",
                    {"Retry-After": _format_seconds(self.faults.retry_after)},
                )
            if fault == "server_error":
                raise _ApiError(500, "PLATFORM.UNKNOWN_ERROR", "Simulated internal error.")
            status, payload = route(request, integration_id)
            response = _json_response(status, payload)
        except _ApiError as exc:
            response = _error_response(exc, interaction)
        except Exception as exc:  # a simulator bug must still look like an API answer
            error = _ApiError(500, "PLATFORM.UNKNOWN_ERROR", f"simulator error: {exc!r}")
            response = _error_response(error, interaction)
        if fault == "drop_answer":
            raise httpx.RemoteProtocolError(
                "simulated: the request was processed, its answer lost", request=request
            )
        if fault == "malformed":
            # The request was processed (a write did happen) but the answer is cut short, as
            # when a connection drops mid-body: clients must not assume a garbled 200 did nothing.
            body = response.content
            return httpx.Response(
                200, headers={"Content-Type": "application/json"}, content=body[: len(body) // 2]
            )
        return response

    def _admit(self, request: httpx.Request) -> tuple[_Route, str]:
        """Check auth, route and integration, in that order; return the route to run."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise _ApiError(
                401,
                "PLATFORM.AUTHENTICATION_INVALID",
                "The Authorization header must be 'Bearer <your API key>'.",
            )
        route = self._route(request.method, request.url.path)
        integration_id = request.headers.get("X-Integration-Id")
        if not integration_id or integration_id not in self._index:
            raise _ApiError(
                404,
                "PLATFORM.INTEGRATION_NOT_FOUND",
                f"No integration with the id {integration_id!r} (X-Integration-Id header).",
            )
        return route, integration_id

    def _route(self, method: str, path: str) -> _Route:
        parts = path.rstrip("/").split("/")
        routes: dict[str, _Route] = {}
        if parts[:3] == ["", "v1", "assessment"]:
            rest = parts[3:]
            if rest == ["orders"]:
                routes = {"GET": self._get_orders}
            elif rest == ["orders", "open"]:
                routes = {"GET": self._get_open_orders}
            elif len(rest) == 3 and rest[0] == "orders" and rest[1] and rest[2] == "result":
                routes = {"PUT": functools.partial(self._put_result, order_id=rest[1])}
            elif rest == ["packages"]:
                routes = {"GET": self._get_packages, "PUT": self._put_packages}
        if not routes:
            raise _ApiError(404, None, f"No endpoint at {method} {path}.")
        if method not in routes:
            raise _ApiError(
                405, None, f"{method} is not allowed on {path}.", {"Allow": ", ".join(routes)}
            )
        return routes[method]

    def _draw_fault(self, integration_id: str) -> FaultKind | None:
        with self._lock:
            for forced in self._forced:
                if forced.integration_id in (None, integration_id):
                    forced.count -= 1
                    if forced.count == 0:
                        self._forced.remove(forced)
                    return forced.kind
            # One draw per request, whatever the probabilities, keeps the sequence reproducible
            # when a test flips faults on and off.
            draw = self._fault_rng.random()
        faults = self.faults
        probabilities = (
            faults.rate_limit,
            faults.server_error,
            faults.malformed,
            faults.drop_answer,
        )
        for kind, probability in zip(_FAULT_KINDS, probabilities, strict=True):
            if draw < probability:
                return kind
            draw -= probability
        return None

    # ---------------------------------------------------------------- endpoints

    def _get_orders(self, request: httpx.Request, integration_id: str) -> tuple[int, _RenderedPage]:
        params = request.url.params
        page_size = _parse_page_size(params.get("page_size"))
        ids = _parse_csv(params.get("ids"), "ids")
        statuses = _parse_statuses(params.get("statuses"))
        created_after = _parse_created_after(params.get("created_after"))
        fingerprint = _filter_hash("orders", integration_id, ids, statuses, created_after)
        after = _decode_cursor(params.get("cursor"), fingerprint)
        lower = None if created_after is None else (created_after, "")
        with self._lock:
            items = self._state(integration_id).scan(ids, lower, after)
            page, last = _take_page(items, statuses, page_size)
            # Rendered under the lock so that each order's status is read consistently.
            results = [order.render_json(keep=self._keep_rendered) for order in page]
        cursor = None if last is None else _encode_cursor(last, fingerprint)
        return 200, _RenderedPage(cursor, results)

    def _get_open_orders(
        self, request: httpx.Request, integration_id: str
    ) -> tuple[int, _RenderedPage]:
        params = request.url.params
        page_size = _parse_page_size(params.get("page_size"))
        fingerprint = _filter_hash("orders/open", integration_id)
        after = _decode_cursor(params.get("cursor"), fingerprint)
        with self._lock:
            items = self._state(integration_id).scan(None, None, after)
            page, last = _take_page(items, frozenset({"OPEN"}), page_size)
            # The deprecated endpoint predates the status field.
            results = [
                order.render_json(with_status=False, keep=self._keep_rendered) for order in page
            ]
        cursor = None if last is None else _encode_cursor(last, fingerprint)
        return 200, _RenderedPage(cursor, results)

    def _put_result(
        self, request: httpx.Request, integration_id: str, *, order_id: str
    ) -> tuple[int, JSON]:
        with self._lock:
            exists = order_id in self._state(integration_id).by_id
        if not exists:
            raise _ApiError(
                404, _INPUT_INVALID, f"order {order_id!r} does not exist in {integration_id}"
            )
        body = _json_body(request)
        warnings = _validate_result(body)  # outside the lock: base64 checks can be slow
        with self._lock:
            order = self._order(integration_id, order_id)  # orders are never deleted
            if order.status != "OPEN":
                raise _invalid(
                    f"order {order_id} is {order.status}; a result can change it only while OPEN"
                )
            self.results[(integration_id, order_id)] = body
            self.applied_writes[(integration_id, order_id)] += 1
            order.status = body["status"]
        return 200, {"status": "success", "data": {}, "warnings": warnings}

    def _get_packages(self, request: httpx.Request, integration_id: str) -> tuple[int, JSON]:
        with self._lock:
            packages = copy.deepcopy(self.packages.get(integration_id, []))
            updated_at = self.packages_updated.get(integration_id)
        # Kombo's schema (and its SDK) has updated_at on every listed package, maybe null.
        listed = [{**package, "updated_at": updated_at} for package in packages]
        return 200, {"status": "success", "data": {"packages": listed}}

    def _put_packages(self, request: httpx.Request, integration_id: str) -> tuple[int, JSON]:
        packages = _validate_packages(_json_body(request))
        with self._lock:
            self.packages[integration_id] = packages
            self.packages_updated[integration_id] = _iso_now()
        return 200, {"status": "success", "data": {}, "warnings": []}

    # ---------------------------------------------------------------- sockets

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
        """Serve the API over HTTP in a daemon thread; ``port=0`` picks a free port."""
        return SimulatorServer(self, host, port)

    def serve_forever(
        self, host: str, port: int, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve the API over HTTP in this thread until KeyboardInterrupt (for the CLI).

        ``ready`` is called with the base URL once the socket listens (``port=0``: the port
        picked).
        """
        server = _HTTPServer((host, port), self)
        if ready is not None:
            ready(_base_url(host, int(server.server_address[1])))
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close_connections()
            server.server_close()


def _check_status(status: str) -> None:
    if status not in ORDER_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ORDER_STATUSES)}, got {status!r}")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _take_page(
    orders: Iterable[_Order], statuses: frozenset[str] | None, page_size: int
) -> tuple[list[_Order], _Key | None]:
    """The first page_size matching orders, and the cursor key if at least one more matches."""
    page: list[_Order] = []
    for order in orders:
        if statuses is not None and order.status not in statuses:
            continue
        if len(page) == page_size:
            return page, page[-1].key  # a further match exists, so there is a next page
        page.append(order)
    return page, None


def _is_result_write(request: httpx.Request) -> bool:
    parts = request.url.path.rstrip("/").split("/")
    return request.method == "PUT" and len(parts) == 6 and parts[-1] == "result"


def _error_response(error: _ApiError, interaction: int) -> httpx.Response:
    payload = {
        "status": "error",
        "error": {
            "code": error.code,
            "title": _TITLES.get(error.code) if error.code else None,
            "message": error.message,
            "log_url": _LOG_URL.format(n=interaction),
        },
    }
    return _json_response(error.status, payload, error.headers)


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class _RequestHandler(BaseHTTPRequestHandler):
    """Converts between http.server and httpx so that the socket path runs the same handle()."""

    protocol_version = "HTTP/1.1"  # keep-alive: benchmark clients reuse connections
    # Headers and body leave in separate writes; with Nagle on, the body of every second
    # answer on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: one stderr line per request would swamp benchmarks."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF closing each chunk
            while self.rfile.readline().strip():  # optional trailers, then the final CRLF
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            request = httpx.Request(
                self.command, "http://kombo.sim" + self.path, headers=headers, content=body
            )
        except (ValueError, httpx.InvalidURL):
            self.send_error(400, "Bad request")
            return
        try:
            response = self.server.simulator.handle(request)
        except httpx.TransportError:
            # A drop_answer fault: the write happened, the client never hears of it.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = response.content
        self.send_response(response.status_code)
        for key, value in response.headers.multi_items():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block exit
    request_queue_size = 1024  # benchmarks open hundreds of connections at once

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall
        # for seconds on machines without DNS; the name is not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut idle keep-alive connections: their daemon threads would otherwise serve on."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer are normal under load; anything else is reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _base_url(host: str, port: int) -> str:
    """The base URL a client on this machine uses for a server bound to ``host:port``."""
    url_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in url_host and not url_host.startswith("["):
        url_host = f"[{url_host}]"
    return f"http://{url_host}:{port}/v1"


class SimulatorServer:
    """A running socket server for a :class:`Simulator`; close it or use it as a context."""

    def __init__(self, simulator: Simulator, host: str, port: int) -> None:
        self._httpd = _HTTPServer((host, port), simulator)
        self.host = host
        self.port: int = int(self._httpd.server_address[1])
        self.url = _base_url(host, self.port)
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() returns quickly
            name=f"kombo-sim:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, cut open connections and release the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
