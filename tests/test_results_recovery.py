"""Results survive a results worker SIGKILLed mid-write and a Redis restart (AOF), and
submits racing on one order leave one pending write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from test_results_api import Fleet, wait_for

from _support import RedisServer, dispatcher_env
from dispatcher.settings import load_settings
from dispatcher.store.outbox import Outbox
from dispatcher.testing.simulator import DEFAULT_API_KEY, Faults, Simulator, SimulatorServer
from dispatcher.worker.worker import RECOVERY_BOUND

URL = "https://vendor.example/r/1"
INTEGRATION = "greenhouse:AAAA"


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer(appendonly=True)
    except RuntimeError:
        pytest.skip("redis-server is not installed")
    server.start()
    yield server
    server.cleanup()


def test_submits_racing_on_one_order_leave_one_pending_write(redis: Redis, namespace: str) -> None:
    outbox = Outbox(redis, namespace, f"{namespace}-results")
    barrier = threading.Barrier(12)

    def submit(n: int) -> None:
        barrier.wait()
        outbox.submit(INTEGRATION, "o1", {"status": "COMPLETED", "result_url": f"{URL}/{n % 3}"})

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redis.llen(outbox.queue.key) == 1
    assert outbox.counts() == {"pending": 1, "written": 0, "failed": 0}


@pytest.mark.slow
def test_a_results_worker_killed_mid_write_loses_nothing_and_writes_once(
    redis_url: str, namespace: str
) -> None:
    sim = Simulator([INTEGRATION], orders=3, closed=0, faults=Faults(latency=3.0))
    order = str(sim.orders(INTEGRATION, "OPEN")[0]["id"])
    settings = load_settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace)
    redis = Redis.from_url(redis_url)
    outbox = Outbox.from_settings(redis, settings)
    outbox.submit(INTEGRATION, order, {"status": "COMPLETED", "result_url": URL})
    with SimulatorServer(sim, "127.0.0.1", 0) as kombo:
        env = dispatcher_env(
            redis_url,
            DISPATCHER_NAMESPACE=namespace,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=kombo.url,
        )
        fleet = Fleet(env)
        try:
            fleet.start()
            wait_for(lambda: sim.writes_in_flight[INTEGRATION] > 0, 30, "the write to start")
            fleet.stop()  # SIGKILL, the write in flight (Kombo applies it, nobody hears)
            killed_at = time.monotonic()
            sim.faults.latency = 0.0
            fleet.start()  # the survivor's maintenance finds the abandoned job
            wait_for(
                lambda: outbox.counts()["pending"] == 0,
                RECOVERY_BOUND + 30,
                "the abandoned write to be recovered",
            )
            recovered_in = time.monotonic() - killed_at
        finally:
            fleet.stop()
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written", record
    assert record.lost_answer  # the killed attempt landed; the recovered one read it back
    assert sim.applied_writes[(INTEGRATION, order)] == 1
    assert recovered_in < RECOVERY_BOUND + 15
    redis.close()


def test_a_redis_restart_loses_no_submitted_result(aof_redis: RedisServer, namespace: str) -> None:
    sim = Simulator([INTEGRATION], orders=20, closed=0)
    orders = [str(o["id"]) for o in sim.orders(INTEGRATION, "OPEN")]
    settings = load_settings(REDIS_URL=aof_redis.url, DISPATCHER_NAMESPACE=namespace)
    redis = Redis.from_url(aof_redis.url)
    outbox = Outbox.from_settings(redis, settings)
    for order in orders:
        outbox.submit(INTEGRATION, order, {"status": "COMPLETED", "result_url": URL})
    redis.close()
    aof_redis.stop(kill=True)  # no clean shutdown: only the AOF is left
    aof_redis.start()
    redis = Redis.from_url(aof_redis.url)
    outbox = Outbox.from_settings(redis, settings)
    assert outbox.counts()["pending"] == len(orders)
    with SimulatorServer(sim, "127.0.0.1", 0) as kombo:
        env = dispatcher_env(
            aof_redis.url,
            DISPATCHER_NAMESPACE=namespace,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=kombo.url,
        )
        fleet = Fleet(env)
        try:
            fleet.start()
            wait_for(lambda: outbox.counts()["pending"] == 0, 60, "the results to be written")
        finally:
            fleet.stop()
    assert outbox.counts() == {"pending": 0, "written": len(orders), "failed": 0}
    assert all(sim.applied_writes[(INTEGRATION, o)] == 1 for o in orders)
    redis.close()
