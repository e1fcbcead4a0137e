"""The results API of `dispatcher web` over a real socket, and results written end to end by
real results workers (subprocesses) against the simulator over HTTP, with faults."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from dispatcher.kombo.client import KomboClient
from dispatcher.settings import load_settings
from dispatcher.store.keys import Keys
from dispatcher.store.leases import WriteLeases
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator, SimulatorServer
from dispatcher.web.app import create_app
from dispatcher.web.results_api import TokenGuard, client_key
from dispatcher.worker.results import ResultWriter
from support import dispatcher_env, free_port, wait_until
from support.results import TOKEN, Fleet, auth
from support.webhook import ReceiverServer

OLD_TOKEN = "previous-token-9876543210"
URL = "https://vendor.example/r/1"
INTEGRATION = "greenhouse:AAAA"


def dispatched(redis: Redis, namespace: str, *orders: str, integration: str = INTEGRATION) -> None:
    """Mark orders dispatched, as the ledger does (the results API takes results for those)."""
    seen = Keys(namespace).seen(integration)
    redis.hset(seen, mapping={order: str(int(time.time())) for order in orders})


@pytest.fixture
def api(redis_url: str, namespace: str) -> Iterator[str]:
    settings = load_settings(
        REDIS_URL=redis_url,
        DISPATCHER_NAMESPACE=namespace,
        DISPATCHER_API_TOKEN=f"{TOKEN},{OLD_TOKEN}",
        DISPATCHER_RESULT_MAX_BYTES=4096,
    )
    redis = Redis.from_url(redis_url)
    with ReceiverServer(create_app(settings, redis)) as server:
        yield server.url
    redis.close()


def put(api: str, order: str, payload: Any, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", auth())
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.put(
        f"{api}/orders/{INTEGRATION}/{order}/result", content=content, headers=headers, **kw
    )


def test_a_result_put_is_accepted_with_its_receipt_and_readable(
    api: str, redis: Redis, namespace: str
) -> None:
    dispatched(redis, namespace, "o1")
    answer = put(api, "o1", {"status": "COMPLETED", "result_url": URL})
    assert answer.status_code == 202
    receipt = answer.json()
    assert receipt["state"] == "pending" and receipt["outcome"] == "queued"
    again = put(api, "o1", {"status": "COMPLETED", "result_url": URL}, headers=auth(OLD_TOKEN))
    assert again.status_code == 202 and again.json()["outcome"] == "duplicate"
    assert again.json()["submission_id"] == receipt["submission_id"]
    state = httpx.get(f"{api}/orders/{INTEGRATION}/o1/result", headers=auth())
    assert state.status_code == 200 and state.json()["state"] == "pending"
    timeline = httpx.get(f"{api}/orders/{INTEGRATION}/o1", headers=auth()).json()["timeline"]
    assert [event["event"] for event in timeline] == ["first_seen", "result_submitted"]


@pytest.mark.parametrize(
    ("payload", "headers", "status", "message"),
    [
        (b"{not json", None, 400, "not valid JSON"),
        ({"status": "COMPLETED", "result_url": URL}, {}, 401, "bearer token"),
        ({"status": "COMPLETED", "result_url": URL}, {"Authorization": "Bearer nope"}, 401, ""),
        ({"status": "COMPLETED", "result_url": "x" * 5000}, None, 413, "DISPATCHER_RESULT_MAX"),
        ({"status": "COMPLETED", "result_url": "ftp://x"}, None, 422, "result_url:"),
        ({"status": "COMPLETED"}, None, 422, "result_url:"),
        ({"status": "COMPLETED", "result_url": URL, "scroe": 1}, None, 422, "scroe:"),
        ([1, 2], None, 422, "must be a JSON object"),
    ],
)
def test_each_bad_input_has_its_status_and_one_clear_message(
    api: str,
    redis: Redis,
    payload: Any,
    headers: dict[str, str] | None,
    status: int,
    message: str,
) -> None:
    answer = put(api, "o1", payload, headers=auth() if headers is None else headers)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert redis.keys("*") == []  # nothing stored


def test_a_result_after_a_final_one_was_written_is_409(
    api: str, redis: Redis, namespace: str
) -> None:
    dispatched(redis, namespace, "o1")
    redis.hset(Keys(namespace).results(INTEGRATION), "o1", json.dumps({"status": "CANCELLED"}))
    answer = put(api, "o1", {"status": "COMPLETED", "result_url": URL})
    assert answer.status_code == 409
    assert "final result (CANCELLED) was already written" in answer.json()["error"]


def test_redis_unreachable_is_503_and_nothing_stored(namespace: str) -> None:
    port = free_port()
    settings = load_settings(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DISPATCHER_NAMESPACE=namespace,
        DISPATCHER_API_TOKEN=TOKEN,
    )
    redis = Redis.from_url(settings.redis_url.get_secret_value(), socket_connect_timeout=0.5)
    with ReceiverServer(create_app(settings, redis)) as server:
        answer = put(server.url, "o1", {"status": "COMPLETED", "result_url": URL})
    assert answer.status_code == 503 and "nothing stored" in answer.json()["error"]


def test_without_a_token_the_routes_are_not_mounted_and_one_warning_says_so(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(REDIS_URL=redis_url)
    with caplog.at_level(logging.WARNING, logger="dispatcher.web"):
        app = create_app(settings, Redis.from_url(redis_url))
    assert [r.getMessage() for r in caplog.records if "DISPATCHER_API_TOKEN" in r.getMessage()]
    with ReceiverServer(app) as server:
        answer = put(server.url, "o1", {"status": "COMPLETED", "result_url": URL})
    assert answer.status_code == 404


# -- end to end: HTTP in, results workers, simulator over HTTP ----------------------------------


def run_chaos(
    redis_url: str,
    namespace: str,
    *,
    results: int,
    clients: int,
    integrations: int,
    worker_processes: int,
    timeout: float,
    cap: int = 10,
) -> None:
    ids = [f"greenhouse:I{n:03d}" for n in range(integrations)]
    per = -(-results // integrations)
    sim = Simulator(
        ids,
        orders=per,
        closed=0,
        faults=Faults(
            rate_limit=0.10, server_error=0.05, drop_answer=0.05, retry_after=0.2, latency=0.02
        ),
    )
    sim.write_concurrency_limit = 30
    orders = [(i, str(o["id"])) for i in ids for o in sim.orders(i, "OPEN")][:results]
    marks = Redis.from_url(redis_url)
    for integration, order in orders:
        dispatched(marks, namespace, order, integration=integration)
    marks.close()
    env = dispatcher_env(
        redis_url,
        DISPATCHER_NAMESPACE=namespace,
        KOMBO_API_KEY=DEFAULT_API_KEY,
        DISPATCHER_KOMBO_WRITE_CONCURRENCY=str(cap),
        DISPATCHER_LOG_LEVEL="WARNING",
        DISPATCHER_API_TOKEN=TOKEN,
    )
    settings = load_settings(
        REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace, DISPATCHER_API_TOKEN=TOKEN
    )
    redis = Redis.from_url(redis_url)
    fleet = Fleet(env)
    with SimulatorServer(sim, "127.0.0.1", 0) as kombo:
        env["KOMBO_BASE_URL"] = kombo.url
        fleet.start(worker_processes)
        try:
            with ReceiverServer(create_app(settings, redis)) as web:
                errors: list[str] = []

                def client(mine: list[tuple[str, str]]) -> None:
                    with httpx.Client(base_url=web.url, headers=auth(), timeout=30) as http:
                        for integration, order in mine:
                            payload = {"status": "COMPLETED", "result_url": URL, "score": 1,
                                       "max_score": 2}  # fmt: skip
                            answer = http.put(f"/orders/{integration}/{order}/result", json=payload)
                            if answer.status_code != 202:
                                errors.append(f"{order}: {answer.status_code} {answer.text}")

                threads = [
                    threading.Thread(target=client, args=(orders[n::clients],))
                    for n in range(clients)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert errors == []
            outbox = Outbox.from_settings(redis, settings)
            wait_until(
                lambda: outbox.counts()["pending"] == 0, timeout, "every result to be written"
            )
        finally:
            fleet.stop()
    counts = outbox.counts()
    failed = outbox.in_state("failed")
    assert [f.reason for f in failed] == []
    assert counts == {"pending": 0, "written": len(orders), "failed": 0}
    assert all(sim.applied_writes[key] == 1 for key in orders), "a write applied twice or never"
    assert sum(sim.applied_writes.values()) == len(orders)
    assert max(sim.max_writes_in_flight.values()) <= cap
    assert any(r.lost_answer for r in outbox.in_state("written", limit=10_000))
    redis.close()


@pytest.mark.slow
def test_results_put_by_concurrent_clients_are_each_written_once(
    redis_url: str, namespace: str
) -> None:
    run_chaos(
        redis_url,
        namespace,
        results=80,
        clients=8,
        integrations=2,
        worker_processes=4,
        timeout=90,
        cap=2,  # below the workers: the cap, not the worker count, bounds what is in flight
    )


@pytest.mark.slow
# Its own budget is 300 s (run_chaos): pytest-timeout's 120 s default cut it short on a
# loaded machine.
@pytest.mark.timeout(600)
def test_500_results_by_20_clients_across_20_integrations_are_each_written_once(
    redis_url: str, namespace: str
) -> None:
    run_chaos(
        redis_url,
        namespace,
        results=500,
        clients=20,
        integrations=20,
        worker_processes=int(os.environ.get("RESULTS_TEST_WORKERS", "6")),
        timeout=300,
    )


# -- issue 22, item 4: the results API's trust boundary ---------------------------------------


def test_a_short_api_token_is_refused_at_start_with_one_line(redis_url: str) -> None:
    weak = "s3cret-but-short-012"  # 20 characters
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "web", "--port", str(free_port())],
        env=dispatcher_env(redis_url, DISPATCHER_API_TOKEN=f"{TOKEN},{weak}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "dispatcher: error: DISPATCHER_API_TOKEN: token 2 is 20 characters long, at least 24 "
        "required (it guards the results API)"
    ]
    assert weak not in done.stdout + done.stderr


def test_wrong_tokens_are_logged_without_the_token_and_limited_per_client(
    api: str, redis: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    dispatched(redis, namespace, "o1")
    guess = "guess-0123456789-guess-0123456789"
    with caplog.at_level(logging.WARNING, logger="dispatcher.web.results"):
        codes = [
            httpx.get(f"{api}/orders/{INTEGRATION}/o1/result", headers=auth(guess)).status_code
            for _ in range(12)
        ]
        # Limited: even the right token waits now (the budget is spent before any compare).
        limited = httpx.get(f"{api}/orders/{INTEGRATION}/o1/result", headers=auth())
        # Another client (another loopback address) is not.
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            fine = put_with(other, api, "o1", {"status": "COMPLETED", "result_url": URL})
    assert codes == [401] * 10 + [429] * 2
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "try again in" in limited.json()["error"]
    assert fine.status_code == 202
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatcher.web.results"]
    assert len(lines) == 1, lines  # rate-limited: one line a minute per client
    assert "wrong bearer token from 127.0.0.1" in lines[0]
    assert guess not in caplog.text and TOKEN not in caplog.text


def put_with(http: httpx.Client, api: str, order: str, payload: Any) -> httpx.Response:
    return http.put(f"{api}/orders/{INTEGRATION}/{order}/result", json=payload, headers=auth())


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_an_ipv6_client_is_limited_per_64(host: str, key: str) -> None:
    assert client_key(host) == key


def test_the_budget_refills_and_clients_are_bounded() -> None:
    now = [0.0]
    guard = TokenGuard(burst=2, per_minute=6, max_clients=2, clock=lambda: now[0])
    guard.failed("a", "wrong")
    guard.failed("a", "wrong")
    assert guard.retry_after("a") == pytest.approx(10.0)
    now[0] += 10
    assert guard.retry_after("a") is None
    for client in ("b", "c", "d"):
        guard.failed(client, "wrong")
    assert len(guard._clients) == 2


@pytest.mark.parametrize("integration", [INTEGRATION, "lever:NEVER"])
def test_a_result_for_an_order_never_dispatched_is_404_and_stores_nothing(
    api: str, redis: Redis, namespace: str, integration: str
) -> None:
    dispatched(redis, namespace, "o1")  # another order of a known integration
    before = sorted(redis.keys("*"))
    answer = httpx.put(
        f"{api}/orders/{integration}/o2/result",
        json={"status": "COMPLETED", "result_url": URL, "attachments": [
            {"name": "big.pdf", "content_type": "application/pdf", "data": "QUJD" * 500}]},
        headers=auth(),
    )  # fmt: skip
    assert answer.status_code == 404
    assert "never dispatched" in answer.json()["error"]
    assert sorted(redis.keys("*")) == before


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ('"remote_fields": {"x": ' + '{"a": ' * 300 + "1" + "}" * 300 + "}",
         "remote_fields.x.a.a…", "nested deeper than 32 levels"),
        ('"remote_fields": {"x": ' + _nested(1500) + "}", "result", "nested too deeply"),
        ('"remote_fields": {"x": "\\ud800"}', "remote_fields.x", "lone surrogate (U+D800)"),
        ('"remote_fields": {"\\udc00": 1}', 'remote_fields."\\udc00"', "lone surrogate"),
        ('"attributes": [{"type": "TEXT", "label": "a\\ud83d", "value": "v"}]',
         "attributes[0].label", "lone surrogate (U+D83D)"),
        ('"score": "87", "max_score": 100', "score", "valid number"),
        ('"score": true, "max_score": 100', "score", "valid number"),
        ('"score": 3, "max_score": false', "max_score", "valid number"),
        ('"completed_at": 0', "completed_at", "ISO 8601"),
    ],
)  # fmt: skip
def test_a_body_kombo_would_refuse_or_that_cannot_be_sent_is_422_naming_the_field(
    api: str, redis: Redis, raw: str, field: str, message: str
) -> None:
    body = f'{{"status": "COMPLETED", "result_url": "{URL}", {raw}}}'.encode()
    answer = put(api, "o1", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == field and error["error"].startswith(f"{field}: ")
    assert message in error["error"] and "\n" not in error["error"]
    assert redis.keys("*") == []


@pytest.mark.parametrize(
    "url",
    [f"{URL}\r\nX-Injected: 1", f"{URL}\n", "https://user:pw@vendor.example/r/1",
     "https://vendor.example/r 1"],
)  # fmt: skip
def test_cr_lf_or_user_info_in_result_url_is_422(api: str, redis: Redis, url: str) -> None:
    answer = put(api, "o1", {"status": "COMPLETED", "result_url": url})
    assert answer.status_code == 422 and answer.json()["field"] == "result_url", answer.text
    assert "pw" not in answer.text.replace("password", "")
    assert redis.keys("*") == []


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/orders/greenhouse:%C3%A9t%C3%A9/o1/result", 422, "integration_id"),
        ("/orders/greenhouse:AAAA/o%FF1/result", 400, "order_id"),
        ("/orders/greenhouse:AAAA/o%ED%A0%801/result", 400, "order_id"),
        ("/orders/greenhouse:%FF/o1/result", 400, "integration_id"),
    ],
)
def test_path_ids_are_never_replaced_or_sent_as_bad_headers(
    api: str, redis: Redis, namespace: str, path: str, status: int, field: str
) -> None:
    # Dispatched under the name U+FFFD would give it: the old decoding would have taken it.
    dispatched(redis, namespace, "o\ufffd1")
    dispatched(redis, namespace, "o1", integration="greenhouse:\ufffd")
    dispatched(redis, namespace, "o1", integration="greenhouse:\u00e9t\u00e9")
    before = sorted(redis.keys("*"))
    for method in ("PUT", "GET"):
        answer = httpx.request(
            method,
            api + path,
            json={"status": "COMPLETED", "result_url": URL},
            headers=auth(),
        )
        assert answer.status_code == status, answer.text
        assert answer.json()["field"] == field and "\ufffd" not in answer.text
    assert sorted(redis.keys("*")) == before


def test_the_written_body_again_is_200_with_its_receipt_and_another_409(
    api: str, redis: Redis, namespace: str
) -> None:
    sim = Simulator([INTEGRATION], orders=2, closed=0)
    order = str(sim.orders(INTEGRATION, "OPEN")[0]["id"])
    dispatched(redis, namespace, order)
    payload = {"status": "COMPLETED", "result_url": URL, "score": 3, "max_score": 5}
    first = put(api, order, payload)
    assert first.status_code == 202
    outbox = Outbox(redis, namespace, f"{namespace}-results")
    client = KomboClient(DEFAULT_API_KEY, sim.base_url, transport=sim.transport(), retry_budget=0)
    writer = ResultWriter(outbox, WriteLeases(redis, outbox.keys, 5), client)
    record = outbox.get(INTEGRATION, order)
    assert record is not None and writer.run(INTEGRATION, order, record.job_id) == "written"
    again = put(api, order, payload)
    assert again.status_code == 200
    assert again.json()["submission_id"] == first.json()["submission_id"]
    assert again.json()["state"] == "written"
    other = put(api, order, {**payload, "score": 4})
    assert other.status_code == 409 and "already written" in other.json()["error"]
    shown = httpx.get(f"{api}/orders/{INTEGRATION}/{order}/result", headers=auth()).json()
    assert shown["result_url"] == URL and shown["attempts"] == 1
    assert sim.applied_writes[(INTEGRATION, order)] == 1


def test_the_timeline_route_decodes_its_ids_strictly_too(
    api: str, redis: Redis, namespace: str
) -> None:
    dispatched(redis, namespace, "o\ufffd1")
    answer = httpx.get(f"{api}/orders/{INTEGRATION}/o%FF1", headers=auth())
    assert answer.status_code == 400 and answer.json()["field"] == "order_id", answer.text
    named = httpx.get(f"{api}/orders/{INTEGRATION}/o%EF%BF%BD1", headers=auth())
    assert named.status_code == 200  # a real U+FFFD, sent as such, is that order
