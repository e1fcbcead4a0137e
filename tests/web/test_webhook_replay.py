"""Replayed webhook deliveries are harmless (issue 22, W11).

Given the real `dispatcher web` process on a real Redis, the simulator as Kombo over a real
socket; when a captured signed delivery is sent again after the order was forgotten and
Kombo completed it, or a delivery names an order Kombo cancelled; then nothing is queued,
the answer says ``not_open`` and ``dispatcher show`` shows the replay. When Kombo cannot
answer, the order is kept and dispatched once Kombo confirms it: never lost.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue

from dispatcher.ops.status import take_snapshot
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys, order_ref
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator, SimulatorServer
from dispatcher.web.webhook import WEBHOOK_PATH
from support import dispatcher_env, wait_until
from support.console import TOKEN, logged_in
from support.web import Web, deployed_web
from support.webhook import event_body, signed

pytestmark = pytest.mark.redis

INTEGRATION = "greenhouse:ReplayOne"
# An integration the web process is not configured with, that no order was dispatched from.
OTHER = "lever:ReplayOther"
API_TOKEN = "results-api-token-for-replay-tests-0123456789"


@pytest.fixture(scope="module")
def kombo() -> Iterator[tuple[Simulator, SimulatorServer]]:
    sim = Simulator([INTEGRATION, OTHER], 6, closed=0, seed=22)
    with sim.serve() as server:
        yield sim, server


@pytest.fixture(scope="module")
def web(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    kombo: tuple[Simulator, SimulatorServer],
) -> Iterator[Web]:
    with deployed_web(
        redis_url,
        tmp_path_factory.mktemp("replay"),
        DISPATCHER_CONSOLE_TOKEN=TOKEN,
        DISPATCHER_API_TOKEN=API_TOKEN,
        **_kombo_env(kombo),
    ) as w:
        yield w


def _kombo_env(kombo: tuple[Simulator, SimulatorServer]) -> dict[str, str]:
    return {
        "DISPATCHER_WEBHOOK_CONFIRM": "true",
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_BASE_URL": kombo[1].url,
        "KOMBO_INTEGRATION_IDS": INTEGRATION,
    }


def deliver(web: Web, body: bytes) -> dict[str, Any]:
    answer = httpx.post(web.url + WEBHOOK_PATH, content=body, headers=signed(body), timeout=10)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def cli(redis_url: str, web: Web, kombo: tuple[Simulator, SimulatorServer], *args: str) -> str:
    env = dispatcher_env(
        redis_url,
        DISPATCHER_NAMESPACE=web.namespace,
        DISPATCHER_HANDLERS="log",
        **_kombo_env(kombo),
    )
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_replayed_delivery_of_a_completed_order_provisions_nothing(
    web: Web, redis: Redis, redis_url: str, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    sim, _ = kombo
    queue = Queue(f"{web.namespace}-orders", connection=redis)
    order = sim.orders(INTEGRATION, status="OPEN")[0]
    captured = event_body(order, INTEGRATION, event_id="evt_captured")
    # The first delivery: Kombo confirms the order OPEN, it is queued.
    assert deliver(web, captured) == {"status": "enqueued", "order_id": order["id"]}
    assert queue.count == 1
    # The vendor completes it; an operator forgets it (or pruning does, a month later).
    sim.set_status(INTEGRATION, order["id"], "COMPLETED")
    queue.empty()
    cli(redis_url, web, kombo, "forget", order["id"], "--integration", INTEGRATION, "--yes")
    # The captured delivery, replayed: nothing is queued, and it is on record.
    answer = deliver(web, captured)
    assert answer == {"status": "not_open", "order_id": order["id"], "kombo_status": "COMPLETED"}
    assert queue.count == 0
    assert not redis.hexists(Keys(web.namespace).seen(INTEGRATION), order["id"])
    shown = cli(redis_url, web, kombo, "show", order["id"], "--integration", INTEGRATION)
    assert "webhook_not_open" in shown and 'kombo_status="COMPLETED"' in shown, shown
    assert "Kombo lists the order as COMPLETED, not OPEN: not dispatched" in web.log.read_text()


def test_a_delivery_of_an_order_kombo_cancelled_is_not_dispatched(
    web: Web, redis: Redis, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    sim, _ = kombo
    queue = Queue(f"{web.namespace}-orders", connection=redis)
    before = queue.count
    order = sim.orders(INTEGRATION, status="OPEN")[1]
    sim.set_status(INTEGRATION, order["id"], "CANCELLED")
    # The delivery still says OPEN (it was captured while it was).
    answer = deliver(web, event_body(order, INTEGRATION, event_id="evt_old"))
    assert answer["status"] == "not_open" and answer["kombo_status"] == "CANCELLED"
    assert queue.count == before


def test_kombo_down_during_confirmation_keeps_the_order_until_it_is_confirmed(
    web: Web, redis: Redis, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    sim, _ = kombo
    keys = Keys(web.namespace)
    queue = Queue(f"{web.namespace}-orders", connection=redis)
    before = queue.count
    order = sim.orders(INTEGRATION, status="OPEN")[2]
    sim.fail_next("server_error", 1, integration_id=INTEGRATION)
    answer = deliver(web, event_body(order, INTEGRATION, event_id="evt_outage"))
    assert answer == {"status": "unconfirmed", "order_id": order["id"]}
    assert queue.count == before  # not dispatched unconfirmed...
    assert redis.hlen(keys.webhook_unconfirmed) == 1  # ... but kept
    # Kombo answers again: the kept order is confirmed and dispatched, once.
    wait_until(lambda: redis.hexists(keys.seen(INTEGRATION), order["id"]))
    wait_until(lambda: redis.hlen(keys.webhook_unconfirmed) == 0)
    assert queue.count == before + 1
    assert "kept order confirmed: enqueued" in web.log.read_text()


def test_orders_of_concurrent_deliveries_are_confirmed_in_shared_requests(
    web: Web, redis: Redis, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    sim, _ = kombo
    orders = [sim.add_order(INTEGRATION) for _ in range(40)]
    bodies = [event_body(o, INTEGRATION, event_id=f"evt_b{n}") for n, o in enumerate(orders)]
    requests_before = sim.request_count

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=20) as client:
            answers = await asyncio.gather(
                *(client.post(WEBHOOK_PATH, content=b, headers=signed(b)) for b in bodies)
            )
        return [a.status_code for a in answers]

    assert asyncio.run(send_all()) == [200] * len(bodies)
    asked = sim.request_count - requests_before
    assert asked < len(bodies), f"{asked} Kombo requests for {len(bodies)} deliveries"
    seen = redis.hmget(Keys(web.namespace).seen(INTEGRATION), [o["id"] for o in orders])
    assert all(value is not None for value in seen)


def test_the_receiver_without_an_api_key_refuses_to_start_in_one_line(redis_url: str) -> None:
    env = dispatcher_env(redis_url, KOMBO_WEBHOOK_SECRET="whsec_replay_test")
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "web", "--port", "0"], env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "KOMBO_API_KEY: not set (the webhook receiver confirms each order OPEN" in result.stderr
    assert "DISPATCHER_WEBHOOK_CONFIRM=false" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_api_and_the_console_show_the_replay_as_show_does(
    web: Web, redis: Redis, redis_url: str, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    """Given an order Kombo completed and the dispatcher never dispatched (known only by its
    timeline); when its captured delivery comes; then `show`, `GET /orders/{i}/{o}` and the
    console's order page tell the same `webhook_not_open` event with Kombo's status."""
    sim, _ = kombo
    order = sim.orders(INTEGRATION, status="OPEN")[3]
    sim.set_status(INTEGRATION, order["id"], "COMPLETED")
    answer = deliver(web, event_body(order, INTEGRATION, event_id="evt_<b>seen</b>"))
    assert answer["status"] == "not_open"
    assert not redis.hexists(Keys(web.namespace).seen(INTEGRATION), order["id"])

    shown = json.loads(
        cli(redis_url, web, kombo, "show", order["id"], "--integration", INTEGRATION, "--json")
    )["timeline"]
    api = httpx.get(
        f"{web.url}/orders/{INTEGRATION}/{order['id']}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    )
    assert api.status_code == 200, api.text
    assert api.json()["timeline"] == shown
    assert [e["event"] for e in shown] == ["webhook_not_open"], shown
    assert shown[0]["kombo_status"] == "COMPLETED"
    # The console's order page: the event, Kombo's status, and show's details word for word.
    text = cli(redis_url, web, kombo, "show", order["id"], "--integration", INTEGRATION)
    details = text.split("webhook_not_open", 1)[1].splitlines()[0].strip()
    with logged_in(web.url) as client:
        page = client.get("/console/order", params={"id": order["id"]})
    assert page.status_code == 200, page.text
    assert 'id="not-found"' not in page.text
    items = re.findall(
        r"<li><time>.*?</time> <strong>(.*?)</strong>(?: <span class=\"detail\">(.*?)</span>)?</li>",
        page.text,
    )
    assert len(items) == 1, page.text
    what, detail = (html.unescape(part) for part in items[0])
    assert what == "webhook delivery not dispatched: Kombo lists it as COMPLETED", what
    assert detail == details, (detail, details)
    assert "<b>seen</b>" not in page.text  # the event id is Kombo's (attacker's) text


def test_an_order_known_only_by_its_timeline_in_an_otherwise_unknown_integration_has_a_page(
    web: Web, redis: Redis, redis_url: str, kombo: tuple[Simulator, SimulatorServer]
) -> None:
    """Given an integration nothing was dispatched from, swept or configured; when a delivery
    of one of its orders Kombo cancelled comes; then the console's order page, looked up by
    the order id alone, tells its timeline, and so does `show` without --integration."""
    sim, _ = kombo
    order = sim.orders(OTHER, status="OPEN")[0]
    sim.set_status(OTHER, order["id"], "CANCELLED")
    assert deliver(web, event_body(order, OTHER, event_id="evt_other"))["status"] == "not_open"
    assert not redis.sismember(Keys(web.namespace).seen_integrations, OTHER)
    with logged_in(web.url) as client:
        page = client.get("/console/order", params={"id": order["id"]})
    assert page.status_code == 200, page.text
    assert 'id="not-found"' not in page.text, page.text
    assert f'data-integration="{OTHER}"' in page.text
    assert "Kombo lists it as CANCELLED" in html.unescape(page.text)
    shown = cli(redis_url, web, kombo, "show", order["id"])
    assert "webhook_not_open" in shown and 'kombo_status="CANCELLED"' in shown, shown


# -- Kombo down: orders wait, and say so ----------------------------------------------------


@pytest.fixture
def down(
    redis: Redis, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Web, tuple[Simulator, SimulatorServer], list[dict[str, Any]]]]:
    """A `dispatcher web` whose Kombo answers 500 to every confirmation, with two webhook
    orders delivered and kept."""
    sim = Simulator([INTEGRATION], 4, closed=0, seed=23)
    with sim.serve() as server:
        kombo = (sim, server)
        sim.fail_next("server_error", 10**6, integration_id=INTEGRATION)
        with deployed_web(
            redis_url,
            tmp_path,
            DISPATCHER_CONSOLE_TOKEN=TOKEN,
            **_kombo_env(kombo),
        ) as web:
            orders = sim.orders(INTEGRATION, status="OPEN")[:2]
            for n, order in enumerate(orders):
                body = event_body(order, INTEGRATION, event_id=f"evt_down{n}")
                assert deliver(web, body)["status"] == "unconfirmed"
            yield web, kombo, orders


def test_orders_waiting_for_kombos_confirmation_show_in_status_metrics_and_console(
    down: tuple[Web, tuple[Simulator, SimulatorServer], list[dict[str, Any]]],
    redis: Redis,
    redis_url: str,
) -> None:
    web, kombo, _ = down
    data = json.loads(cli(redis_url, web, kombo, "status", "--json"))
    waiting = data["webhook_unconfirmed"]
    assert waiting["count"] == 2, waiting
    assert 0 <= waiting["oldest_age"] < 600, waiting
    text = cli(redis_url, web, kombo, "status")
    assert "WEBHOOK  2 orders waiting for Kombo's confirmation, oldest " in text, text
    assert "waiting for Kombo to confirm" not in text  # young: not a problem yet
    metrics = httpx.get(f"{web.url}/metrics", timeout=10).text
    assert re.search(r"^dispatcher_webhook_unconfirmed 2\.0$", metrics, re.M), metrics
    assert re.search(r"^dispatcher_webhook_unconfirmed_oldest_age_seconds \d", metrics, re.M)
    with logged_in(web.url) as client:
        overview = client.get("/").text
    assert re.search(r'id="webhook-unconfirmed">2<', overview), overview
    # The same records read ten minutes on: the oldest has waited too long, a problem.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, REDIS_URL=redis_url, DISPATCHER_NAMESPACE=web.namespace
    )
    later = take_snapshot(redis, settings, now=time.time() + 600)
    assert any(
        p.startswith("2 webhook orders waiting for Kombo to confirm them OPEN, the oldest for 10m")
        for p in later.problems
    ), later.problems


def test_forget_removes_the_orders_entry_waiting_for_kombos_confirmation(
    down: tuple[Web, tuple[Simulator, SimulatorServer], list[dict[str, Any]]],
    redis: Redis,
    redis_url: str,
) -> None:
    web, kombo, orders = down
    keys = Keys(web.namespace)
    ref = order_ref(INTEGRATION, orders[0]["id"])
    assert redis.hexists(keys.webhook_unconfirmed, ref)
    said = cli(redis_url, web, kombo, "forget", orders[0]["id"], "--integration", INTEGRATION,
               "--yes")  # fmt: skip
    assert not redis.hexists(keys.webhook_unconfirmed, ref)  # else `web` would dispatch it
    assert redis.zscore(keys.webhook_unconfirmed_since, ref) is None
    assert "its webhook delivery waiting for Kombo's confirmation" in said, said
    # The other order still waits.
    assert redis.hexists(keys.webhook_unconfirmed, order_ref(INTEGRATION, orders[1]["id"]))
