"""Issue 12, items 1 and 7: what a hostile or broken Kombo answers must not turn the poller
into a retry storm, a loop without end, a swollen process, or an integration blocked for good.

Each test reproduces the attack against a stub Kombo on a real socket (or, for the streaming
and property tests, httpx's mock transport) with real Redis, and checks what an operator
sees: requests counted at the stub, the report, the sweep record, ``dispatcher status``.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import fakeredis
import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboLimitError, KomboStopped
from dispatcher.kombo.models import id_problem
from dispatcher.kombo.pages import InvalidPageError
from dispatcher.ops.status import take_snapshot
from dispatcher.poller.poller import Poller, SweepPolicy
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from support import dispatcher_env, free_port, order_payload, queued_jobs

API_KEY = "sk_test_hostile_kombo_0001"
QUEUE = "dispatcher-orders"
GOOD = "greenhouse:GOOD:0001"
BAD = "lever:BAD:0002"

# What a stub route answers: (status, headers, body). A body that is an iterator is sent
# chunked, piece by piece.
Answer = tuple[int, dict[str, str], bytes | Iterator[bytes]]


def page(orders: list[dict[str, Any]], next_cursor: str | None = None) -> bytes:
    body = {"status": "success", "data": {"next": next_cursor, "results": orders}}
    return json.dumps(body).encode()


def ok(body: bytes) -> Answer:
    return 200, {"Content-Type": "application/json"}, body


SERVER_ERROR: Answer = (
    500,
    {"Content-Type": "application/json"},
    json.dumps(
        {"status": "error", "error": {"code": "PLATFORM.UNKNOWN_ERROR", "message": "oops"}}
    ).encode(),
)
# A 200 whose page was cut short: malformed JSON, which the client retries.
UNPARSEABLE: Answer = (200, {"Content-Type": "application/json"}, b'{"status": "success", "da')


@dataclass
class StubKombo:
    """Kombo's order listing on a real socket: ``route(integration, cursor)`` answers each
    request; every request is recorded (integration, cursor, monotonic time)."""

    route: Callable[[str, str | None], Answer]
    requests: list[tuple[str, str | None, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: list[KomboClient] = field(default_factory=list)  # closed with the stub

    def __post_init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                integration = self.headers.get("X-Integration-Id", "")
                cursor = parse_qs(urlsplit(self.path).query).get("cursor", [None])[0]
                with stub.lock:
                    stub.requests.append((integration, cursor, time.monotonic()))
                status, headers, body = stub.route(integration, cursor)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                try:
                    if isinstance(body, bytes):
                        if "Content-Length" not in headers:
                            self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in body:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True  # the client hung up: what a cap does

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def count(self, integration: str | None = None, since: float = 0.0) -> int:
        with self.lock:
            return sum(
                1 for i, _, at in self.requests if (integration in (None, i)) and at >= since
            )

    def cursors(self, integration: str) -> list[str | None]:
        with self.lock:
            return [cursor for i, cursor, _ in self.requests if i == integration]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory() -> Iterator[Callable[[Callable[[str, str | None], Answer]], StubKombo]]:
    stubs: list[StubKombo] = []

    def make(route: Callable[[str, str | None], Answer]) -> StubKombo:
        stubs.append(StubKombo(route))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def make_poller(
    stub: StubKombo,
    redis: Redis,
    integrations: list[str],
    *,
    retry_budget: float = 0.0,
    max_response_bytes: int = 32 * 1024 * 1024,
    **policy: Any,
) -> Poller:
    client = KomboClient(
        API_KEY,
        stub.base_url,
        retry_budget=retry_budget,
        sleep=lambda seconds: None,
        max_response_bytes=max_response_bytes,
    )
    stub.clients.append(client)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher")
    return Poller(client, ledger, integrations, policy=SweepPolicy(**policy))


def queued(redis: Redis) -> list[tuple[str, str]]:

    jobs = queued_jobs(redis, QUEUE)
    return [(job.meta["integration_id"], job.meta["order_id"]) for job in jobs if job]


def record(redis: Redis, integration: str) -> dict[str, str]:
    raw = redis.hgetall(f"dispatcher:sweep:{integration}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def status_of(redis: Redis, redis_url: str, integrations: list[str]) -> dict[str, Any]:
    settings_ = Settings(
        REDIS_URL=redis_url,  # type: ignore[call-arg]
        KOMBO_INTEGRATION_IDS=",".join(integrations),
        DISPATCHER_NAMESPACE="dispatcher",
    )
    return take_snapshot(redis, settings_).as_dict()


def orders(prefix: str, count: int) -> list[dict[str, Any]]:
    return [order_payload(f"{prefix}{n:03d}") for n in range(count)]


# -- item 1: a stop request ends retrying -----------------------------------------------------


@pytest.mark.parametrize("failure", [SERVER_ERROR, UNPARSEABLE], ids=["http-500", "unparseable"])
def test_sigterm_while_retrying_sends_no_more_requests_and_prints_the_partial_report(
    redis: Redis, redis_url: str, stub_factory: Any, failure: Answer
) -> None:
    # Given an integration that answers, and one whose every answer is worth a retry
    good_orders = orders("G", 3)

    def route(integration: str, cursor: str | None) -> Answer:
        return ok(page(good_orders)) if integration == GOOD else failure

    stub = stub_factory(route)
    env = dispatcher_env(
        redis_url,
        KOMBO_BASE_URL=stub.base_url,
        KOMBO_API_KEY=API_KEY,
        KOMBO_INTEGRATION_IDS=f"{GOOD},{BAD}",
    )
    poller = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "poll", "--once", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # When SIGTERM comes while the client is retrying the failing integration
        deadline = time.monotonic() + 30
        while (len(queued(redis)) < 3 or stub.count(BAD) < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stub.count(BAD) >= 2, "the poller never retried"
        signalled = time.monotonic()
        poller.send_signal(signal.SIGTERM)
        stdout, stderr = poller.communicate(timeout=30)
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.communicate()
    # Then no more than the request in flight reaches Kombo (it used to be ~1,000 a second,
    # until OverflowError), and the command exits 0 with the report of what it swept.
    assert stub.count(since=signalled) <= 1, stub.count(since=signalled)
    assert poller.returncode == 0, stderr
    assert "Traceback" not in stderr and "OverflowError" not in stderr
    assert "received SIGTERM" in stderr
    assert json.loads(stdout) == {
        "integrations": 2,
        "pages": 1,
        "orders_seen": 3,
        "orders_new": 3,
        "interrupted": 1,
        "invalid_orders": 0,
        "errors": {},
    }
    assert sorted(queued(redis)) == [(GOOD, o["id"]) for o in good_orders]
    assert "last_error" not in record(redis, BAD)  # a stop is not a failure of Kombo's


def test_a_stop_request_ends_the_retries_of_a_request_in_process() -> None:
    requests: list[httpx.Request] = []
    stop = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500, json={"status": "error", "error": {"message": "down"}})

    client = KomboClient(
        API_KEY,
        "https://kombo.test/v1",
        transport=httpx.MockTransport(answer),
        sleep=lambda seconds: stop.set(),  # the stop arrives during the first backoff
        should_stop=stop.is_set,
    )
    with pytest.raises(KomboStopped, match=GOOD):
        client.get_orders(GOOD)
    assert len(requests) == 1


def test_the_backoff_never_overflows_however_many_attempts() -> None:
    # A clock that does not move (as when every sleep returns at once) and an endless
    # budget: the 1,025th attempt used to raise OverflowError computing 2 ** 1024.
    attempts = 0
    delays: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts <= 1_100:
            return httpx.Response(503, json={"status": "error", "error": {"message": "busy"}})
        return httpx.Response(200, content=page([]))

    client = KomboClient(
        API_KEY,
        "https://kombo.test/v1",
        transport=httpx.MockTransport(answer),
        retry_budget=float("inf"),
        sleep=delays.append,
        clock=lambda: 0.0,
    )
    assert client.get_orders(GOOD).next is None
    assert len(delays) == 1_100
    assert max(delays) <= 30.0


# -- item 7: pages that never end ---------------------------------------------------------------


# Requests after which a stub attack gives up (answers a last, empty page).
ATTACK_REQUESTS = 50

LOOPS = {
    # cursor -> (orders of its page, next cursor); None is the first page
    "A->A": {None: ("P", "A"), "A": ("Q", "A")},
    "A->B->A": {None: ("P", "A"), "A": ("Q", "B"), "B": ("R", "A")},
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_cursor_loop_is_its_integrations_error_and_no_page_is_fetched_twice(
    redis: Redis, redis_url: str, stub_factory: Any, loop: str
) -> None:
    pages = LOOPS[loop]
    stub: StubKombo

    def route(integration: str, cursor: str | None) -> Answer:
        if integration == GOOD:
            return ok(page(orders("G", 2)))
        if stub.count(BAD) > ATTACK_REQUESTS:
            return ok(page([]))  # the attack ends: a client that falls for it fails, not hangs
        prefix, next_cursor = pages[cursor]
        return ok(page(orders(prefix, 2), next_cursor))

    stub = stub_factory(route)
    report = make_poller(stub, redis, [BAD, GOOD]).sweep()

    assert stub.cursors(BAD) == list(pages)  # each page once, the looping cursor never again
    error = report.errors[BAD]
    assert error.startswith(f"integration {BAD}: CURSOR_LOOP: GET /assessment/orders: page ")
    assert "cursor loop" in error
    assert sorted(queued(redis)) == sorted(
        [(BAD, f"{prefix}{n:03d}") for prefix, _ in pages.values() for n in range(2)]
        + [(GOOD, "G000"), (GOOD, "G001")]
    )
    assert record(redis, BAD)["last_error_code"] == "CURSOR_LOOP"
    assert GOOD not in report.errors  # the rest goes on
    shown = status_of(redis, redis_url, [BAD, GOOD])
    assert shown["integrations"][BAD]["state"] == "failing"
    assert shown["integrations"][BAD]["last_error"]["code"] == "CURSOR_LOOP"
    assert any(
        p.startswith(f"integration {BAD}: sweep failing: CURSOR_LOOP") for p in shown["problems"]
    )


def test_cursors_that_never_end_stop_at_the_page_cap(redis: Redis, stub_factory: Any) -> None:
    stub: StubKombo

    def route(integration: str, cursor: str | None) -> Answer:
        if stub.count(BAD) > ATTACK_REQUESTS:
            return ok(page([]))  # the attack ends: a client that falls for it fails, not hangs
        n = int(cursor or 0)
        return ok(page(orders(f"N{n}-", 1), str(n + 1)))  # a new cursor, forever

    stub = stub_factory(route)
    report = make_poller(stub, redis, [BAD], max_pages=5).sweep()

    assert stub.count(BAD) == 5
    assert report.errors[BAD] == (
        f"integration {BAD}: TOO_MANY_PAGES: GET /assessment/orders: still more pages after "
        "5 (DISPATCHER_MAX_PAGES_PER_SWEEP)"
    )
    assert len(queued(redis)) == 5
    assert record(redis, BAD)["last_error_code"] == "TOO_MANY_PAGES"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_answer_over_the_size_cap_is_refused_unread_and_not_retried(
    redis: Redis, stub_factory: Any, framing: str
) -> None:
    # A page of 40 orders with 64 KiB descriptions (2.5 MiB) against a cap of 256 KiB.
    big = [order_payload(f"B{n:03d}") for n in range(40)]
    for order in big:
        order["job"]["description"] = "x" * 65_536
    body = page(big)

    def route(integration: str, cursor: str | None) -> Answer:
        if framing == "chunked":
            return 200, {}, iter([body[i : i + 16_384] for i in range(0, len(body), 16_384)])
        return ok(body)

    stub = stub_factory(route)
    report = make_poller(stub, redis, [BAD], retry_budget=60, max_response_bytes=262_144).sweep()

    size = f"{len(body)} bytes" if framing == "content-length" else "more than 262144 bytes"
    assert report.errors[BAD] == (
        f"integration {BAD}: RESPONSE_TOO_LARGE: GET /assessment/orders: answer of {size} is "
        "over the limit (DISPATCHER_MAX_RESPONSE_BYTES)"
    )
    assert stub.count(BAD) == 1  # not retried within the sweep
    assert queued(redis) == []


def test_the_size_cap_stops_reading_an_endless_body() -> None:
    chunk = b"x" * 65_536
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while sent < 4096:  # 256 MiB, were it all read
            sent += 1
            yield chunk

    client = KomboClient(
        API_KEY,
        "https://kombo.test/v1",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=endless())),
        max_response_bytes=1_048_576,
    )
    with pytest.raises(KomboLimitError, match="RESPONSE_TOO_LARGE") as info:
        client.get_orders(GOOD)
    assert not info.value.retryable
    assert sent <= 17  # 1 MiB and one chunk more, not 256 MiB


def test_a_body_its_content_encoding_cannot_undo_is_retried_not_a_crash(
    redis: Redis, stub_factory: Any
) -> None:
    # httpx raises DecodingError for a garbled gzip body: it used to escape the sweep (and
    # crash `poll --once` with a traceback).
    stub = stub_factory(lambda integration, cursor: (200, {"Content-Encoding": "gzip"}, b"junk"))
    report = make_poller(stub, redis, [BAD], retry_budget=0).sweep()
    assert (
        report.errors[BAD] == f"integration {BAD}: network: DecodingError on GET /assessment/orders"
    )
    assert stub.count(BAD) == 1


# -- item 7: orders that never parse ------------------------------------------------------------


def test_a_5000_digit_number_spoils_its_order_only_and_is_reported(
    redis: Redis, redis_url: str, stub_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Python reads at most 4,300 digits: the whole page used to be "malformed JSON", retried
    # for the whole budget on every sweep, and the integration never got past it.
    fixed = threading.Event()
    first = orders("H", 3)
    second = orders("J", 2)

    def route(integration: str, cursor: str | None) -> Answer:
        if cursor == "2":
            return ok(page(second))
        body = page(first, "2")
        if not fixed.is_set():
            body = body.replace(b'"id": "H001",', b'"id": "H001", "score": ' + b"9" * 5000 + b",")
        return ok(body)

    stub = stub_factory(route)
    poller = make_poller(stub, redis, [BAD], retry_budget=60)
    caplog.set_level(logging.ERROR, logger="dispatcher.poller")

    report = poller.sweep()

    assert report.errors == {}
    assert stub.count(BAD) == 2  # each page once: nothing retried
    assert sorted(o for _, o in queued(redis)) == ["H000", "H002", "J000", "J001"]
    problem = "order H001: field score: a number of 5000 digits, too large to read"
    assert report.results[0].invalid_orders == [problem]
    assert report.invalid_orders == 1
    assert [r.getMessage() for r in caplog.records] == [f"order not dispatched: {problem}"]
    assert not redis.hexists("dispatcher:seen:" + BAD, "H001")
    swept = record(redis, BAD)
    assert (swept["invalid_orders"], swept["last_invalid_order"]) == ("1", problem)
    shown = status_of(redis, redis_url, [BAD])
    assert shown["integrations"][BAD]["state"] == "ok"
    assert shown["integrations"][BAD]["invalid_orders"] == 1
    assert f"integration {BAD}: 1 invalid order not dispatched: {problem}" in " ".join(
        shown["problems"]
    )

    # Once its ATS corrects it, the next full sweep dispatches it and clears the report.
    fixed.set()
    assert poller.sweep().orders_new == 1
    assert "invalid_orders" not in record(redis, BAD)
    assert "H001" in {o for _, o in queued(redis)}


@pytest.mark.parametrize(
    ("spoil", "reported"),
    [
        (lambda o: o.pop("id"), "order #1: field id: Field required"),
        (lambda o: o.update(id=["x"]), "order #1: field id: Input should be a valid string"),
        (
            lambda o: o["candidate"].update(email=42),
            "order K001: field candidate.email: Input should be a valid string",
        ),
        (
            lambda o: o["job"]["hiring_team"][0].update(first_name="Ja\ud800ne"),
            "order K001: field job.hiring_team.0.first_name: text that is not valid Unicode",
        ),
        (lambda o: o.update(id="K\udc00"), "order #1: field id: text that is not valid Unicode"),
    ],
    ids=["no-id", "id-not-text", "wrong-type", "lone-surrogate", "lone-surrogate-id"],
)
def test_an_order_that_can_never_validate_is_reported_and_its_page_dispatched(
    redis: Redis, stub_factory: Any, spoil: Callable[[dict[str, Any]], Any], reported: str
) -> None:
    listing = orders("K", 3)
    spoil(listing[1])

    stub = stub_factory(lambda integration, cursor: ok(page(listing)))
    report = make_poller(stub, redis, [BAD], retry_budget=60).sweep()

    assert report.errors == {}
    assert stub.count(BAD) == 1
    assert sorted(o for _, o in queued(redis)) == ["K000", "K002"]
    assert report.results[0].invalid_orders == [reported]
    assert record(redis, BAD)["last_invalid_order"] == reported


def test_poll_once_reports_an_invalid_order_and_exits_0(
    redis: Redis, redis_url: str, stub_factory: Any
) -> None:
    listing = orders("L", 2)
    listing[0]["candidate"]["email"] = None
    stub = stub_factory(lambda integration, cursor: ok(page(listing)))
    env = dispatcher_env(
        redis_url, KOMBO_BASE_URL=stub.base_url, KOMBO_API_KEY=API_KEY, KOMBO_INTEGRATION_IDS=BAD
    )
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "poll", "--once"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 integration, 1 page, 2 OPEN orders seen, 1 new, 1 invalid"
    assert "order not dispatched: order L000: field candidate.email: " in result.stderr
    status = subprocess.run(
        [sys.executable, "-m", "dispatcher", "status"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        f"integration {BAD}: 1 invalid order not dispatched: order L000: field candidate.email"
        in (status.stdout)
    )


# -- properties: hostile ids, names and cursors --------------------------------------------------

# Ids and names as an ATS may spell them: separators, control characters, any Unicode
# (lone surrogates included: JSON escapes can carry them).
hostile_text = st.text(
    alphabet=st.sampled_from(":/\\%\r\n\t\x00\x1b\u2028\u202e é漢🙂") | st.characters(),
    max_size=24,
)


def _client_for(answer: Callable[[httpx.Request], httpx.Response]) -> KomboClient:
    return KomboClient(
        API_KEY, "https://kombo.test/v1", transport=httpx.MockTransport(answer), retry_budget=0
    )


def _surrogate_free(value: str) -> bool:
    return not any("\ud800" <= char <= "\udfff" for char in value)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order_id=hostile_text, name=hostile_text, huge=st.booleans())
def test_a_hostile_order_never_spoils_its_neighbours(order_id: str, name: str, huge: bool) -> None:
    assume(order_id not in {"A", "B"})
    hostile = order_payload("X")
    hostile["id"] = order_id
    hostile["candidate"]["first_name"] = name
    body = page([order_payload("A"), hostile, order_payload("B")])  # \uXXXX for surrogates
    if huge:  # a number Python cannot read, in A and in the hostile order
        body = body.replace(b'"package_id"', b'"n": ' + b"7" * 4400 + b', "package_id"', 2)
    redis = fakeredis.FakeRedis()
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), "dispatcher")
    with _client_for(lambda request: httpx.Response(200, content=body)) as client:
        report = Poller(client, ledger, [GOOD]).sweep()
    assert report.errors == {}
    dispatched = {job.meta["order_id"] for job in ledger.queue.get_jobs()}
    invalid = report.results[0].invalid_orders
    valid = id_problem(order_id) is None and _surrogate_free(name)
    if huge:
        assert (dispatched, len(invalid)) == ({"B"}, 2)
    elif valid:
        assert (dispatched, invalid) == ({"A", order_id, "B"}, [])
    else:
        assert (dispatched, len(invalid)) == ({"A", "B"}, 1)
    for problem in invalid:
        problem.encode()  # storable and printable: no lone surrogate in a report


@settings(max_examples=150, deadline=None)
@given(st.lists(hostile_text.filter(bool), min_size=1, max_size=8))
def test_the_client_never_fetches_a_cursor_twice(cursors: list[str]) -> None:
    # Page k's next cursor is cursors[k]; a cursor met again leads where it led the first
    # time, so a repeated cursor closes a loop (A -> B -> A).
    leads_to: dict[str | None, str | None] = {None: cursors[0]}
    for index, cursor in enumerate(cursors):
        leads_to.setdefault(cursor, cursors[index + 1] if index + 1 < len(cursors) else None)
    fetched: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        fetched.append(cursor)
        content = json.dumps(
            {"status": "success", "data": {"next": leads_to[cursor], "results": []}}
        )
        return httpx.Response(200, content=content.encode())

    # What a careful client fetches: each cursor until one repeats or is not text.
    expected: list[str | None] = [None]
    outcome = "end"
    for cursor in cursors:
        if not _surrogate_free(cursor):
            outcome = "invalid"
            break
        if cursor in expected:
            outcome = "loop"
            break
        expected.append(cursor)
    with _client_for(answer) as client:
        pages = client.iter_order_pages(GOOD, max_pages=100)
        if outcome == "end":
            assert len(list(pages)) == len(cursors) + 1
        elif outcome == "loop":
            with pytest.raises(KomboLimitError, match="CURSOR_LOOP"):
                list(pages)
        else:
            with pytest.raises(InvalidPageError, match=r"data\.next"):
                list(pages)
    assert fetched == expected
