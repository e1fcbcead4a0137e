"""The webhook receiver in process (Starlette's AppClient) against a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from dispatcher import Order
from dispatcher.handler import HandlerConfigError
from dispatcher.plugins import find_acceptors
from dispatcher.settings import ConfigError, Settings
from dispatcher.store.ledger import Ledger
from dispatcher.web.kombo_delivery import (
    INLINE_ORDER_EVENT,
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    sign,
    verify_signature,
)
from dispatcher.web.webhook import WEBHOOK_PATH, webhook_routes
from support import order_payload, text
from support.webhook import QUEUE, SECRET, AppClient, event_body, make_app, make_ledger, signed

pytestmark = pytest.mark.redis
INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"

# Computed with openssl, independently of the code under test:
#   printf '%s' "$BODY" | openssl dgst -sha256 -hmac kombo-test-secret -binary \
#     | basenc --base64url | tr -d =
VECTOR_BODY = b'{"id":"evt_7","type":"assessment:order-received","data":{}}'
VECTOR_SIGNATURE = "GXt_kZRP-0sZZL52ks1xKZIrzLbNpIGHPqXNGZOBfhI"


# -- signature vectors -------------------------------------------------------------------------


def test_the_signature_is_unpadded_base64url_of_the_hmac_sha256() -> None:
    assert sign(SECRET, VECTOR_BODY) == VECTOR_SIGNATURE
    assert sign(SecretStr(SECRET), VECTOR_BODY) == VECTOR_SIGNATURE
    assert sign(SECRET.encode(), VECTOR_BODY) == VECTOR_SIGNATURE


@pytest.mark.parametrize(
    ("secret", "body", "header", "valid"),
    [
        pytest.param(SECRET, VECTOR_BODY, VECTOR_SIGNATURE, True, id="valid"),
        pytest.param("another-secret", VECTOR_BODY, VECTOR_SIGNATURE, False, id="wrong-secret"),
        pytest.param(
            SECRET, VECTOR_BODY.replace(b"7", b"8"), VECTOR_SIGNATURE, False, id="tampered"
        ),
        pytest.param(SECRET, VECTOR_BODY + b" ", VECTOR_SIGNATURE, False, id="trailing-space"),
        pytest.param(SECRET, VECTOR_BODY, VECTOR_SIGNATURE + "=", False, id="padded-base64"),
        pytest.param(
            SECRET,
            VECTOR_BODY,
            VECTOR_SIGNATURE.replace("_", "/").replace("-", "+"),
            False,
            id="standard-base64",
        ),
        pytest.param(SECRET, VECTOR_BODY, None, False, id="missing-header"),
        pytest.param(SECRET, VECTOR_BODY, "", False, id="empty-header"),
        pytest.param(SECRET, VECTOR_BODY, VECTOR_SIGNATURE[:-1], False, id="truncated"),
        pytest.param(SECRET, VECTOR_BODY, "ü" + VECTOR_SIGNATURE[1:], False, id="non-ascii"),
    ],
)
def test_signature_vectors(secret: str, body: bytes, header: str | None, valid: bool) -> None:
    assert verify_signature(secret, body, header) is valid


# -- the receiver --------------------------------------------------------------------------------


@pytest.fixture
def ledger(redis: Redis) -> Ledger:
    return make_ledger(redis)


@pytest.fixture
def client(ledger: Ledger) -> AppClient:
    return AppClient(make_app(ledger))


def post(client: AppClient, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(
        WEBHOOK_PATH, content=body, headers=signed(body) if headers is None else headers
    )


def nothing_written(redis: Redis) -> bool:
    return Queue(QUEUE, connection=redis).count == 0 and not redis.keys("dispatcher:*")


def test_a_signed_order_is_enqueued_with_the_order_as_kombo_sent_it(
    client: AppClient, ledger: Ledger, redis: Redis
) -> None:
    order = order_payload("ORD1", custom_fields={"source": "LinkedIn"})
    response = post(client, event_body(order, INTEGRATION))
    assert response.status_code == 200
    assert response.json() == {"status": "enqueued", "order_id": "ORD1"}
    [job] = ledger.queue.get_jobs()
    assert job.id == ledger.job_id(INTEGRATION, "ORD1")
    # Same job as the poller's: the order without the webhook's integration_id, unknown
    # fields kept; the integration id beside it.
    assert job.kwargs == {"integration_id": INTEGRATION, "order": order, "namespace": "dispatcher"}
    assert ledger.seen_at(INTEGRATION, "ORD1") is not None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({SIGNATURE_HEADER: sign("wrong-secret", b"x")}, id="wrong"),
    ],
)
def test_a_missing_or_wrong_signature_is_401_and_nothing_is_enqueued(
    client: AppClient, redis: Redis, headers: dict[str, str]
) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION)
    if headers:
        headers = signed(body, "wrong-secret")
    response = post(client, body, headers)
    assert response.status_code == 401
    assert SIGNATURE_HEADER in response.json()["message"]
    assert nothing_written(redis)


def test_a_padded_signature_of_the_right_digest_is_refused(client: AppClient, redis: Redis) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION)
    padded = sign(SECRET, body) + "="
    assert post(client, body, {SIGNATURE_HEADER: padded}).status_code == 401
    assert nothing_written(redis)


def test_a_tampered_body_is_refused(client: AppClient, redis: Redis) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION)
    headers = signed(body)
    assert post(client, body.replace(b"ORD1", b"ORD2"), headers).status_code == 401
    assert nothing_written(redis)


def test_a_replayed_event_is_200_and_enqueues_nothing_more(
    client: AppClient, ledger: Ledger
) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION)
    assert post(client, body).json()["status"] == "enqueued"
    for event_id in ("evt_1", "evt_other"):  # the same event, and a new event for the order
        again = post(client, event_body(order_payload("ORD1"), INTEGRATION, event_id=event_id))
        assert again.status_code == 200
        assert again.json() == {"status": "already_seen", "order_id": "ORD1"}
    assert ledger.queue.count == 1


def test_an_order_the_poller_dispatched_first_is_not_enqueued_again(
    client: AppClient, ledger: Ledger
) -> None:
    ledger.dispatch(INTEGRATION, [Order.model_validate(order_payload("ORD1"))])
    response = post(client, event_body(order_payload("ORD1"), INTEGRATION))
    assert response.json()["status"] == "already_seen"
    assert ledger.queue.count == 1


def test_a_body_over_1_mib_is_413_from_its_content_length(client: AppClient, redis: Redis) -> None:
    body = event_body(order_payload("ORD1", padding="x" * MAX_BODY_BYTES), INTEGRATION)
    response = post(client, body)
    assert response.status_code == 413
    assert "1 MiB" in response.json()["message"]
    assert nothing_written(redis)


def test_a_streamed_body_over_1_mib_is_413_without_reading_it_all(
    client: AppClient, redis: Redis
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length (chunked): the receiver must count as it reads.
        for _ in range(64):
            yield b"x" * 65536

    response = client.post(
        WEBHOOK_PATH, content=chunks(), headers={SIGNATURE_HEADER: sign(SECRET, b"")}
    )
    assert response.status_code == 413
    assert nothing_written(redis)


def test_a_body_of_exactly_1_mib_is_accepted(client: AppClient, ledger: Ledger) -> None:
    body = event_body(order_payload("ORD1", padding=""), INTEGRATION)
    body = body.replace(
        b'"padding": ""', b'"padding": "' + b"x" * (MAX_BODY_BYTES - len(body)) + b'"'
    )
    assert len(body) == MAX_BODY_BYTES
    assert post(client, body).status_code == 200
    assert ledger.queue.count == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"{not json", "body is not valid JSON", id="malformed"),
        pytest.param(b"", "body is not valid JSON", id="empty"),
        pytest.param(b"\xff\xfe", "body is not valid JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "body must be a JSON object", id="array"),
        pytest.param(b'{"type": "x"}', "field id", id="no-event-id"),
    ],
)
def test_malformed_bodies_are_400_with_a_clear_message(
    client: AppClient, redis: Redis, body: bytes, expected: str
) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert expected in response.json()["message"]
    assert nothing_written(redis)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["candidate"].pop("email"),
            "event evt_9: order ORD1: field data.candidate.email: Field required",
            id="no-candidate-email",
        ),
        pytest.param(
            lambda d: d.update(package_id=42),
            "event evt_9: order ORD1: field data.package_id:",
            id="package-id-not-a-string",
        ),
        pytest.param(
            lambda d: d.pop("integration_id"),
            "event evt_9: field data.integration_id: required",
            id="no-integration-id",
        ),
        pytest.param(lambda d: d.clear(), "event evt_9: field data.integration_id", id="empty"),
    ],
)
def test_an_invalid_order_is_400_naming_the_field_and_logged_with_the_event_id(
    client: AppClient,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    mutate: Any,
    expected: str,
) -> None:
    event = json.loads(event_body(order_payload("ORD1"), INTEGRATION, event_id="evt_9"))
    mutate(event["data"])
    body = json.dumps(event).encode()
    with caplog.at_level(logging.WARNING, logger="dispatcher.webhook"):
        response = post(client, body)
    assert response.status_code == 400
    assert response.json()["message"].startswith(expected)
    assert any("evt_9" in record.getMessage() for record in caplog.records)
    assert nothing_written(redis)


def test_data_that_is_not_an_object_is_400(client: AppClient, redis: Redis) -> None:
    body = json.dumps({"id": "evt_3", "type": "assessment:order-received", "data": []}).encode()
    response = post(client, body)
    assert response.status_code == 400
    assert (
        response.json()["message"] == "event evt_3: field data: required, the order (a JSON object)"
    )


def test_other_event_types_are_200_logged_and_ignored(
    client: AppClient, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"id": "evt_5", "type": "integration-created", "data": {"x": 1}}).encode()
    with caplog.at_level(logging.INFO, logger="dispatcher.webhook"):
        response = post(client, body)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert any(
        "evt_5" in r.getMessage() and "integration-created" in r.getMessage()
        for r in caplog.records
    )
    assert nothing_written(redis)


def test_an_order_that_is_no_longer_open_is_ignored(client: AppClient, redis: Redis) -> None:
    body = event_body(order_payload("ORD1", status="CANCELLED"), INTEGRATION)
    response = post(client, body)
    assert response.json() == {"status": "ignored"}
    assert nothing_written(redis)


def test_only_post_is_answered(client: AppClient) -> None:
    assert client.get(WEBHOOK_PATH).status_code == 405


def test_the_secret_never_reaches_the_logs(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION)
    with caplog.at_level(logging.DEBUG):
        post(client, body, signed(body, "wrong-secret"))
        post(client, body)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in logged
    # Nor the signature it expected, which would tell a forger what to send.
    assert sign(SECRET, body) not in logged


def test_the_receiver_refuses_to_start_without_the_secret(ledger: Ledger) -> None:
    settings = Settings(_env_file=None, KOMBO_WEBHOOK_SECRET="")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"^KOMBO_WEBHOOK_SECRET: not set"):
        webhook_routes(settings, ledger, acceptors=())


def test_redis_down_is_503_and_kombo_keeps_the_order(ledger: Ledger) -> None:
    # Nothing listens on port 1; no retries (redis-py's default backoff takes seconds).
    dead = Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    client = AppClient(make_app(make_ledger(dead)))
    response = post(client, event_body(order_payload("ORD1"), INTEGRATION))
    assert response.status_code == 503
    assert "retry later" in response.json()["message"]


# -- inline assessments ----------------------------------------------------------------------------


def test_an_inline_order_is_answered_with_its_assessment_url(ledger: Ledger) -> None:
    app = make_app(
        ledger,
        DISPATCHER_INLINE_ASSESSMENT_URL="https://app.example.com/t/{integration_id}/{order_id}",
    )
    body = event_body(order_payload("ORD/1"), INTEGRATION, event_type=INLINE_ORDER_EVENT)
    client = AppClient(app)
    first, replay = post(client, body), post(client, body)
    url = "https://app.example.com/t/greenhouse%3AHWUTwvyx2wLoSUHphiWVrp28/ORD%2F1"
    assert first.json() == {"status": "enqueued", "order_id": "ORD/1", "assessment_url": url}
    assert replay.json()["assessment_url"] == url  # the same link for a replay
    assert ledger.queue.count == 1


def test_an_inline_order_without_a_url_template_is_enqueued_and_warned_about(
    client: AppClient, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    body = event_body(order_payload("ORD1"), INTEGRATION, event_type=INLINE_ORDER_EVENT)
    with caplog.at_level(logging.WARNING, logger="dispatcher.webhook"):
        response = post(client, body)
    assert response.json() == {"status": "enqueued", "order_id": "ORD1"}
    assert any("DISPATCHER_INLINE_ASSESSMENT_URL" in r.getMessage() for r in caplog.records)


# -- rejecting at the door -----------------------------------------------------------------------


def test_a_package_not_accepted_is_rejected_with_422_and_remembered(
    ledger: Ledger, redis: Redis
) -> None:
    app = make_app(ledger, DISPATCHER_ACCEPTED_PACKAGES="python_senior, typescript_test")
    client = AppClient(app)
    accepted = post(client, event_body(order_payload("OK1"), INTEGRATION))
    body = event_body(order_payload("NO1", package_id="video_interview_en"), INTEGRATION)
    rejected = post(client, body)
    replayed = post(client, body)
    assert accepted.status_code == 200
    assert rejected.status_code == 422
    message = "Package video_interview_en is not offered by this vendor."
    assert rejected.json() == {"message": message}
    assert replayed.status_code == 422  # Kombo may have missed the first answer
    assert replayed.json() == {"message": message}
    assert text(job.meta["order_id"] for job in ledger.queue.get_jobs()) == ["OK1"]
    seen = redis.hget(ledger.keys.seen(INTEGRATION), "NO1")
    assert seen is not None and seen.decode().startswith("rejected:")
    record = json.loads(redis.hget(ledger.keys.rejected(INTEGRATION), "NO1") or b"{}")
    assert record["reason"] == message
    assert redis.hget(ledger.keys.stats, "orders_rejected") == b"1"
    # The poller's path: the same order, seen again, is not dispatched.
    again = ledger.dispatch(INTEGRATION, [Order.model_validate(order_payload("NO1"))])
    assert again.enqueued == []


class Picky:
    """A handler that serves only candidates with an example.com address."""

    name = "picky"

    def handle(self, order: Order, context: Any) -> None:
        return None

    def accepts(self, order: Order) -> str | None:
        if order.candidate.email.endswith("@example.com"):
            return None
        return f"We only test example.com candidates, not {order.candidate.email.split('@')[1]}."


class Broken:
    name = "broken"

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result = result
        self.error = error

    def handle(self, order: Order, context: Any) -> None:
        return None

    def accepts(self, order: Order) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def test_a_handler_accepts_hook_rejects_at_the_door(ledger: Ledger, redis: Redis) -> None:
    app = make_app(ledger, acceptors=find_acceptors([Picky()]))
    gmail = order_payload("NO1")
    gmail["candidate"]["email"] = "someone@gmail.com"
    client = AppClient(app)
    accepted = post(client, event_body(order_payload("OK1"), INTEGRATION, event_id="e1"))
    rejected = post(client, event_body(gmail, INTEGRATION, event_id="e2"))
    assert accepted.status_code == 200
    assert rejected.status_code == 422
    assert rejected.json() == {"message": "We only test example.com candidates, not gmail.com."}
    assert ledger.rejection(INTEGRATION, "NO1") == rejected.json()["message"]
    assert ledger.queue.count == 1


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(Broken(error=RuntimeError("boom")), id="raises"),
        pytest.param(Broken(result=42), id="returns-a-number"),
        pytest.param(Broken(result="   "), id="returns-blank"),
    ],
)
def test_a_broken_accepts_hook_neither_rejects_nor_loses_the_order(
    ledger: Ledger, caplog: pytest.LogCaptureFixture, broken: Broken
) -> None:
    app = make_app(ledger, acceptors=find_acceptors([broken, Picky()]))
    with caplog.at_level(logging.ERROR, logger="dispatcher.webhook"):
        response = post(AppClient(app), event_body(order_payload("OK1"), INTEGRATION))
    assert response.status_code == 200
    assert ledger.queue.count == 1
    assert any("handler broken" in record.getMessage() for record in caplog.records)


def test_an_order_dispatched_before_is_not_rejected_later(ledger: Ledger) -> None:
    # The poller dispatched it; then the package was withdrawn. Too late to reject.
    ledger.dispatch(INTEGRATION, [Order.model_validate(order_payload("ORD1"))])
    app = make_app(ledger, DISPATCHER_ACCEPTED_PACKAGES="something_else")
    response = post(AppClient(app), event_body(order_payload("ORD1"), INTEGRATION))
    assert response.status_code == 200
    assert response.json()["status"] == "already_seen"
    assert ledger.rejection(INTEGRATION, "ORD1") is None


def test_accepts_hooks_are_checked_when_the_receiver_starts() -> None:
    class NotCallable:
        name = "odd"
        accepts = "yes"

    class WrongArity:
        name = "arity"

        def accepts(self, order: Order, extra: int) -> None:
            return None

    assert find_acceptors([Broken()])[0].handler == "broken"
    with pytest.raises(HandlerConfigError, match=r"handler 'odd': `accepts` is not callable"):
        find_acceptors([NotCallable()])  # type: ignore[list-item]
    with pytest.raises(HandlerConfigError, match=r"handler 'arity': `accepts` must take"):
        find_acceptors([WrongArity()])  # type: ignore[list-item]
    assert find_acceptors([]) == []


# -- concurrency in one process --------------------------------------------------------------------


def test_concurrent_deliveries_of_one_order_in_one_batch_enqueue_it_once(
    ledger: Ledger,
) -> None:
    app = make_app(ledger)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            bodies = [
                event_body(order_payload(f"ORD{n % 3}"), INTEGRATION, event_id=f"evt_{n}")
                for n in range(30)
            ]
            return await asyncio.gather(
                *(client.post(WEBHOOK_PATH, content=b, headers=signed(b)) for b in bodies)
            )

    answers = asyncio.run(burst())
    assert {answer.status_code for answer in answers} == {200}
    statuses = [(a.json()["order_id"], a.json()["status"]) for a in answers]
    for order_id in ("ORD0", "ORD1", "ORD2"):
        assert statuses.count((order_id, "enqueued")) == 1
        assert statuses.count((order_id, "already_seen")) == 9
    assert sorted(text(job.meta["order_id"] for job in ledger.queue.get_jobs())) == [
        "ORD0",
        "ORD1",
        "ORD2",
    ]


def test_a_redis_failure_fails_only_the_orders_it_concerns(ledger: Ledger, redis: Redis) -> None:
    # A seen "hash" of the wrong type: every Redis call on it fails for integration B.
    redis.set(ledger.keys.seen("lever:B"), "not a hash")
    app = make_app(ledger)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            bodies = [
                event_body(order_payload(f"ORD{n}"), "lever:A" if n % 2 else "lever:B")
                for n in range(20)
            ]
            return await asyncio.gather(
                *(client.post(WEBHOOK_PATH, content=b, headers=signed(b)) for b in bodies)
            )

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [503, 200] * 10
    assert ledger.queue.count == 10
