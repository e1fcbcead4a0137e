"""Kombo request telemetry: observed by the client, aggregated, saved with each sweep."""

from __future__ import annotations

import pytest
from redis import Redis

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError
from dispatcher.poller.telemetry import (
    LATENCY_BUCKETS,
    RequestStats,
    normalise_endpoint,
    read_request_series,
)
from dispatcher.store.keys import Keys
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from support.ops import settings_for, sweep


def test_ids_in_paths_fold_into_one_label() -> None:
    assert normalise_endpoint("GET /assessment/orders") == "GET /assessment/orders"
    assert (
        normalise_endpoint("PUT /assessment/orders/B7s9dXkLq2VvYpT4nR8mWcZa/result?x=1")
        == "PUT /assessment/orders/{id}/result"
    )
    assert normalise_endpoint("GET /assessment/orders/open") == "GET /assessment/orders/open"


def test_stats_aggregate_drain_and_restore() -> None:
    stats = RequestStats()
    stats.observe("GET /assessment/orders", 200, 0.07)
    stats.observe("GET /assessment/orders", 200, 0.3)
    stats.observe("GET /assessment/orders", None, 45.0)  # slower than every bucket
    counts, seconds = stats.drain()
    assert counts == {
        "GET /assessment/orders|200|count": 2,
        "GET /assessment/orders|200|le|0.1": 1,
        "GET /assessment/orders|200|le|0.5": 1,
        "GET /assessment/orders|network|count": 1,
    }
    assert seconds == pytest.approx(
        {"GET /assessment/orders|200|sum": 0.37, "GET /assessment/orders|network|sum": 45.0}
    )
    assert stats.drain() == ({}, {})
    stats.restore(counts, seconds)
    assert stats.drain() == (counts, seconds)

    (ok, network) = read_request_series(
        {k.encode(): str(v).encode() for k, v in {**counts, **seconds}.items()}
    )
    assert (ok.status, ok.count, ok.seconds_sum) == ("200", 2, pytest.approx(0.37))
    assert dict(zip(LATENCY_BUCKETS, ok.buckets, strict=True)) == {
        0.05: 0, 0.1: 1, 0.25: 1, 0.5: 2, 1.0: 2, 2.5: 2, 5.0: 2, 10.0: 2, 30.0: 2
    }  # fmt: skip
    assert (network.status, network.count, network.buckets[-1]) == ("network", 1, 0)


def test_the_client_reports_every_attempt_with_its_status() -> None:
    sim = Simulator(["lever:Telemetry"], 3, seed=4)
    sim.fail_next("server_error", 2)
    seen: list[tuple[str, int | None, float]] = []
    with KomboClient(
        DEFAULT_API_KEY,
        sim.base_url,
        transport=sim.transport(),
        sleep=lambda _: None,
        observer=lambda *call: seen.append(call),
    ) as client:
        client.get_orders("lever:Telemetry", statuses=["OPEN"])
        with pytest.raises(KomboError):
            client.get_orders("lever:Unknown")
    assert [(endpoint, status) for endpoint, status, _ in seen] == [
        ("GET /assessment/orders", 500),
        ("GET /assessment/orders", 500),
        ("GET /assessment/orders", 200),
        ("GET /assessment/orders", 404),
    ]
    assert all(seconds >= 0 for _, _, seconds in seen)


def test_network_errors_are_reported_without_a_status() -> None:
    seen: list[tuple[str, int | None, float]] = []
    with (
        KomboClient(
            DEFAULT_API_KEY,
            "http://127.0.0.1:9/v1",  # discard port: nothing listens
            retry_budget=0,
            observer=lambda *call: seen.append(call),
        ) as client,
        pytest.raises(KomboError),
    ):
        client.get_orders("lever:x")
    assert [(e, s) for e, s, _ in seen] == [("GET /assessment/orders", None)]


@pytest.mark.redis
def test_the_poller_saves_request_counts_with_each_sweep(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator(["greenhouse:T1", "lever:T2"], 9, seed=6)
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim, page_size=4)  # 3 pages each
    sweep(redis, settings, sim, page_size=4)
    (series,) = read_request_series(redis.hgetall(Keys(namespace).kombo_requests))
    assert (series.endpoint, series.status, series.count) == ("GET /assessment/orders", "200", 12)
    assert series.count == sim.request_count
    assert series.buckets[-1] == 12 and series.seconds_sum > 0
