"""Hostile ids and hostile keys (issue 12, items 3 and 4).

Item 3: ids from Kombo are attacker-controlled. Every Redis key built from an (integration,
order) pair must name one order only, whatever the ids hold (``:``, ``%``, control characters,
unicode), while the keys of real Kombo ids stay what deployed versions wrote. Ids themselves
are bounded and free of control characters, so that NUL-joined hashes stay unambiguous.

Item 4: Redis does not roll back a Lua script that fails part-way. A key of the wrong type
where a script writes must make it write nothing (and say which key), never leave an order
seen but not enqueued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis
from redis.exceptions import ResponseError
from rq import Queue
from rq.job import Job

from dispatcher.handler import HandlerConfigError
from dispatcher.kombo.models import (
    MAX_ID_LENGTH,
    Order,
    OrderValidationError,
    id_problem,
    parse_order,
)
from dispatcher.ops.forget import forget_order
from dispatcher.plugins import check_handler
from dispatcher.poller.integrations import check_integration_id
from dispatcher.store.keys import Keys, job_id_for, order_ref
from dispatcher.store.ledger import Ledger
from dispatcher.store.result_record import record_result
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.store.wrongtype import WrongKeyTypeError
from dispatcher.testing.sim import Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.web.webhook import WEBHOOK_PATH
from dispatcher.worker.classes import DispatcherSimpleWorker
from dispatcher.worker.steps import StepStore, step_key
from dispatcher_handlers.provision_http import ProvisionHttpHandler, ProvisionSettings
from support.ops import settings_for, sweep, work
from support.webhook import AppClient, event_body, make_app, make_ledger, signed

NS = "dispatcher"
QUEUE = "dispatcher-orders"

# Ids as an attacker would choose them: separators, escapes, controls, any unicode.
hostile_ids = st.lists(
    st.one_of(
        st.sampled_from(
            [":", "%", "%3A", "%25", "\x00", "\n", "\r", "\x1b", "\x85", "\u2028", "\ud800"]
        ),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
).map("".join)
# Handler names: never ':' (plugins.check_handler refuses them).
handler_names = st.text(st.characters(codec="utf-8", exclude_characters=":"), max_size=8)


def order_data(order_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": order_id,
        "package_id": "pkg_1",
        "status": "OPEN",
        "candidate": {"email": "cand@example.com", "first_name": "C", "last_name": "D"},
        "application": {"remote_id": "app"},
        "job": {"remote_id": "job", "name": "Engineer", "hiring_team": []},
        **extra,
    }


def an_order(order_id: str = "O1") -> Order:
    return Order.model_validate(order_data(order_id))


def everything(redis: Redis) -> dict[bytes, Any]:
    """Every key with its type and value: to compare Redis before and after."""
    state: dict[bytes, Any] = {}
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key)
        if kind == b"string":
            value: Any = redis.get(key)
        elif kind == b"hash":
            value = redis.hgetall(key)
        elif kind == b"list":
            value = redis.lrange(key, 0, -1)
        elif kind == b"set":
            value = redis.smembers(key)
        elif kind == b"zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        state[key] = (kind, value)
    return state


# -- item 3: one key per order -----------------------------------------------------------------


@pytest.fixture
def provisioner(vendor: VendorAPI) -> Iterator[ProvisionHttpHandler]:
    handler = ProvisionHttpHandler(
        ProvisionSettings(PROVISION_URL=vendor.url, PROVISION_TIMEOUT=2)  # type: ignore[call-arg]
    )
    yield handler
    handler.close()


@pytest.mark.redis
def test_colliding_integration_and_order_ids_each_get_their_own_provisioning(
    redis: Redis, redis_url: str, vendor: VendorAPI, provisioner: ProvisionHttpHandler
) -> None:
    # Given two customers' ATSs whose ids concatenate alike: "acme:AAA" + "B:C" and
    # "acme:AAA:B" + "C" (both spell acme:AAA:B:C).
    sim = Simulator(["acme:AAA", "acme:AAA:B"], 0, closed=0, seed=12)
    sim.add_order("acme:AAA", id="B:C")
    sim.add_order("acme:AAA:B", id="C")
    settings = settings_for(redis_url, sim, NS)
    # When both are polled and their jobs run through the real chain
    report = sweep(redis, settings, sim)
    assert report.errors == {}
    assert report.orders_new == 2
    work(redis, settings, [provisioner])
    # Then each order was provisioned, once, and got its own test link.
    provisioned = sorted((call.body["integration_id"], call.body["id"]) for call in vendor.calls)
    assert provisioned == [("acme:AAA", "B:C"), ("acme:AAA:B", "C")]
    links = {}
    for integration_id, order_id in provisioned:
        job = Job.fetch(
            job_id_for(NS, integration_id, order_id), connection=redis, serializer=JOB_SERIALIZER
        )
        assert job.get_status() == "finished"
        call = next(
            c
            for c in vendor.calls
            if (c.body["integration_id"], c.body["id"]) == (integration_id, order_id)
        )
        links[integration_id] = job.return_value()["steps"]["provision_http"]["test_url"]
        assert links[integration_id] == f"https://tests.example/t/{call.idempotency_key}"
    assert links["acme:AAA"] != links["acme:AAA:B"]
    # And each has its own step record.
    keys = Keys(NS)
    assert keys.steps("acme:AAA", "B:C") != keys.steps("acme:AAA:B", "C")
    for integration_id, order_id in provisioned:
        assert redis.hexists(keys.steps(integration_id, order_id), "provision_http")


def test_real_kombo_ids_keep_the_keys_deployed_versions_wrote() -> None:
    keys = Keys(NS)
    integration = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"
    assert keys.steps(integration, "ORD123") == f"dispatcher:steps:{integration}:ORD123"
    assert (
        keys.effects(integration, "ORD123", "notify_email")
        == f"dispatcher:effects:{integration}:ORD123:notify_email"
    )
    assert order_ref("acme:AAA", "B:C") == "acme%3AAAA:B%3AC"
    assert order_ref("acme:AAA:B", "C") == "acme%3AAAA%3AB:C"


Pair = tuple[str, str]


@st.composite
def rival_pairs(draw: st.DrawFn) -> tuple[Pair, Pair]:
    """A pair of ids and a rival built to collide with it under a naive or half-escaped
    encoding: the joined text cut at another ':', or one id with its ':' / '%' spelled as
    their escapes, or a random other pair."""
    first = (draw(hostile_ids), draw(hostile_ids))
    joined = ":".join(first)
    colons = [index for index, char in enumerate(joined) if char == ":"]
    how = draw(st.sampled_from(["recut", "escape", "random"]))
    if how == "recut" and colons:
        cut = draw(st.sampled_from(colons))
        return first, (joined[:cut], joined[cut + 1 :])
    if how == "escape":
        side = draw(st.sampled_from([0, 1]))
        spelled = list(first)
        old, new = draw(st.sampled_from([(":", "%3A"), ("%", "%25"), ("%3A", ":"), ("%25", "%")]))
        spelled[side] = spelled[side].replace(old, new)
        return first, (spelled[0], spelled[1])
    return first, (draw(hostile_ids), draw(hostile_ids))


@given(pairs=rival_pairs())
@settings(max_examples=500)
def test_the_order_ref_is_injective(pairs: tuple[Pair, Pair]) -> None:
    first, second = pairs
    if first != second:
        assert order_ref(*first) != order_ref(*second)


@given(rivals=rival_pairs(), handlers=st.tuples(handler_names, handler_names))
@settings(max_examples=300)
def test_steps_and_effects_keys_never_name_two_orders(
    rivals: tuple[Pair, Pair], handlers: tuple[str, str]
) -> None:
    pairs = [(*rivals[0], handlers[0]), (*rivals[1], handlers[1])]
    keys = Keys(NS)
    steps = {keys.steps(i, o): (i, o) for i, o, _ in pairs}
    effects = {keys.effects(i, o, h): (i, o, h) for i, o, h in pairs}
    assert len(steps) == len({(i, o) for i, o, _ in pairs})
    assert len(effects) == len(set(pairs))
    assert not set(steps) & set(effects)


plain_part = st.text(st.characters(codec="utf-8", exclude_characters=":"), min_size=1, max_size=10)


@given(tool=plain_part, tenant=plain_part, order=plain_part)
def test_the_plain_form_is_kept_for_kombo_shaped_ids(tool: str, tenant: str, order: str) -> None:
    assert order_ref(f"{tool}:{tenant}", order) == f"{tool}:{tenant}:{order}"


@given(value=hostile_ids)
def test_an_accepted_id_keeps_nul_joined_hashes_unambiguous(value: str) -> None:
    # job_id_for and step_key hash NUL-joined ids: unambiguous as long as no id holds a NUL
    # ("a\x00b" + "c" would be "a" + "b\x00c"), and they must be encodable.
    if id_problem(value) is None:
        assert "\x00" not in value
        value.encode()
        assert job_id_for(NS, value, value) != job_id_for(NS, value + "x", value)
        assert step_key(NS, value, value, "h") != step_key(NS, value, value + "x", "h")
    else:
        with pytest.raises(OrderValidationError):
            parse_order(order_data(value))


def test_handler_names_with_a_colon_or_a_control_character_are_refused() -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def handle(self, order: Any, context: Any) -> None:
            return None

    for name in ("a:b", "evil\n", "tab\there"):
        with pytest.raises(HandlerConfigError, match="must not contain ':'"):
            check_handler(name, Named(name))
    check_handler("notify_email", Named("notify_email"))


@pytest.mark.redis
def test_forget_leaves_the_effects_of_an_order_whose_key_starts_the_same(redis: Redis) -> None:
    # Integration "a" order "b" and integration "a:b" order "c": the first one's SCAN glob
    # "…:effects:a:b:*" also matches the second one's keys.
    keys = Keys(NS)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NS)
    ledger.dispatch("a", [an_order("b")])
    ledger.dispatch("a:b", [an_order("c")])
    redis.sadd(keys.effects("a", "b", "notify_email"), "x@example.com")
    theirs = keys.effects("a:b", "c", "notify_email")
    redis.sadd(theirs, "y@example.com")
    forget_order(redis, NS, QUEUE, "a", "b")
    assert redis.smembers(theirs) == {b"y@example.com"}
    assert not redis.exists(keys.effects("a", "b", "notify_email"))


# -- item 3: ids are bounded and printable -------------------------------------------------------

BAD_IDS = {
    "newline": "O1\nERROR dispatcher.poller.poller: FORGED",
    "nul": "O1\x00x",
    "escape": "O1\x1b[31m",
    "c1": "O1\x85",
    "del": "O1\x7f",
    "lone surrogate": "O1\ud800",
    "too long": "O" * (MAX_ID_LENGTH + 1),
    "empty": "",
}


@pytest.mark.parametrize("field", ["id", "package_id"])
@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_ids_that_would_forge_keys_or_log_lines_are_refused(field: str, bad: str) -> None:
    data = order_data("O1", **{field: bad})
    with pytest.raises(OrderValidationError) as caught:
        parse_order(data, position=4)
    message = str(caught.value)
    assert f"field {field}:" in message
    assert "\n" not in message and "\x00" not in message and "FORGED" not in message
    assert len(message) < 200
    # An id that is not one is named by its position, never echoed.
    if field == "id":
        assert message.startswith("order #4: field id: ")


@given(order_id=hostile_ids)
def test_an_accepted_id_has_no_control_character(order_id: str) -> None:
    try:
        order = parse_order(order_data(order_id))
    except OrderValidationError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
        return
    assert order.id == order_id
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in order_id)
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in order_id)


def test_a_configured_integration_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="is not an integration id"):
        check_integration_id("greenhouse:HWUT\n")
    assert check_integration_id("greenhouse:HWUT") == "greenhouse:HWUT"


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_the_webhook_refuses_a_hostile_integration_id_with_400(bad: str) -> None:
    redis = fakeredis.FakeRedis()
    client = AppClient(make_app(make_ledger(redis)))
    body = json.dumps(
        {"id": "evt_1", "type": "assessment:order-received",
         "data": {**order_data("O1"), "integration_id": bad}},
    ).encode()  # fmt: skip
    answer = client.post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 400
    message = answer.json()["message"]
    # A lone surrogate is refused earlier, by the JSON parser (the body cannot be decoded).
    expected = "body is not valid JSON" if "\ud800" in bad else "field data.integration_id"
    assert expected in message
    assert "\n" not in message
    assert redis.keys("*") == []


def test_the_webhook_answers_400_not_500_to_an_order_id_with_a_lone_surrogate() -> None:
    redis = fakeredis.FakeRedis()
    client = AppClient(make_app(make_ledger(redis)))
    body = event_body(order_data("O1\ud800"), "greenhouse:HWUT")
    answer = client.post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 400
    # Refused by the JSON parser, before the id is looked at: lone surrogates cannot be decoded.
    assert "body is not valid JSON" in answer.json()["message"]
    assert redis.keys("*") == []


# -- item 4: a script writes all or nothing ------------------------------------------------------

INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"
# Every key the dispatch script writes, and what it must hold.
DISPATCH_KEYS = {
    "seen hash": (f"{NS}:seen:{INTEGRATION}", "hash"),
    "queue": (f"rq:queue:{QUEUE}", "list"),
    "rq:queues": ("rq:queues", "set"),
    "seen-integrations": (f"{NS}:seen-integrations", "set"),
    "stats": (f"{NS}:stats", "hash"),
}
WRONG_VALUES = {
    "string": lambda redis, key: redis.set(key, "x"),
    "list": lambda redis, key: redis.rpush(key, "x"),
    "zset": lambda redis, key: redis.zadd(key, {"x": 1}),
}


def _wrong(kind: str, expected: str) -> str:
    # A wrong type for a key that must hold ``expected``.
    return "string" if kind == expected else kind


@pytest.mark.redis
@pytest.mark.parametrize("wrong", list(WRONG_VALUES))
@pytest.mark.parametrize("place", list(DISPATCH_KEYS))
def test_a_wrong_type_key_makes_dispatch_write_nothing_and_name_the_key(
    redis: Redis, place: str, wrong: str
) -> None:
    key, expected = DISPATCH_KEYS[place]
    wrong = _wrong(wrong, expected)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NS)
    # Given an order dispatched before (a full sweep renews its mark: the script's first
    # writes), then a value of the wrong type in one of the places the script writes
    ledger.dispatch(INTEGRATION, [an_order("EARLIER")])
    redis.delete(key)
    WRONG_VALUES[wrong](redis, key)
    before = everything(redis)
    # When a page with a new order is dispatched (a full sweep, renewing EARLIER's mark)
    with pytest.raises(ResponseError) as caught:
        ledger.dispatch(INTEGRATION, [an_order("EARLIER"), an_order("O1")], generation=10)
    # Then nothing at all was written, and the error says which key and why, on one line.
    assert everything(redis) == before
    assert isinstance(caught.value, WrongKeyTypeError)
    message = str(caught.value)
    assert message == (
        f"integration {INTEGRATION}: key {key} holds a {wrong} where a {expected} belongs; "
        "nothing was written: repair or delete it"
    )
    assert caught.value.key == key
    # When the key is repaired (deleted), the order is dispatched, exactly once.
    redis.delete(key)
    result = ledger.dispatch(INTEGRATION, [an_order("EARLIER"), an_order("O1")])
    # (EARLIER again only when the repair deleted the seen hash that remembered it.)
    assert result.enqueued == (["EARLIER", "O1"] if place == "seen hash" else ["O1"])
    assert ledger.dispatch(INTEGRATION, [an_order("O1")]).enqueued == []
    queued = redis.lrange(f"rq:queue:{QUEUE}", 0, -1)
    assert queued.count(job_id_for(NS, INTEGRATION, "O1").encode()) == 1
    assert ledger.seen_at(INTEGRATION, "O1") is not None


@pytest.mark.redis
def test_a_wrong_type_job_key_is_replaced_by_the_order_s_job(redis: Redis) -> None:
    # The job key is the order's own (its id derives from the order): the script deletes
    # whatever is there before it writes the job, as it does a stale job hash.
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NS)
    job_id = job_id_for(NS, INTEGRATION, "O1")
    redis.rpush(Job.key_for(job_id), "junk")
    assert ledger.dispatch(INTEGRATION, [an_order("O1")]).enqueued == ["O1"]
    job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
    assert job.kwargs["order"]["id"] == "O1"
    assert redis.lrange(f"rq:queue:{QUEUE}", 0, -1) == [job_id.encode()]


REJECT_KEYS = {
    "seen hash": (f"{NS}:seen:{INTEGRATION}", "hash"),
    "rejected hash": (f"{NS}:rejected:{INTEGRATION}", "hash"),
    "seen-integrations": (f"{NS}:seen-integrations", "set"),
    "stats": (f"{NS}:stats", "hash"),
}


@pytest.mark.redis
@pytest.mark.parametrize("place", list(REJECT_KEYS))
def test_a_wrong_type_key_makes_reject_write_nothing(redis: Redis, place: str) -> None:
    key, expected = REJECT_KEYS[place]
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NS)
    redis.set(key, "x")
    before = everything(redis)
    with pytest.raises(ResponseError) as caught:
        ledger.reject(INTEGRATION, "O1", "package not offered")
    assert everything(redis) == before
    assert isinstance(caught.value, WrongKeyTypeError)
    assert f"{key} holds a string where a {expected} belongs" in str(caught.value)
    redis.delete(key)
    assert ledger.reject(INTEGRATION, "O1", "package not offered")
    assert ledger.rejection(INTEGRATION, "O1") == "package not offered"


@pytest.mark.redis
def test_a_wrong_type_stats_key_makes_record_result_write_nothing(redis: Redis) -> None:
    keys = Keys(NS)
    redis.set(keys.stats, "x")
    with pytest.raises(ResponseError) as caught:
        record_result(redis, keys, INTEGRATION, "O1", "COMPLETED")
    assert not redis.exists(keys.results(INTEGRATION))
    assert isinstance(caught.value, WrongKeyTypeError)
    assert f"key {keys.stats} holds a string" in str(caught.value)
    redis.delete(keys.stats)
    record_result(redis, keys, INTEGRATION, "O1", "COMPLETED")
    assert redis.hget(keys.stats, "results_written") == b"1"


@pytest.mark.redis
def test_a_stranded_job_is_not_lost_to_a_wrong_type_queue(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue(QUEUE, connection=redis)
    intermediate = queue.intermediate_queue
    redis.hset(Job.key_for("order-stranded"), "status", "queued")
    redis.rpush(intermediate.key, "order-stranded")
    redis.set(intermediate.get_first_seen_key("order-stranded"), 1.0)  # popped long ago
    redis.set(queue.key, "x")
    worker = DispatcherSimpleWorker([queue], connection=redis)
    with caplog.at_level(logging.ERROR, "dispatcher.worker"):
        assert worker.requeue_stranded(queue) == 0
    assert redis.lrange(intermediate.key, 0, -1) == [b"order-stranded"]
    assert f"key {queue.key} holds a string where a list belongs" in caplog.text
    redis.delete(queue.key)
    assert worker.requeue_stranded(queue) == 1
    assert redis.lrange(queue.key, 0, -1) == [b"order-stranded"]


@pytest.mark.redis
def test_an_abandoned_job_is_not_lost_to_a_wrong_type_queue(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue(QUEUE, connection=redis)
    registry = queue.started_job_registry
    redis.hset(Job.key_for("order-abandoned"), "status", "started")
    redis.zadd(registry.key, {"order-abandoned:exec1": 1})  # heartbeat long expired
    redis.set(queue.key, "x")
    worker = DispatcherSimpleWorker([queue], connection=redis)
    with caplog.at_level(logging.ERROR, "dispatcher.worker"):
        assert worker.requeue_abandoned(queue) == 0
    assert redis.zrange(registry.key, 0, -1) == [b"order-abandoned:exec1"]
    assert f"key {queue.key} holds a string where a list belongs" in caplog.text
    redis.delete(queue.key)
    assert worker.requeue_abandoned(queue) == 1
    assert redis.lrange(queue.key, 0, -1) == [b"order-abandoned"]


@pytest.mark.redis
def test_the_poller_records_a_wrong_type_key_for_its_integration_and_sweeps_the_rest(
    redis: Redis, redis_url: str
) -> None:
    sim = Simulator(["greenhouse:BROKEN", "greenhouse:FINE"], 3, closed=0, seed=4)
    settings = settings_for(redis_url, sim, NS)
    keys = Keys(NS)
    redis.set(keys.seen("greenhouse:BROKEN"), "x")
    report = sweep(redis, settings, sim)
    assert set(report.errors) == {"greenhouse:BROKEN"}
    error = report.errors["greenhouse:BROKEN"]
    assert f"key {keys.seen('greenhouse:BROKEN')} holds a string where a hash belongs" in error
    assert report.orders_new == 3  # the fine integration's
    state = redis.hgetall(keys.sweep("greenhouse:BROKEN"))
    assert state[b"last_error_code"] == b"REDIS.WRONGTYPE"
    assert redis.get(keys.seen("greenhouse:BROKEN")) == b"x"


@settings(max_examples=100)
@given(pairs=rival_pairs())
def test_a_step_recorded_for_one_order_is_never_seen_by_another(
    pairs: tuple[Pair, Pair],
) -> None:
    first, second = pairs
    if first == second or "\ud800" in "".join(first + second):
        return  # lone surrogates cannot name a key at all: refused at the door (see above)
    redis = fakeredis.FakeRedis()
    keys = Keys(NS)
    StepStore(redis, keys, *first, ttl=60).complete("provision_http", {"test_url": "mine"})
    StepStore(redis, keys, *first, ttl=60).effects("notify_email").record("a@example.com")
    _, outputs = StepStore(redis, keys, *second, ttl=60).begin()
    assert outputs == {}
    assert not StepStore(redis, keys, *second, ttl=60).effects("notify_email").done("a@example.com")
