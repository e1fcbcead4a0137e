from __future__ import annotations

import json
import threading
from typing import Any

import fakeredis
import httpx
import pytest
from rq import Queue

from dispatcher.kombo import pages
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.poller import Poller
from dispatcher.store.ledger import Ledger
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from support import queued_jobs


def build(
    sim: Simulator,
    redis: Any = None,
    *,
    transport: httpx.BaseTransport | None = None,
    **poller_kw: Any,
) -> Poller:
    redis = redis if redis is not None else fakeredis.FakeRedis()
    client = KomboClient(
        DEFAULT_API_KEY,
        sim.base_url,
        transport=transport or sim.transport(),
        retry_budget=0,
        sleep=lambda s: None,
    )
    ledger = Ledger(redis, Queue("dispatcher-orders", connection=redis), "dispatcher")
    return Poller(client, ledger, sim.integration_ids, **poller_kw)


def open_ids(sim: Simulator) -> set[tuple[str, str]]:
    return {(i, o["id"]) for i in sim.integration_ids for o in sim.orders(i, status="OPEN")}


def queued(poller: Poller) -> set[tuple[str, str]]:
    jobs = queued_jobs(poller.ledger.redis, poller.ledger.queue.name)
    pairs = [(job.meta["integration_id"], job.meta["order_id"]) for job in jobs]
    assert len(pairs) == len(set(pairs)), "an order was enqueued twice"
    return set(pairs)


def test_a_sweep_enqueues_every_open_order_once_and_nothing_else() -> None:
    sim = Simulator(3, 23, closed=5, seed=1)
    poller = build(sim, page_size=10)
    report = poller.sweep()
    assert report.integrations == 3
    assert report.orders_seen == report.orders_new == 69
    assert report.pages == 9
    assert report.errors == {}
    assert queued(poller) == open_ids(sim)

    again = poller.sweep()
    assert (again.orders_seen, again.orders_new) == (69, 0)
    assert len(queued_jobs(poller.ledger.redis)) == 69


def test_new_orders_between_sweeps_are_picked_up() -> None:
    sim = Simulator(2, 5, seed=2)
    poller = build(sim)
    poller.sweep()
    added = sim.add_order(sim.integration_ids[1])
    report = poller.sweep()
    assert report.orders_new == 1
    assert (sim.integration_ids[1], added["id"]) in queued(poller)


def test_the_deprecated_open_endpoint_is_swept_the_same_way() -> None:
    sim = Simulator(2, 12, seed=3)
    poller = build(sim, endpoint="open", page_size=5)
    assert poller.sweep().orders_new == 24
    assert sim.requests_by_path["/v1/assessment/orders/open"] == 6
    assert queued(poller) == open_ids(sim)


def test_one_failing_integration_does_not_stop_the_others() -> None:
    sim = Simulator(3, 4, seed=4)
    broken = sim.integration_ids[1]
    sim.fail_next("server_error", 5, integration_id=broken)
    poller = build(sim)
    report = poller.sweep()
    assert set(report.errors) == {broken}
    assert "PLATFORM.UNKNOWN_ERROR" in report.errors[broken]
    assert report.orders_new == 8
    record = poller.redis.hgetall(poller.ledger.keys.sweep(broken))
    assert record[b"last_error_code"] == b"PLATFORM.UNKNOWN_ERROR"
    assert record[b"error_count"] == b"1"
    assert b"last_sweep_at" not in record
    healthy = poller.redis.hgetall(poller.ledger.keys.sweep(sim.integration_ids[0]))
    assert healthy[b"orders_seen"] == b"4" and b"last_error" not in healthy


def test_an_invalid_order_is_reported_and_the_rest_of_its_page_dispatched() -> None:
    sim = Simulator(1, 9, seed=5)
    integration = sim.integration_ids[0]

    def corrupt_second_page(request: httpx.Request) -> httpx.Response:
        response = sim.handle(request)
        if "cursor" not in request.url.params:
            return response
        body = json.loads(response.content)
        if body["data"]["results"]:
            body["data"]["results"][1]["candidate"]["email"] = 42
        return httpx.Response(200, json=body)

    poller = build(sim, transport=httpx.MockTransport(corrupt_second_page), page_size=3)
    report = poller.sweep()
    open_orders = sim.orders(integration, status="OPEN")
    bad_orders = [open_orders[4]["id"], open_orders[7]["id"]]  # second of pages 2 and 3
    # Issue 12: an invalid order is that order's problem, not its page's (which used to
    # fail, and with it every later page of the integration, on every sweep).
    assert report.errors == {}
    [result] = report.results
    assert result.invalid_orders == [
        f"order {bad}: field candidate.email: Input should be a valid string" for bad in bad_orders
    ]
    assert len(queued(poller)) == 7
    for bad in bad_orders:
        assert poller.redis.hget(poller.ledger.keys.seen(integration), bad) is None


def test_a_stop_request_finishes_the_current_page_and_returns() -> None:
    sim = Simulator(1, 20, seed=6)
    stop = threading.Event()
    poller = build(sim, page_size=5, stop=stop)
    original = poller.ledger.dispatch

    def dispatch_then_stop(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        stop.set()  # as if SIGTERM arrived while this page was being dispatched
        return result

    poller.ledger.dispatch = dispatch_then_stop  # type: ignore[method-assign]
    [result] = poller.sweep().results
    assert result.interrupted
    assert result.pages == 1 and result.orders_new == 5
    assert len(queued_jobs(poller.ledger.redis)) == 5


@pytest.mark.slow
@pytest.mark.parametrize("rounds", [15])
def test_concurrent_pollers_on_one_integration_enqueue_each_order_once(
    redis_url: str, rounds: int
) -> None:
    from redis import Redis

    for _ in range(rounds):
        Redis.from_url(redis_url).flushdb()
        sim = Simulator(2, 60, seed=_)
        pollers = [build(sim, Redis.from_url(redis_url), page_size=7) for _ in range(3)]
        threads = [threading.Thread(target=p.sweep) for p in pollers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert queued(pollers[0]) == open_ids(sim)


def test_a_re_sweep_reads_only_ids_and_decodes_a_page_only_for_new_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = Simulator(1, 12, seed=8)
    integration = sim.integration_ids[0]
    decoded: list[int] = []
    real_from_json = pages.from_json

    def counting_from_json(content: bytes) -> Any:
        decoded.append(len(content))
        return real_from_json(content)

    monkeypatch.setattr(pages, "from_json", counting_from_json)
    seen_id = sim.orders(integration, status="OPEN")[0]["id"]
    corrupt = False

    def transport(request: httpx.Request) -> httpx.Response:
        response = sim.handle(request)
        if not corrupt:
            return response
        body = json.loads(response.content)
        for order in body["data"]["results"]:
            if order["id"] == seen_id:
                order["candidate"]["email"] = 42  # already dispatched: never looked at again
        return httpx.Response(200, json=body)

    poller = build(sim, transport=httpx.MockTransport(transport), page_size=5)
    assert poller.sweep().orders_new == 12
    assert len(decoded) == 3  # every page had new orders

    decoded.clear()
    corrupt = True
    again = poller.sweep()
    assert (again.orders_seen, again.orders_new, again.errors) == (12, 0, {})
    assert decoded == []  # ids only: no page decoded

    sim.add_order(integration)
    third = poller.sweep()
    assert (third.orders_new, third.errors) == (1, {})
    assert len(decoded) == 1  # only the last page, which holds the new order
