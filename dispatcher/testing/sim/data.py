"""The simulator's orders: generated (deterministic for a seed, deliberately awkward) and
stored per integration in keyset order (created_at, id) for paging."""

from __future__ import annotations

import bisect
import copy
import functools
import html
import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from dispatcher.testing.sim.envelope import dumps

__all__ = [
    "CLOSED_STATUSES",
    "CLOSED_WEIGHTS",
    "JSON",
    "ORDER_ATTRIBUTES",
    "ORDER_STATUSES",
    "IntegrationOrders",
    "Key",
    "StoredOrder",
    "iso_now",
    "make_integration_ids",
    "make_job",
    "make_order",
    "to_us",
]

ORDER_STATUSES = ("OPEN", "COMPLETED", "CANCELLED", "REJECTED")

JSON = dict[str, Any]
_T = TypeVar("_T")
Key = tuple[int, str]  # (created_at in µs since the Unix epoch, order id): the keyset order

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
CLOSED_STATUSES = ("COMPLETED", "CANCELLED", "REJECTED")
CLOSED_WEIGHTS = (6, 2, 2)
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


def make_job(rng: random.Random) -> JSON:
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


def make_integration_ids(integrations: int | Sequence[str], seed: int) -> list[str]:
    """The given ids (checked unique), or as many ids invented for the seed."""
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


_CANDIDATE_FIELDS = ("remote_id", "email", "first_name", "last_name", "phone")
ORDER_ATTRIBUTES = ("id", "package_id", "candidate", "application", "job")


class StoredOrder:
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
    def key(self) -> Key:
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
        rendered = dumps(self.render(with_status=with_status))
        if keep:
            self._json = (self.status, with_status, rendered)
        return rendered


def make_order(
    rng: random.Random,
    jobs: Sequence[JSON],
    tag: str,
    status: str,
    created_us: int,
    *,
    drift: bool = True,
) -> StoredOrder:
    first = _person_name(rng, _FIRST_NAMES)
    last = _person_name(rng, _LAST_NAMES)
    local = ".".join(s for s in (_ascii_slug(first), _ascii_slug(last)) if s) or "candidate"
    order = StoredOrder(_b58(rng, 24), _pick(rng, _PACKAGE_IDS), status, created_us)
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


def _add_drift(rng: random.Random, order: StoredOrder) -> None:
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


def iso_now() -> str:
    """Now as Kombo writes a time: ``2024-05-01T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class IntegrationOrders:
    """The orders of one integration, kept sorted by (created_at, id) for keyset paging.

    ``keys`` and ``orders`` are parallel lists, so a page is a bisect plus a walk forward;
    nothing is re-sorted per request.
    """

    __slots__ = ("added", "by_id", "index", "jobs", "keys", "orders")

    def __init__(self, index: int, jobs: list[JSON]) -> None:
        self.index = index
        self.jobs = jobs
        self.keys: list[Key] = []
        self.orders: list[StoredOrder] = []
        self.by_id: dict[str, StoredOrder] = {}
        self.added = 0

    def load(self, orders: list[StoredOrder]) -> None:
        orders.sort(key=lambda order: order.key)
        self.orders = orders
        self.keys = [order.key for order in orders]
        self.by_id = {order.id: order for order in orders}

    def insert(self, order: StoredOrder) -> None:
        key = order.key
        i = bisect.bisect_right(self.keys, key)
        self.keys.insert(i, key)
        self.orders.insert(i, order)
        self.by_id[order.id] = order

    def scan(
        self, ids: frozenset[str] | None, lower: Key | None, after: Key | None
    ) -> Iterator[StoredOrder]:
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
