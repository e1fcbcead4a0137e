"""Property-based tests: whatever Kombo sends, the poller parses what is valid, names what is
not, dispatches nothing of a bad order, and never crashes; likewise for configuration."""

from __future__ import annotations

import copy
import json
from typing import Any

import fakeredis
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.models import parse_order
from dispatcher.kombo.pages import InvalidPageError
from dispatcher.poller.poller import Poller
from dispatcher.settings import ConfigError, load_settings
from dispatcher.store.ledger import Ledger

INTEGRATION = "greenhouse:PROPERTY0000000000000"
text = st.text(max_size=20)
nullable = st.none() | text
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
extra_fields = st.dictionaries(
    st.sampled_from(["custom", "x_new", "meta"]), json_values, max_size=2
)

members = st.fixed_dictionaries(
    {
        "remote_id": nullable,
        "email": nullable,
        "first_name": nullable,
        "last_name": nullable,
        "hiring_team_roles": st.lists(
            st.sampled_from(["RECRUITER", "HIRING_MANAGER", "INTERVIEWER", "COORDINATOR"]),
            max_size=3,
        ),
    }
)
locations = st.none() | st.fixed_dictionaries(
    {k: nullable for k in ("street_1", "street_2", "city", "state", "zip_code", "country", "raw")}
)


# Ids as Kombo may send them: any unicode but control characters (models.check_id).
kombo_ids = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=20
)
# Ids that would forge a log line or a key, or are too long. (A lone surrogate does not even
# parse as JSON from Kombo: tests/hostile/test_hostile_keys.py sends one by webhook.)
hostile_ids = st.text(st.characters(categories=["Cc"]), min_size=1, max_size=3).flatmap(
    lambda bad: st.sampled_from([bad, f"ORD{bad}", f"{bad}x"])
) | st.just("O" * 257)


@st.composite
def orders(draw: st.DrawFn, order_id: str) -> dict[str, Any]:
    order = {
        "id": order_id,
        "package_id": draw(kombo_ids),
        "status": draw(st.sampled_from(["OPEN", "COMPLETED", "CANCELLED", "REJECTED", "NEW_ONE"])),
        "candidate": {
            "remote_id": draw(nullable),
            "email": draw(st.emails()),
            "first_name": draw(nullable),
            "last_name": draw(nullable),
            "phone": draw(nullable),
        },
        "application": {"remote_id": draw(nullable)},
        "job": {
            "remote_id": draw(nullable),
            "name": draw(nullable),
            "job_code": draw(nullable),
            "description": draw(nullable),
            "location": draw(locations),
            "hiring_team": draw(st.lists(members, max_size=4)),
        },
    }
    order.update(draw(extra_fields))
    return order


@st.composite
def pages(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=6))
    return [draw(orders(f"ORD{i:04d}")) for i in range(count)]


# Where a wrong value must be refused, and values that are wrong there.
REQUIRED_PATHS = [
    ("id", st.none() | st.integers() | st.just("") | hostile_ids),
    ("package_id", st.none() | st.integers() | st.lists(text, max_size=1) | hostile_ids),
    ("candidate", st.none() | text | st.integers()),
    ("candidate.email", st.none() | st.integers() | st.lists(text, max_size=1)),
    ("application", st.none() | text),
    ("job", st.none() | st.integers()),
    ("job.hiring_team", st.none() | text | st.integers()),
    ("job.location", st.integers() | text),
    ("candidate.first_name", st.integers() | st.lists(text, max_size=1)),
]


def _set(order: dict[str, Any], path: str, value: Any) -> None:
    target = order
    *parents, leaf = path.split(".")
    for part in parents:
        target = target[part]
    target[leaf] = value


def _client(body: Any) -> KomboClient:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    return KomboClient("k", "https://kombo.test/v1", transport=transport, retry_budget=0)


def _page(results: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"next": None, "results": results}}


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(pages())
def test_every_valid_page_parses_and_round_trips(results: list[dict[str, Any]]) -> None:
    with _client(_page(results)) as client:
        page = client.get_orders(INTEGRATION)
    assert [o.id for o in page.orders] == [r["id"] for r in results]
    assert [o.to_payload() for o in page.orders] == results


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages(), st.data())
def test_an_invalid_order_names_order_and_field_and_only_it_is_left_out(
    results: list[dict[str, Any]], data: st.DataObject
) -> None:
    bad_index = data.draw(st.integers(min_value=0, max_value=len(results) - 1))
    path, values = data.draw(st.sampled_from(REQUIRED_PATHS))
    broken = copy.deepcopy(results)
    _set(broken[bad_index], path, data.draw(values))
    redis = fakeredis.FakeRedis()
    ledger = Ledger(redis, Queue("q", connection=redis), "dispatcher")
    with _client(_page(broken)) as client:
        with pytest.raises(InvalidPageError) as info:
            client.get_orders(INTEGRATION).orders  # noqa: B018
        expected_id = broken[bad_index]["id"] if path != "id" else f"#{bad_index}"
        assert info.value.order_id == expected_id
        assert info.value.field.startswith(path)
        assert str(info.value).startswith(
            f"integration {INTEGRATION}: order {expected_id}: field {path}"
        )
        result = Poller(client, ledger, [INTEGRATION]).sweep()
    # Issue 12: the order is reported and left out, the rest of its page dispatched (an
    # invalid order used to fail its page, and so its integration, on every sweep).
    assert result.errors == {}
    assert result.results[0].invalid_orders == [
        str(info.value).removeprefix(f"integration {INTEGRATION}: ")
    ]
    assert ledger.queue.count == len(results) - 1
    assert redis.hlen(ledger.keys.seen(INTEGRATION)) == len(results) - 1
    assert not redis.hexists(ledger.keys.seen(INTEGRATION), str(broken[bad_index]["id"]))


@settings(max_examples=200, deadline=None)
@given(json_values | st.binary(max_size=64))
def test_no_response_body_crashes_the_poller(body: Any) -> None:
    redis = fakeredis.FakeRedis()
    ledger = Ledger(redis, Queue("q", connection=redis), "dispatcher")
    with _client(body) as client:
        report = Poller(client, ledger, [INTEGRATION]).sweep()
    # Either a page (an empty or valid one) or one clear error line; never an exception.
    if report.errors:
        assert "\n" not in report.errors[INTEGRATION]
        assert report.errors[INTEGRATION].startswith(f"integration {INTEGRATION}: ")
        assert ledger.queue.count == 0


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "DISPATCHER_POLL_INTERVAL",
            "DISPATCHER_NAMESPACE",
            "DISPATCHER_QUEUE",
            "DISPATCHER_HANDLERS",
            "DISPATCHER_ORDERS_ENDPOINT",
            "KOMBO_BASE_URL",
            "KOMBO_INTEGRATION_IDS",
            "REDIS_URL",
            "DISPATCHER_PAGE_SIZE",
            "DISPATCHER_HANDLER_TIMEOUTS",
            "DISPATCHER_MAX_RETRIES",
            "DISPATCHER_LEASE_TTL",
        ]
    ),
    st.text(max_size=30).filter(lambda v: "\x00" not in v),
)
def test_any_configuration_value_loads_or_names_its_variable(name: str, value: str) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(name, value)
        try:
            load_settings(_env_file=None)
        except ConfigError as exc:
            assert str(exc).startswith(f"{name}: ")
            assert "\n" not in str(exc)


def test_parse_order_refuses_non_objects() -> None:
    for value in (None, 3, "x", [1]):
        with pytest.raises(ValueError, match=r"^order #0: field \(order\)|^order #0: field "):
            parse_order(value, position=0)
