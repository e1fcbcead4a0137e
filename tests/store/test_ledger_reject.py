"""Ledger.reject: a rejected order is a seen order, so no path ever dispatches it."""

from __future__ import annotations

import json
import threading

from redis import Redis
from rq import Queue

from dispatcher.kombo.models import Order
from dispatcher.store.ledger import Ledger
from support import order_payload

INTEGRATION = "lever:abc"


def make_ledger(redis: Redis) -> Ledger:
    return Ledger(redis, Queue("dispatcher-orders", connection=redis), "ns", clock=lambda: 1700.0)


def order(order_id: str) -> Order:
    return Order.model_validate(order_payload(order_id))


def test_a_rejected_order_is_remembered_and_never_dispatched(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    assert ledger.reject(INTEGRATION, "A", "Package x is not offered.") is True
    assert any_redis.hget(ledger.keys.seen(INTEGRATION), "A") == b"rejected:1700"
    assert json.loads(any_redis.hget(ledger.keys.rejected(INTEGRATION), "A") or b"") == {
        "reason": "Package x is not offered.",
        "at": 1700,
    }
    assert any_redis.hget(ledger.keys.stats, "orders_rejected") == b"1"
    assert any_redis.sismember(ledger.keys.seen_integrations, INTEGRATION)
    assert ledger.rejection(INTEGRATION, "A") == "Package x is not offered."
    assert ledger.dispatch(INTEGRATION, [order("A"), order("B")]).enqueued == ["B"]
    assert ledger.queue.count == 1


def test_an_order_seen_before_is_not_rejected(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    ledger.dispatch(INTEGRATION, [order("A")])
    ledger.reject(INTEGRATION, "B", "first reason")
    assert ledger.reject(INTEGRATION, "A", "too late") is False
    assert ledger.reject(INTEGRATION, "B", "second reason") is False
    assert ledger.rejection(INTEGRATION, "A") is None
    assert ledger.rejection(INTEGRATION, "B") == "first reason"
    assert any_redis.hget(ledger.keys.stats, "orders_rejected") == b"1"
    assert any_redis.hget(ledger.keys.seen(INTEGRATION), "A") == b"1700"


def test_the_seen_mark_decides_not_a_leftover_reason(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    ledger.reject(INTEGRATION, "A", "no")
    any_redis.hdel(ledger.keys.seen(INTEGRATION), "A")  # the order was forgotten
    assert ledger.rejection(INTEGRATION, "A") is None
    assert ledger.dispatch(INTEGRATION, [order("A")]).enqueued == ["A"]
    assert ledger.rejection(INTEGRATION, "A") is None


def _race(ledger: Ledger, order_id: str) -> list[str]:
    """Four rejections and four dispatches of one order, released at once."""
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def reject() -> None:
        barrier.wait()
        if ledger.reject(INTEGRATION, order_id, "no"):
            outcomes.append("rejected")

    def dispatch() -> None:
        barrier.wait()
        if ledger.dispatch(INTEGRATION, [order(order_id)]).enqueued:
            outcomes.append("enqueued")

    threads = [threading.Thread(target=reject if n % 2 else dispatch) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_reject_and_dispatch_racing_on_one_order_do_one_thing(redis: Redis) -> None:
    ledger = make_ledger(redis)
    for round_ in range(10):
        order_id = f"R{round_}"
        outcomes = _race(ledger, order_id)
        assert len(outcomes) == 1, outcomes
        queued = [job.meta["order_id"] for job in ledger.queue.get_jobs()]
        assert queued.count(order_id) == (1 if outcomes == ["enqueued"] else 0)
