"""Tests for the fake Kombo assessment API (dispatcher.testing.sim).

They talk to the simulator with a plain httpx.Client, in process through its transport and,
once, over a real socket, so they pin the HTTP behaviour clients depend on.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator

ORDERS = "/assessment/orders"
OPEN_ORDERS = "/assessment/orders/open"
BASE58_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{24}")
ORDER_KEYS = {"id", "package_id", "status", "candidate", "application", "job"}
CANDIDATE_KEYS = {"remote_id", "email", "first_name", "last_name", "phone"}
JOB_KEYS = {"remote_id", "name", "job_code", "description", "location", "hiring_team"}
MEMBER_KEYS = {"remote_id", "email", "first_name", "last_name", "hiring_team_roles"}
LOCATION_KEYS = {"street_1", "street_2", "city", "state", "zip_code", "country", "raw"}


def make_client(sim: Simulator, integration_id: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    if integration_id is not None:
        headers["X-Integration-Id"] = integration_id
    return httpx.Client(transport=sim.transport(), base_url=sim.base_url, headers=headers)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(integrations=2, orders=30, closed=6, seed=1)


@pytest.fixture
def iid(sim: Simulator) -> str:
    return sim.integration_ids[0]


@pytest.fixture
def client(sim: Simulator, iid: str) -> Iterator[httpx.Client]:
    with make_client(sim, iid) as c:
        yield c


def get_page(client: httpx.Client, path: str = ORDERS, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    data: dict[str, Any] = body["data"]
    return data


def page_through(client: httpx.Client, path: str = ORDERS, **params: Any) -> list[list[Any]]:
    pages: list[list[Any]] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        data = get_page(client, path, **query)
        pages.append(data["results"])
        cursor = data["next"]
        if cursor is None:
            return pages


def ids_of(orders: list[dict[str, Any]]) -> list[str]:
    return [order["id"] for order in orders]


def flat_ids(pages: list[list[Any]]) -> list[str]:
    return [order["id"] for page in pages for order in page]


def assert_error(response: httpx.Response, status: int, code: str | None, mention: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "error"
    error = body["error"]
    assert set(error) == {"code", "title", "message", "log_url"}
    assert error["code"] == code
    assert mention in error["message"]
    assert error["log_url"].startswith("https://app.kombo.dev/sim/logs?interactionId=")


def result_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "COMPLETED",
        "result_url": "https://vendor.example/results/1",
        "completed_at": "2024-05-01T12:00:00.000Z",
        "score": 42,
        "max_score": 50,
        "attributes": [
            {"type": "TEXT", "label": "Level", "value": "Senior"},
            {
                "type": "SUB_RESULT",
                "id": "algorithms",
                "label": "Algorithms",
                "score": {"value": 8, "max": 10},
                "status": "COMPLETED",
            },
        ],
        "attachments": [
            {
                "name": "report.pdf",
                "content_type": "application/pdf",
                "data": base64.b64encode(b"%PDF-1.4 report").decode(),
            },
            {"name": "recording", "data_url": "https://vendor.example/recording.mp4"},
        ],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


# ------------------------------------------------------------------------------ paging


def test_paging_returns_every_open_order_exactly_once(sim: Simulator, client: httpx.Client) -> None:
    iid = sim.integration_ids[0]
    pages = page_through(client, statuses="OPEN", page_size=7)

    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    ids = flat_ids(pages)
    assert len(ids) == len(set(ids)) == 30
    # Same orders, same (created_at, id) order as the simulator's own view.
    assert ids == ids_of(sim.orders(iid, "OPEN"))
    closed = {o["id"] for o in sim.orders(iid) if o["status"] != "OPEN"}
    assert len(closed) == 6 and not closed & set(ids)
    assert not set(ids) & set(ids_of(sim.orders(sim.integration_ids[1])))
    assert all(order["status"] == "OPEN" for page in pages for order in page)


def test_orders_are_sorted_by_creation_time(sim: Simulator, iid: str) -> None:
    orders = sim.orders(iid)
    created = [sim.created_at(iid, order["id"]) for order in orders]
    assert created == sorted(created)
    now = datetime.now(UTC)
    assert all(now - timedelta(days=30, seconds=5) <= c <= now for c in created)


def test_default_page_size_and_all_statuses(client: httpx.Client) -> None:
    sim = Simulator(integrations=1, orders=120, seed=2)  # closed defaults to orders // 10
    with make_client(sim, sim.integration_ids[0]) as c:
        first = get_page(c)
        assert len(first["results"]) == 100 and first["next"]
        rest = get_page(c, cursor=first["next"])
        assert len(rest["results"]) == 32 and rest["next"] is None
    statuses = {o["status"] for o in first["results"] + rest["results"]}
    assert "OPEN" in statuses and statuses - {"OPEN"}


def test_statuses_filter(sim: Simulator, iid: str, client: httpx.Client) -> None:
    pages = page_through(client, statuses="COMPLETED, CANCELLED,REJECTED", page_size=4)
    expected = [o["id"] for o in sim.orders(iid) if o["status"] != "OPEN"]
    assert flat_ids(pages) == expected
    completed = page_through(client, statuses="COMPLETED")
    assert flat_ids(completed) == ids_of(sim.orders(iid, "COMPLETED"))


def test_ids_filter(sim: Simulator, iid: str, client: httpx.Client) -> None:
    everything = sim.orders(iid)
    closed = next(o for o in everything if o["status"] != "OPEN")
    opened = [o for o in everything if o["status"] == "OPEN"][:3]
    wanted = [closed["id"], *ids_of(opened), "NoSuchOrder1234567890abcd"]

    data = get_page(client, ids=",".join(reversed(wanted)))
    assert data["next"] is None
    assert ids_of(data["results"]) == [o["id"] for o in everything if o["id"] in wanted]

    only_open = page_through(client, ids=",".join(wanted), statuses="OPEN", page_size=2)
    assert [len(p) for p in only_open] == [2, 1]
    assert flat_ids(only_open) == ids_of(opened)


def test_created_after_is_inclusive(sim: Simulator, iid: str, client: httpx.Client) -> None:
    orders = sim.orders(iid)
    pivot = orders[17]
    at = sim.created_at(iid, pivot["id"])
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"

    ids = flat_ids(page_through(client, created_after=stamp, page_size=5))
    assert ids[0] == pivot["id"] or sim.created_at(iid, ids[0]) == at
    assert ids == [o["id"] for o in orders if sim.created_at(iid, o["id"]) >= at]

    # Without "Z" the value is UTC too; a date alone means midnight UTC.
    assert flat_ids(page_through(client, created_after=stamp[:-1])) == ids
    assert len(flat_ids(page_through(client, created_after="2000-01-01"))) == len(orders)
    future = get_page(client, created_after="2999-01-01T00:00:00Z")
    assert future == {"next": None, "results": []}


def test_cursor_survives_status_changes_mid_paging(
    sim: Simulator, iid: str, client: httpx.Client
) -> None:
    open_ids = ids_of(sim.orders(iid, "OPEN"))
    first = get_page(client, statuses="OPEN", page_size=7)
    assert ids_of(first["results"]) == open_ids[:7]

    # An unseen order on a later page closes; an already-seen one closes too. With offset
    # paging the first would shift the rest of the list and skip an order.
    sim.set_status(iid, open_ids[20], "COMPLETED")
    sim.set_status(iid, open_ids[2], "CANCELLED")
    # And one closed order that sorts on a later page reopens.
    reopened = next(
        o["id"]
        for o in sim.orders(iid)
        if o["status"] != "OPEN" and sim.created_at(iid, o["id"]) > sim.created_at(iid, open_ids[8])
    )
    sim.set_status(iid, reopened, "OPEN")

    rest = flat_ids(page_through(client, statuses="OPEN", page_size=7, cursor=first["next"]))
    seen = ids_of(first["results"]) + rest
    assert len(seen) == len(set(seen))
    assert set(seen) == (set(open_ids) - {open_ids[20]}) | {reopened}


def test_cursor_survives_new_orders_mid_paging(
    sim: Simulator, iid: str, client: httpx.Client
) -> None:
    open_ids = ids_of(sim.orders(iid, "OPEN"))
    first = get_page(client, statuses="OPEN", page_size=7)

    late = sim.add_order(iid)  # created now: sorts after every generated order
    early_at = sim.created_at(iid, open_ids[0]) - timedelta(hours=1)
    early = sim.add_order(iid, created_at=early_at)  # sorts before the cursor: not revisited
    middle_at = sim.created_at(iid, open_ids[15]) + timedelta(microseconds=1)
    middle = sim.add_order(iid, created_at=middle_at)

    rest = flat_ids(page_through(client, statuses="OPEN", page_size=7, cursor=first["next"]))
    seen = ids_of(first["results"]) + rest
    assert len(seen) == len(set(seen))
    assert set(seen) == set(open_ids) | {late["id"], middle["id"]}
    assert early["id"] not in seen
    assert seen[-1] == late["id"]
    assert seen.index(middle["id"]) == 16


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "251"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"page_size": ""}, "page_size"),
        ({"statuses": "OPEN,DONE"}, "statuses"),
        ({"statuses": "open"}, "statuses"),
        ({"statuses": ","}, "statuses"),
        ({"ids": ""}, "ids"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_after": "2024-13-01"}, "created_after"),
        ({"created_after": "2024-05-01 10:00:00"}, "created_after"),
        ({"created_after": "2024-05-01T10:00:00+02:00"}, "created_after"),
        ({"cursor": "garbage!!"}, "cursor"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
    ],
)
def test_bad_query_parameters_are_rejected(
    client: httpx.Client, params: dict[str, str], mentions: str
) -> None:
    assert_error(client.get(ORDERS, params=params), 400, "PLATFORM.INPUT_INVALID", mentions)


def test_cursor_is_bound_to_filters_endpoint_and_integration(sim: Simulator) -> None:
    first, second = sim.integration_ids
    with make_client(sim, first) as c1, make_client(sim, second) as c2:
        cursor = get_page(c1, statuses="OPEN", page_size=3)["next"]
        assert get_page(c1, statuses="OPEN", page_size=9, cursor=cursor)["results"]  # size may vary
        for response in (
            c1.get(ORDERS, params={"statuses": "COMPLETED", "cursor": cursor}),
            c1.get(ORDERS, params={"cursor": cursor}),
            c1.get(OPEN_ORDERS, params={"cursor": cursor}),
            c2.get(ORDERS, params={"statuses": "OPEN", "cursor": cursor}),
        ):
            assert_error(response, 400, "PLATFORM.INPUT_INVALID", "cursor")


# ------------------------------------------------------------------------------ auth, routing


def test_authentication_is_required(sim: Simulator, iid: str) -> None:
    with httpx.Client(transport=sim.transport(), base_url=sim.base_url) as c:
        missing = c.get(ORDERS, headers={"X-Integration-Id": iid})
        wrong = c.get(ORDERS, headers={"X-Integration-Id": iid, "Authorization": "Bearer nope"})
        basic = c.get(ORDERS, headers={"X-Integration-Id": iid, "Authorization": DEFAULT_API_KEY})
    for response in (missing, wrong, basic):
        assert_error(response, 401, "PLATFORM.AUTHENTICATION_INVALID", "Authorization")

    custom = Simulator(1, 2, api_key="k-123")
    with httpx.Client(transport=custom.transport(), base_url=custom.base_url) as c:
        headers = {"X-Integration-Id": custom.integration_ids[0], "Authorization": "Bearer k-123"}
        assert c.get(ORDERS, headers=headers).status_code == 200


def test_unknown_integration_is_404(sim: Simulator) -> None:
    with make_client(sim, "greenhouse:doesNotExist") as c:
        assert_error(c.get(ORDERS), 404, "PLATFORM.INTEGRATION_NOT_FOUND", "doesNotExist")
    with make_client(sim) as c:
        assert_error(c.get(ORDERS), 404, "PLATFORM.INTEGRATION_NOT_FOUND", "X-Integration-Id")


def test_unknown_path_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/assessment/nothing"), 404, None, "/v1/assessment/nothing")
    assert_error(client.get("http://kombo.sim/v2/assessment/orders"), 404, None, "/v2/")
    response = client.post(ORDERS, json={})
    assert_error(response, 405, None, "POST")
    assert response.headers["allow"] == "GET"


def test_deprecated_open_orders_endpoint(sim: Simulator, iid: str, client: httpx.Client) -> None:
    pages = page_through(client, OPEN_ORDERS, page_size=7)
    orders = [order for page in pages for order in page]
    assert ids_of(orders) == ids_of(sim.orders(iid, "OPEN"))
    assert all("status" not in order for order in orders)
    assert all(set(order) >= ORDER_KEYS - {"status"} for order in orders)
    # It has no status filter: a statuses parameter does not widen it to closed orders.
    assert flat_ids(page_through(client, OPEN_ORDERS, statuses="COMPLETED")) == ids_of(orders)
    assert_error(
        client.get(OPEN_ORDERS, params={"page_size": "300"}),
        400,
        "PLATFORM.INPUT_INVALID",
        "page_size",
    )


# ------------------------------------------------------------------------------ write-back


def result_url(order_id: str) -> str:
    return f"{ORDERS}/{order_id}/result"


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (result_body(completed_at=None), "completed_at"),
        (result_body(status="CANCELLED", completed_at=None), "completed_at"),
        (result_body(completed_at="last tuesday"), "completed_at"),
        (result_body(status="DONE"), "status"),
        (result_body(status=None), "status"),
        (result_body(result_url=None), "result_url"),
        (result_body(score="high"), "score"),
        (result_body(max_score=True), "max_score"),
        (
            result_body(
                attachments=[{"name": f"f{i}", "data_url": "https://x.example/f"} for i in range(6)]
            ),
            "attachments",
        ),
        (
            result_body(
                attachments=[{"name": "a.pdf", "content_type": "application/pdf", "data": "%%%"}]
            ),
            "attachments[0].data",
        ),
        (
            result_body(attachments=[{"name": "a.pdf", "data": "AAAA"}]),
            "attachments[0]: content_type is required",
        ),
        (result_body(attachments=[{"data_url": "https://x.example/f"}]), "attachments[0].name"),
        (
            result_body(attributes=[{"type": "CHART", "label": "x"}]),
            "attributes[0]: Input tag 'CHART'",
        ),
        (
            result_body(attributes=[{"type": "SUB_RESULT", "id": "a", "label": "A"}]),
            "attributes[0].score",
        ),
        (result_body(attributes=[{"type": "TEXT", "label": "L"}]), "attributes[0].value"),
        ([1, 2, 3], "object"),
    ],
)
def test_result_validation(
    sim: Simulator, iid: str, client: httpx.Client, body: Any, mentions: str
) -> None:
    order_id = sim.orders(iid, "OPEN")[0]["id"]
    response = client.put(result_url(order_id), json=body)
    assert_error(response, 400, "PLATFORM.INPUT_INVALID", mentions)
    assert sim.orders(iid, "OPEN")[0]["id"] == order_id  # still OPEN
    assert sim.results == {}


def test_result_body_must_be_json(sim: Simulator, iid: str, client: httpx.Client) -> None:
    order_id = sim.orders(iid, "OPEN")[0]["id"]
    response = client.put(result_url(order_id), content=b"{not json")
    assert_error(response, 400, "PLATFORM.INPUT_INVALID", "JSON")


def test_result_success_closes_the_order(sim: Simulator, iid: str, client: httpx.Client) -> None:
    order_id = sim.orders(iid, "OPEN")[3]["id"]
    body = result_body()

    response = client.put(result_url(order_id), json=body)

    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": {}, "warnings": []}
    assert sim.results[(iid, order_id)] == body
    assert order_id not in ids_of(sim.orders(iid, "OPEN"))
    assert order_id in flat_ids(page_through(client, statuses="COMPLETED"))
    again = client.put(result_url(order_id), json=body)
    assert_error(again, 400, "PLATFORM.INPUT_INVALID", "is COMPLETED")
    assert "only while OPEN" in again.json()["error"]["message"]


def test_result_on_closed_or_unknown_order(sim: Simulator, iid: str, client: httpx.Client) -> None:
    rejected = next(o for o in sim.orders(iid) if o["status"] != "OPEN")
    response = client.put(result_url(rejected["id"]), json=result_body())
    assert_error(response, 400, "PLATFORM.INPUT_INVALID", f"is {rejected['status']}")

    other = sim.orders(sim.integration_ids[1], "OPEN")[0]["id"]  # exists, but elsewhere
    for order_id in ("NoSuchOrder1234567890abcd", other):
        response = client.put(result_url(order_id), json=result_body())
        assert_error(response, 404, "PLATFORM.INPUT_INVALID", order_id)
    assert sim.results == {}


def test_result_warnings_and_open_status(sim: Simulator, iid: str, client: httpx.Client) -> None:
    first, second = ids_of(sim.orders(iid, "OPEN")[:2])
    response = client.put(result_url(first), json=result_body(max_score=None))
    assert response.status_code == 200
    (warning,) = response.json()["warnings"]
    assert "score" in warning["message"]

    # status OPEN records progress without closing the order; completed_at is optional then.
    progress = {"status": "OPEN", "result_url": "https://vendor.example/results/2"}
    assert client.put(result_url(second), json=progress).status_code == 200
    assert second in ids_of(sim.orders(iid, "OPEN"))
    assert sim.results[(iid, second)] == progress


# ------------------------------------------------------------------------------ packages


def test_packages_put_and_get(sim: Simulator, iid: str, client: httpx.Client) -> None:
    packages = [
        {
            "id": "typescript_test",
            "type": "SKILLS_TEST",
            "name": "TypeScript",
            "description": "60'",
        },
        {"id": "bg_de", "type": "BACKGROUND_CHECK", "name": "Führungszeugnis", "description": ""},
    ]
    assert get_page(client, "/assessment/packages") == {"packages": []}

    response = client.put("/assessment/packages", json={"packages": packages})
    assert response.status_code == 200 and response.json()["status"] == "success"
    listed = get_page(client, "/assessment/packages")["packages"]
    # Kombo's schema (and its official SDK) has updated_at on every listed package.
    updated_at = listed[0]["updated_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", updated_at)
    assert listed == [{**p, "updated_at": updated_at} for p in packages]
    assert sim.packages[iid] == packages

    client.put("/assessment/packages", json={"packages": packages[1:]})  # replaces the list
    listed = get_page(client, "/assessment/packages")["packages"]
    assert [{k: v for k, v in p.items() if k != "updated_at"} for p in listed] == packages[1:]
    sim.packages[iid] = packages  # set directly: never PUT, so null (the key is still there)
    sim.packages_updated.pop(iid)
    assert get_page(client, "/assessment/packages")["packages"][0]["updated_at"] is None
    with make_client(sim, sim.integration_ids[1]) as other:
        assert get_page(other, "/assessment/packages") == {"packages": []}


@pytest.mark.parametrize(
    ("package", "mentions"),
    [
        ({"id": "a", "type": "QUIZ", "name": "A", "description": "d"}, "packages[1].type"),
        ({"id": "a", "type": "BEHAVIORAL", "description": "d"}, "packages[1].name"),
        ({"id": "a", "type": "BEHAVIORAL", "name": "A", "description": None}, "description"),
        ({"id": "ok", "type": "BEHAVIORAL", "name": "A", "description": "d"}, "twice"),
        ("BEHAVIORAL", "packages[1]"),
    ],
)
def test_packages_validation(
    sim: Simulator, iid: str, client: httpx.Client, package: Any, mentions: str
) -> None:
    valid = {"id": "ok", "type": "VIDEO_INTERVIEW", "name": "OK", "description": "fine"}
    assert client.put("/assessment/packages", json={"packages": [valid]}).status_code == 200
    response = client.put("/assessment/packages", json={"packages": [valid, package]})
    assert_error(response, 400, "PLATFORM.INPUT_INVALID", mentions)
    assert sim.packages[iid] == [valid]  # a rejected PUT changes nothing


@pytest.mark.parametrize("body", [{}, {"packages": "all"}, [{"id": "x"}]])
def test_packages_body_must_hold_a_list(client: httpx.Client, body: Any) -> None:
    response = client.put("/assessment/packages", json=body)
    assert_error(response, 400, "PLATFORM.INPUT_INVALID", "packages")


# ------------------------------------------------------------------------------ faults


def test_fail_next_rate_limit_sets_retry_after(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.retry_after = 2
    sim.fail_next("rate_limit")
    response = client.get(ORDERS)
    assert_error(response, 429, "PLATFORM.RATE_LIMIT_EXCEEDED", "")
    assert response.headers["retry-after"] == "2"
    assert client.get(ORDERS).status_code == 200  # used up

    sim.faults.retry_after = 0.5
    sim.fail_next("rate_limit")
    assert client.get(ORDERS).headers["retry-after"] == "0.5"


def test_fail_next_server_error_and_malformed(sim: Simulator, client: httpx.Client) -> None:
    sim.fail_next("server_error", 2)
    assert_error(client.get(ORDERS), 500, "PLATFORM.UNKNOWN_ERROR", "")
    assert_error(client.get(ORDERS), 500, "PLATFORM.UNKNOWN_ERROR", "")

    sim.fail_next("malformed")
    response = client.get(ORDERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert client.get(ORDERS).json()["status"] == "success"


def test_fail_next_can_target_one_integration(sim: Simulator) -> None:
    first, second = sim.integration_ids
    sim.fail_next("rate_limit", integration_id=second)
    with make_client(sim, first) as c1, make_client(sim, second) as c2:
        assert c1.get(ORDERS).status_code == 200
        assert c2.get(ORDERS).status_code == 429
        assert c2.get(ORDERS).status_code == 200


def test_faults_apply_to_writes(sim: Simulator, iid: str, client: httpx.Client) -> None:
    first, second = ids_of(sim.orders(iid, "OPEN")[:2])
    sim.fail_next("server_error")
    assert client.put(result_url(first), json=result_body()).status_code == 500
    assert first in ids_of(sim.orders(iid, "OPEN"))  # a 500 writes nothing

    # A malformed answer is a cut connection: the write happened, the client cannot tell.
    sim.fail_next("malformed")
    response = client.put(result_url(second), json=result_body())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert second not in ids_of(sim.orders(iid, "OPEN"))

    sim.fail_next("rate_limit")
    assert client.put("/assessment/packages", json={"packages": []}).status_code == 429


def test_refused_requests_do_not_use_up_forced_faults(sim: Simulator, iid: str) -> None:
    sim.fail_next("server_error")
    with httpx.Client(transport=sim.transport(), base_url=sim.base_url) as anonymous:
        assert anonymous.get(ORDERS, headers={"X-Integration-Id": iid}).status_code == 401
    with make_client(sim, iid) as c:
        assert c.get("/assessment/elsewhere").status_code == 404
        assert c.get(ORDERS).status_code == 500


def test_random_faults_are_seeded_and_switchable() -> None:
    def statuses(seed: int) -> list[int]:
        sim = Simulator(1, 5, seed=seed, faults=Faults(server_error=0.3, rate_limit=0.2))
        with make_client(sim, sim.integration_ids[0]) as c:
            return [c.get(ORDERS).status_code for _ in range(40)]

    run = statuses(9)
    assert run == statuses(9)
    assert {200, 429, 500} <= set(run)

    sim = Simulator(1, 5, faults=Faults(rate_limit=1.0))
    with make_client(sim, sim.integration_ids[0]) as c:
        assert c.get(ORDERS).status_code == 429
        sim.fail_next("server_error")  # forced faults come before random ones
        assert c.get(ORDERS).status_code == 500
        sim.faults.rate_limit = 0.0
        assert c.get(ORDERS).status_code == 200


def test_latency_uses_injected_sleep() -> None:
    sleeps: list[float] = []
    sim = Simulator(1, 5, faults=Faults(latency=0.25), sleep=sleeps.append)
    with make_client(sim, sim.integration_ids[0]) as c:
        started = time.perf_counter()
        c.get(ORDERS)
        c.get(OPEN_ORDERS)
        c.get(ORDERS, headers={"Authorization": "Bearer wrong"})  # latency precedes auth
        assert time.perf_counter() - started < 0.25  # the fake sleep did not really wait
        sim.faults.latency = 0
        c.get(ORDERS)
    assert sleeps == [0.25, 0.25, 0.25]


def test_request_counters(sim: Simulator, iid: str, client: httpx.Client) -> None:
    order_id = sim.orders(iid, "OPEN")[0]["id"]
    client.get(ORDERS, params={"page_size": 5})
    client.get(ORDERS, params={"statuses": "OPEN"})
    client.get(OPEN_ORDERS)
    client.put(result_url(order_id), json=result_body())
    assert sim.request_count == 4
    assert sim.requests_by_path == {
        "/v1/assessment/orders": 2,
        "/v1/assessment/orders/open": 1,
        f"/v1/assessment/orders/{order_id}/result": 1,
    }


# ------------------------------------------------------------------------------ generated data


def all_orders(sim: Simulator) -> list[dict[str, Any]]:
    return [order for iid in sim.integration_ids for order in sim.orders(iid)]


def test_generated_orders_are_schema_shaped() -> None:
    sim = Simulator(integrations=3, orders=150, closed=15, seed=7)
    assert all(re.fullmatch(r"[a-z]+:[1-9A-HJ-NP-Za-km-z]{22}", i) for i in sim.integration_ids)
    assert len({i.split(":")[0] for i in sim.integration_ids}) == 3
    orders = all_orders(sim)
    assert len(orders) == 3 * 165
    assert len({o["id"] for o in orders}) == len(orders)
    emails = [o["candidate"]["email"] for o in orders]
    assert len(set(emails)) == len(emails)
    for order in orders:
        assert BASE58_ID.fullmatch(order["id"])
        assert set(order) >= ORDER_KEYS
        assert isinstance(order["package_id"], str)
        assert set(order["candidate"]) >= CANDIDATE_KEYS
        assert order["candidate"]["email"].isascii() and "@" in order["candidate"]["email"]
        assert set(order["application"]) == {"remote_id"}
        job = order["job"]
        assert set(job) >= JOB_KEYS
        assert job["location"] is None or set(job["location"]) == LOCATION_KEYS
        assert all(set(member) == MEMBER_KEYS for member in job["hiring_team"])


def test_generated_orders_exercise_tolerant_clients() -> None:
    sim = Simulator(integrations=3, orders=150, closed=15, seed=7)
    orders = all_orders(sim)
    candidates = [o["candidate"] for o in orders]
    jobs = [o["job"] for o in orders]
    members = [m for job in jobs for m in job["hiring_team"]]
    names = [c[k] for c in candidates for k in ("first_name", "last_name")]

    assert any(c["first_name"] is None for c in candidates)
    assert any(c["last_name"] is None for c in candidates)
    assert any(c["phone"] is None for c in candidates)
    assert any(o["application"]["remote_id"] is None for o in orders)
    assert any(name and not name.isascii() for name in names)
    assert {"Zoë", "José", "Łukasz", "李", "O'Brien"} & set(names)
    assert any(name and ("<" in name or "&" in name) for name in names)
    assert any(job["description"] and job["description"].startswith("<p>") for job in jobs)
    assert any(job["description"] is None for job in jobs)
    assert any(job["name"] is None for job in jobs) and any(j["job_code"] is None for j in jobs)
    assert any(job["location"] is None for job in jobs)
    assert any(job["location"] and None in job["location"].values() for job in jobs)
    assert any(job["hiring_team"] == [] for job in jobs)
    assert any(member["email"] is None for member in members)
    assert any(member["hiring_team_roles"] == [] for member in members)
    assert any(
        len(team_emails := [m["email"] for m in job["hiring_team"] if m["email"]])
        > len(set(team_emails))
        for job in jobs
    )

    roles = {role for member in members for role in member["hiring_team_roles"]}
    assert roles == {"RECRUITER", "HIRING_MANAGER", "INTERVIEWER"}
    drifted = [
        o
        for o in orders
        if set(o) - ORDER_KEYS
        or set(o["candidate"]) - CANDIDATE_KEYS
        or set(o["job"]) - JOB_KEYS
        or any("INTERVIEWER" in m["hiring_team_roles"] for m in o["job"]["hiring_team"])
    ]
    assert any(set(o) - ORDER_KEYS for o in drifted)
    assert any(set(o["candidate"]) - CANDIDATE_KEYS for o in drifted)
    assert 0.02 < len(drifted) / len(orders) < 0.10  # about one in twenty


def test_schema_drift_can_be_turned_off_leaving_the_orders_otherwise_the_same() -> None:
    # Issue 14, item 12: Kombo's official SDK rejects the unknown hiring-team role.
    drifting = all_orders(Simulator(integrations=3, orders=150, closed=15, seed=7))
    strict = all_orders(
        Simulator(integrations=3, orders=150, closed=15, seed=7, schema_drift=False)
    )
    roles = {"RECRUITER", "HIRING_MANAGER"}
    assert [o["id"] for o in strict] == [o["id"] for o in drifting]
    differing = 0
    for plain, drifted in zip(strict, drifting, strict=True):
        assert set(plain) == ORDER_KEYS
        assert set(plain["candidate"]) == CANDIDATE_KEYS
        assert set(plain["job"]) == JOB_KEYS
        assert all(set(m["hiring_team_roles"]) <= roles for m in plain["job"]["hiring_team"])
        differing += plain != drifted
    assert 0.02 < differing / len(strict) < 0.10  # only the drifted orders differ


def test_generated_data_is_deterministic_per_seed() -> None:
    a, b = Simulator(3, 40, seed=3), Simulator(3, 40, seed=3)
    assert a.integration_ids == b.integration_ids
    # Lazy generation: touching integrations in another order yields the same orders.
    for iid in reversed(b.integration_ids):
        b.orders(iid)
    assert all_orders(a) == all_orders(b)
    other = Simulator(3, 40, seed=4)
    assert other.integration_ids != a.integration_ids
    assert Simulator(["lever:x"], 40, seed=3).orders("lever:x") != all_orders(a)[:44]


def test_state_helpers(sim: Simulator, iid: str, client: httpx.Client) -> None:
    candidate = {"remote_id": None, "email": "ada@example.com", "first_name": "Ada",
                 "last_name": None, "phone": None}  # fmt: skip
    added = sim.add_order(
        iid,
        id="AddedOrder000000000000001",
        created_at=datetime(2030, 1, 1),
        package_id="python_senior",
        candidate=candidate,
        score_hint=7,  # unknown fields are passed through as schema drift
    )
    assert added["status"] == "OPEN" and added["candidate"] == candidate
    assert added["score_hint"] == 7 and set(added) >= ORDER_KEYS
    data = get_page(client, created_after="2029-12-31T23:59:59Z")
    assert data["results"] == [added]
    assert sim.created_at(iid, added["id"]) == datetime(2030, 1, 1, tzinfo=UTC)

    candidate["email"] = "mutated@example.com"  # the simulator kept its own copy
    assert sim.orders(iid)[-1]["candidate"]["email"] == "ada@example.com"

    sim.set_status(iid, added["id"], "REJECTED")
    assert sim.orders(iid, "REJECTED")[-1]["id"] == added["id"]
    with pytest.raises(ValueError):
        sim.add_order(iid, id=added["id"])
    with pytest.raises(ValueError):
        sim.set_status(iid, added["id"], "DONE")
    with pytest.raises(KeyError):
        sim.orders("greenhouse:nope")
    with pytest.raises(KeyError):
        sim.set_status(iid, "missing", "OPEN")
    with pytest.raises(ValueError):
        sim.fail_next("teapot", 1)  # type: ignore[arg-type]


def test_concurrent_writes_are_consistent(sim: Simulator, iid: str) -> None:
    order_ids = ids_of(sim.orders(iid, "OPEN"))
    codes: list[int] = []

    def write(order_id: str) -> None:
        with make_client(sim, iid) as c:
            codes.append(c.put(result_url(order_id), json=result_body()).status_code)

    # Every order is written twice at once: exactly one write per order may win.
    threads = [threading.Thread(target=write, args=(o,)) for o in order_ids * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200] * 30 + [400] * 30
    assert sim.orders(iid, "OPEN") == []
    assert len(sim.results) == 30


# ------------------------------------------------------------------------------ real socket


def test_real_socket_server(sim: Simulator, iid: str) -> None:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}", "X-Integration-Id": iid}
    with sim.serve() as server:
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as c:
            pages = page_through(c, statuses="OPEN", page_size=7)
            assert flat_ids(pages) == ids_of(sim.orders(iid, "OPEN"))
            order_id = flat_ids(pages)[0]
            assert c.put(result_url(order_id), json=result_body()).status_code == 200
            assert sim.results[(iid, order_id)] == result_body()
            assert_error(c.get("/assessment/nowhere"), 404, None, "/v1/assessment/nowhere")
            bad = c.get(ORDERS, headers={"Authorization": "Bearer wrong"})
            assert_error(bad, 401, "PLATFORM.AUTHENTICATION_INVALID", "")
            sim.fail_next("rate_limit")
            assert c.get(ORDERS).headers["retry-after"] == "1"

            # Reused connections answer promptly (Nagle + delayed ACK would add ~40 ms each).
            started = time.perf_counter()
            for _ in range(25):
                c.get(ORDERS, params={"page_size": 1})
            assert time.perf_counter() - started < 0.5

        # Keep-alive: two requests travel over one connection.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/v1/assessment/orders?page_size=1", headers=headers)
        first = connection.getresponse()
        assert first.status == 200 and json.loads(first.read())["status"] == "success"
        sock = connection.sock
        connection.request("GET", "/v1/assessment/orders/open?page_size=2", headers=headers)
        second = connection.getresponse()
        assert len(json.loads(second.read())["data"]["results"]) == 2
        assert connection.sock is sock is not None
        connection.close()
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=server.url) as c:
        c.get(ORDERS)


def test_real_socket_latency_overlaps() -> None:
    sim = Simulator(1, 5, faults=Faults(latency=0.2))
    headers = {
        "Authorization": f"Bearer {DEFAULT_API_KEY}",
        "X-Integration-Id": sim.integration_ids[0],
    }
    codes: list[int] = []
    with sim.serve() as server:
        # Clients are built first: building one (its TLS context) is slower than a request.
        clients = [httpx.Client(base_url=server.url, headers=headers, timeout=5) for _ in range(8)]

        def fetch(c: httpx.Client) -> None:
            codes.append(c.get(ORDERS).status_code)

        threads = [threading.Thread(target=fetch, args=(c,)) for c in clients]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        for c in clients:
            c.close()
    assert codes == [200] * 8
    assert 0.2 <= elapsed < 1.0  # 8 sequential requests would take 1.6 s


@pytest.mark.parametrize("path", [ORDERS, OPEN_ORDERS])
def test_kept_renderings_serve_the_same_bytes_and_follow_status_changes(path: str) -> None:
    # One epoch: built a millisecond apart, two simulators' generated times (and cursors) differ.
    epoch = datetime(2026, 12, 1, tzinfo=UTC)
    plain = Simulator(1, 7, seed=41, epoch=epoch)
    kept = Simulator(1, 7, seed=41, keep_rendered=True, epoch=epoch)
    iid = plain.integration_ids[0]
    with make_client(plain, iid) as a, make_client(kept, iid) as b:
        for _ in range(2):  # the second time from what was kept
            assert a.get(path, params={"page_size": 3}).content == (
                b.get(path, params={"page_size": 3}).content
            )
        first = kept.orders(iid, status="OPEN")[0]["id"]
        for sim in (plain, kept):
            sim.set_status(iid, first, "CANCELLED")
        page_a = a.get(ORDERS, params={"statuses": "CANCELLED"}).content
        assert page_a == b.get(ORDERS, params={"statuses": "CANCELLED"}).content
        assert first.encode() in page_a and b'"status":"CANCELLED"' in page_a
        assert first.encode() not in b.get(OPEN_ORDERS).content  # no longer OPEN anywhere
        assert first.encode() not in b.get(ORDERS, params={"statuses": "OPEN"}).content


def test_sim_prints_export_lines_ready_to_paste(tmp_path: Any) -> None:
    # Issue 14, item 12: `dispatcher sim` as a newcomer runs it, on a port the OS picks.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "DISPATCHER_"))}
    command = [sys.executable, "-m", "dispatcher", "sim", "--port", "0", "--integrations", "2"]
    sim = subprocess.Popen(
        [*command, "--orders", "3", "--no-schema-drift"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert sim.stderr is not None
        lines = [sim.stderr.readline() for _ in range(3)]
        assert [line.split("=")[0] for line in lines] == [
            "export KOMBO_BASE_URL",
            "export KOMBO_API_KEY",
            "export KOMBO_INTEGRATION_IDS",
        ]
        # Pasted into a shell, they set what the dispatcher reads; the server already listens.
        shell = subprocess.run(
            ["bash", "-c", "".join(lines) + 'env | grep "^KOMBO_" | sort'],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        values = dict(line.split("=", 1) for line in shell.stdout.splitlines())
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", values["KOMBO_BASE_URL"])
        assert not values["KOMBO_BASE_URL"].endswith(":0/v1")
        first = values["KOMBO_INTEGRATION_IDS"].split(",")[0]
        response = httpx.get(
            values["KOMBO_BASE_URL"] + "/assessment/orders",
            headers={
                "Authorization": f"Bearer {values['KOMBO_API_KEY']}",
                "X-Integration-Id": first,
            },
            timeout=10,
        )
        assert response.status_code == 200
        assert len(response.json()["data"]["results"]) == 3
    finally:
        sim.terminate()
        sim.communicate(timeout=10)  # closes the pipe
