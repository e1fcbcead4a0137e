"""Results survive a results worker SIGKILLed mid-write and a Redis restart (AOF), and
submits racing on one order leave one pending write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from dispatcher.settings import Settings, load_settings
from dispatcher.store.keys import Keys
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator, SimulatorServer
from dispatcher.web.app import create_app
from dispatcher.worker.base import RECOVERY_BOUND
from dispatcher.worker.results import READ_BACK_STATUS_ONLY
from support import RedisServer, dispatcher_env, slow_beyond, wait_until
from support.results import TOKEN, Fleet, auth
from support.webhook import ReceiverServer

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
            wait_until(lambda: sim.writes_in_flight[INTEGRATION] > 0, 30, "the write to start")
            fleet.stop()  # SIGKILL, the write in flight (Kombo applies it, nobody hears)
            killed_at = time.monotonic()
            sim.faults.latency = 0.0
            fleet.start()  # the survivor's maintenance finds the abandoned job
            wait_until(
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
    assert record.body == sim.results[(INTEGRATION, order)]  # the record matches Kombo
    assert record.attempts == 2  # the killed attempt and the recovered one, both counted
    # Kombo shows the status only: the record says so rather than claim which body landed.
    assert record.read_back == READ_BACK_STATUS_ONLY
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
            wait_until(lambda: outbox.counts()["pending"] == 0, 60, "the results to be written")
        finally:
            fleet.stop()
    assert outbox.counts() == {"pending": 0, "written": len(orders), "failed": 0}
    assert all(sim.applied_writes[(INTEGRATION, o)] == 1 for o in orders)
    redis.close()


# -- one truth: bodies racing a write in flight ---------------------------------------------


def _mark_dispatched(redis: Redis, namespace: str, integration: str, order: str) -> None:
    # What the ledger writes when it dispatches an order (the results API wants it).
    redis.hset(Keys(namespace).seen(integration), order, str(int(time.time())))


def _truth_rig(
    redis_url: str, namespace: str, latency: float, sleep: Callable[[float], Any] = time.sleep
) -> tuple[Simulator, str, Settings, Redis, Outbox]:
    sim = Simulator([INTEGRATION], orders=3, closed=0, faults=Faults(latency=latency), sleep=sleep)
    order = str(sim.orders(INTEGRATION, "OPEN")[0]["id"])
    settings = load_settings(
        REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace, DISPATCHER_API_TOKEN=TOKEN
    )
    redis = Redis.from_url(redis_url)
    _mark_dispatched(redis, namespace, INTEGRATION, order)
    return sim, order, settings, redis, Outbox.from_settings(redis, settings)


def _assert_record_matches_kombo(outbox: Outbox, sim: Simulator, order: str) -> dict[str, Any]:
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written", record
    held = sim.results[(INTEGRATION, order)]
    assert record.body == held, (record.body, held)
    assert record.attempts >= 1
    assert outbox.counts()["pending"] == 0
    return held


def _result_put(http: httpx.Client, order: str, payload: dict[str, Any]) -> httpx.Response:
    return http.put(f"/orders/{INTEGRATION}/{order}/result", json=payload)


@pytest.mark.parametrize("status", slow_beyond(["COMPLETED", "OPEN"], keep=1))
def test_50_concurrent_puts_of_different_bodies_leave_one_truth(
    redis_url: str, namespace: str, status: str
) -> None:
    """Given a results worker whose first PUT Kombo holds in flight (a gate, not a guess at
    timing), when 50 clients PUT 50 different bodies for the order at once, then: final
    bodies are refused (409, the one on its way is what Kombo gets); partial ones wait their
    turn and the last one is written after the first. Nothing stays pending, the outbox
    holds the body Kombo holds, and a later PUT is written or refused, never left behind."""
    gate = threading.Event()  # Kombo's "latency": the first PUT stays in flight until set
    sim, order, settings, redis, outbox = _truth_rig(
        redis_url, namespace, 0.01, sleep=lambda seconds: gate.wait(60)
    )
    with SimulatorServer(sim, "127.0.0.1", 0) as kombo:
        env = dispatcher_env(
            redis_url, DISPATCHER_NAMESPACE=namespace, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=kombo.url, DISPATCHER_LOG_LEVEL="WARNING",
        )  # fmt: skip
        fleet = Fleet(env)
        answers: list[httpx.Response] = []
        try:
            fleet.start()
            with ReceiverServer(create_app(settings, redis)) as web:
                first = {"status": status, "result_url": f"{URL}/first"}
                with httpx.Client(base_url=web.url, headers=auth(), timeout=30) as http:
                    assert _result_put(http, order, first).status_code == 202
                wait_until(lambda: sim.writes_in_flight[INTEGRATION] > 0, 30, "the write")
                barrier = threading.Barrier(50)

                def client(n: int) -> None:
                    with httpx.Client(base_url=web.url, headers=auth(), timeout=30) as http:
                        barrier.wait()
                        payload = {"status": status, "result_url": f"{URL}/{n}"}
                        answers.append(_result_put(http, order, payload))

                threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert sim.writes_in_flight[INTEGRATION] == 1  # all 50 came while it flew
                gate.set()
                wait_until(lambda: outbox.counts()["pending"] == 0, 60, "nothing pending")
                held = _assert_record_matches_kombo(outbox, sim, order)
                written = outbox.get(INTEGRATION, order)
                applied = sim.applied_writes[(INTEGRATION, order)]
                # Anything accepted is written or refused: a late PUT is never left pending.
                with httpx.Client(base_url=web.url, headers=auth(), timeout=30) as http:
                    late = _result_put(http, order, {"status": status, "result_url": URL})
                    wait_until(lambda: outbox.counts()["pending"] == 0, 60, "the late one")
                    shown = http.get(f"/orders/{INTEGRATION}/{order}/result").json()
        finally:
            gate.set()
            fleet.stop()
    texts = [a.text for a in answers]
    assert len(answers) == 50 and "Traceback" not in "".join(texts)
    if status == "COMPLETED":
        # The first body was on its way: Kombo takes no other final result.
        assert {a.status_code for a in answers} == {409}, texts
        assert all("is being written" in a.json()["error"] for a in answers), texts
        assert held["result_url"] == f"{URL}/first" and applied == 1
        assert late.status_code == 409 and "already written" in late.json()["error"]
        final = held
    else:
        # Partial results: each body waited behind the one on its way, a later one replacing
        # a waiting one; so Kombo got the first, then the last one accepted.
        assert {a.status_code for a in answers} == {202}, texts
        assert applied == 2
        assert written is not None
        assert written.submission_id in {a.json()["submission_id"] for a in answers}
        assert held["result_url"] in {f"{URL}/{n}" for n in range(50)}
        assert late.status_code == 202
        final = _assert_record_matches_kombo(outbox, sim, order)
        assert final["result_url"] == URL
        assert sim.applied_writes[(INTEGRATION, order)] == 3
    assert shown["result_url"] == final["result_url"] and shown["state"] == "written"
    redis.close()


def test_six_puts_a_fifth_of_a_second_apart_strand_nothing(redis_url: str, namespace: str) -> None:
    sim, order, settings, redis, outbox = _truth_rig(redis_url, namespace, 0.5)
    with SimulatorServer(sim, "127.0.0.1", 0) as kombo:
        env = dispatcher_env(
            redis_url, DISPATCHER_NAMESPACE=namespace, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=kombo.url, DISPATCHER_LOG_LEVEL="WARNING",
        )  # fmt: skip
        fleet = Fleet(env)
        try:
            fleet.start()
            with (
                ReceiverServer(create_app(settings, redis)) as web,
                httpx.Client(base_url=web.url, headers=auth(), timeout=30) as http,
            ):
                answers = []
                for n in range(6):
                    payload = {"status": "COMPLETED", "result_url": f"{URL}/{n}"}
                    answers.append(_result_put(http, order, payload))
                    time.sleep(0.2)  # the scenario under test: PUTs spaced while one writes
                wait_until(lambda: outbox.counts()["pending"] == 0, 60, "nothing pending")
                again = _result_put(http, order, {"status": "COMPLETED", "result_url": f"{URL}/0"})
        finally:
            fleet.stop()
    held = _assert_record_matches_kombo(outbox, sim, order)
    accepted = [a for a in answers if a.status_code == 202]
    assert accepted and all(a.status_code in (202, 409) for a in answers)
    assert sim.applied_writes[(INTEGRATION, order)] == 1
    # The written body again: 200 with its receipt; the others: 409.
    if held["result_url"] == f"{URL}/0":
        assert again.status_code == 200 and again.json()["state"] == "written"
        assert again.json()["submission_id"] == accepted[0].json()["submission_id"]
    else:
        assert again.status_code == 409
    redis.close()
