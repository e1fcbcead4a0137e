"""The per-minute counters behind the console's chart: counted where the work happens, with
no round trip of their own, read back in one, and never fatal."""

from __future__ import annotations

import time

import pytest
from redis import Redis
from rq import Queue

from dispatcher.kombo.models import Order
from dispatcher.store import throughput
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import Ledger
from dispatcher.store.result_record import record_result
from dispatcher.testing.sim import Simulator
from support import order_payload
from support.ops import settings_for, sweep

pytestmark = pytest.mark.redis

# Counters expire by the wall clock (EXPIREAT): a test clock must be near it. 20 s into a
# minute, so that NOW + 60 is the next minute.
NOW = int(time.time()) // 60 * 60 - 40


def ledger(redis: Redis, namespace: str, now: float = NOW) -> Ledger:
    return Ledger(
        redis, Queue(f"{namespace}-orders", connection=redis), namespace, clock=lambda: now
    )


def orders(*ids: str) -> list[Order]:
    return [Order.model_validate(order_payload(i)) for i in ids]


def test_dispatch_counts_new_orders_in_their_minute(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    ledger(redis, namespace).dispatch("greenhouse:A", orders("O1", "O2", "O3"))
    ledger(redis, namespace).dispatch("greenhouse:A", orders("O1", "O4"))  # O1 seen already
    ledger(redis, namespace, NOW + 60).dispatch("greenhouse:B", orders("O1"))

    series = throughput.read_series(redis, keys, NOW + 60)
    assert series.counts["dispatched"][-2:] == (4, 1)
    assert series.total("dispatched") == 5
    key = keys.throughput(NOW // 3600)
    assert redis.hget(key, f"dispatched:{NOW // 60}") == b"4"
    # Expires 25 hours after its hour began: the last 24 hours are always whole.
    assert redis.expiretime(key) == throughput.expire_at(NOW) == (NOW // 3600 + 25) * 3600


def test_results_count_once_per_finished_order(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    for _ in range(2):  # written twice: one finished order
        record_result(redis, keys, "greenhouse:A", "O1", "COMPLETED", clock=lambda: NOW)
    record_result(redis, keys, "greenhouse:A", "O2", "CANCELLED", clock=lambda: NOW)
    assert throughput.read_series(redis, keys, NOW).counts["results"][-1] == 2


def test_a_sweep_counts_the_orders_it_found(redis: Redis, redis_url: str, namespace: str) -> None:
    sim = Simulator(["greenhouse:Sweep1", "lever:Sweep2"], 6, seed=3)
    settings = settings_for(redis_url, sim, namespace)
    report = sweep(redis, settings, sim, page_size=4)
    series = throughput.read_series(redis, Keys(namespace), time.time())
    assert series.total("found") == report.orders_seen == 12
    assert series.total("dispatched") == 12


def test_a_counter_key_of_another_type_is_skipped_not_fatal(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    redis.set(keys.throughput(NOW // 3600), "junk")
    result = ledger(redis, namespace).dispatch("greenhouse:A", orders("O1"))
    assert result.enqueued == ["O1"]
    record_result(redis, keys, "greenhouse:A", "O1", "COMPLETED", clock=lambda: NOW)
    assert redis.hget(keys.results("greenhouse:A"), "O1") is not None
    series = throughput.read_series(redis, keys, NOW)
    assert series.refused == (keys.throughput(NOW // 3600),)
    assert series.total("dispatched") == 0


def test_the_window_is_24_hours_of_minutes_in_one_round_trip(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    # Now, not NOW (the module's import time): the hour hash of 24 h ago expires in real
    # time about a minute after NOW, and a loaded run reaches this test minutes after import.
    now = int(time.time()) // 60 * 60 - 40
    old = now - 24 * 3600  # one minute too old
    ledger(redis, namespace, old).dispatch("greenhouse:A", orders("OLD"))
    ledger(redis, namespace, old + 60).dispatch("greenhouse:A", orders("FIRST"))
    series = throughput.read_series(redis, keys, now)
    assert len(series.counts["dispatched"]) == 24 * 60
    assert series.first_minute == (old + 60) // 60
    assert series.counts["dispatched"][0] == 1 and series.total("dispatched") == 1
