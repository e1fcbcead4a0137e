"""The webhook receiver under a real uvicorn server, over real sockets, with a real Redis.

Given Kombo (the simulator, over a socket) holding OPEN orders, and the receiver running;
when orders arrive by webhook, by polling, or both, concurrently or replayed;
then each order is dispatched once, and a rejected order is never dispatched.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import SimpleWorker
from rq.registry import FinishedJobRegistry

from dispatcher import Settings
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.poller import Poller
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator, SimulatorServer
from dispatcher.web.kombo_delivery import MAX_BODY_BYTES, SIGNATURE_HEADER, sign
from dispatcher.web.webhook import WEBHOOK_PATH
from dispatcher.worker.jobs import Runtime, install_runtime
from support import queued_jobs, text
from support.webhook import ReceiverServer, event_body, make_app, make_ledger, signed

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Simulator:
    return Simulator(1, 5, closed=0, seed=3)


def sweep(kombo: SimulatorServer, ledger: Ledger, sim: Simulator) -> int:
    """One poller sweep over the socket; how many orders it enqueued."""
    with KomboClient(DEFAULT_API_KEY, kombo.url, retry_budget=0) as client:
        report = Poller(client, ledger, sim.integration_ids).sweep()
    assert not report.errors
    return report.orders_new


def queued(ledger: Ledger) -> list[str]:
    jobs = queued_jobs(ledger.redis, ledger.queue.name)
    return sorted(text(job.meta["order_id"] for job in jobs))


def test_an_order_by_webhook_then_by_polling_is_dispatched_once_and_worked(
    redis: Redis, sim: Simulator, kombo: SimulatorServer
) -> None:
    integration = sim.integration_ids[0]
    order = sim.add_order(integration, id="WEBHOOK_FIRST_0000000001")
    ledger = make_ledger(redis)
    body = event_body(order, integration)
    with ReceiverServer(make_app(ledger)) as receiver:
        answer = httpx.post(receiver.url + WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 200
    assert answer.json() == {"status": "enqueued", "order_id": order["id"]}

    # The poller sees all six OPEN orders and enqueues only the five it had not.
    assert sweep(kombo, ledger, sim) == 5
    assert sweep(kombo, ledger, sim) == 0
    assert queued(ledger).count(order["id"]) == 1
    assert len(queued(ledger)) == 6

    # And a worker works it, with the order as Kombo sent it.
    install_runtime(Runtime.from_settings(Settings(_env_file=None)))  # type: ignore[call-arg]
    SimpleWorker([ledger.queue], connection=redis, serializer=JOB_SERIALIZER).work(burst=True)
    finished = FinishedJobRegistry(queue=ledger.queue)
    job_id = ledger.job_id(integration, order["id"])
    assert job_id in finished.get_job_ids()
    assert ledger.queue.fetch_job(job_id).return_value()["order_id"] == order["id"]  # type: ignore[union-attr]


def test_an_order_rejected_at_the_door_is_never_dispatched_by_polling(
    redis: Redis, sim: Simulator, kombo: SimulatorServer
) -> None:
    integration = sim.integration_ids[0]
    order = sim.add_order(integration, id="REJECTED_000000000000001", package_id="tarot_reading")
    ledger = make_ledger(redis)
    accepted = ",".join({o["package_id"] for o in sim.orders(integration)} - {"tarot_reading"})
    body = event_body(order, integration)
    app = make_app(ledger, DISPATCHER_ACCEPTED_PACKAGES=accepted)
    with ReceiverServer(app) as receiver:
        answer = httpx.post(receiver.url + WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code == 422
    assert answer.json() == {"message": "Package tarot_reading is not offered by this vendor."}
    # Kombo would now mark it REJECTED; had it missed the answer, the order stays OPEN and
    # the poller sees it: it must not dispatch it.
    assert sweep(kombo, ledger, sim) == 5
    assert order["id"] not in queued(ledger)


async def _deliver_all(urls: list[str], bodies: list[bytes]) -> list[httpx.Response]:
    """Post every body at once, each on its own connection, spread over the receivers."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(urls[n % len(urls)] + WEBHOOK_PATH, content=body, headers=signed(body))
                for n, body in enumerate(bodies)
            )
        )


def test_concurrent_deliveries_of_one_order_to_two_receivers_dispatch_it_once(
    redis: Redis, sim: Simulator
) -> None:
    """Two web processes' worth of receivers; 60 deliveries of 3 orders at once, 3 times."""
    integration = sim.integration_ids[0]
    ledger = make_ledger(redis)
    with ReceiverServer(make_app(ledger)) as one, ReceiverServer(make_app(ledger)) as two:
        for round_ in range(3):
            orders = [
                sim.add_order(integration, id=f"RACE{round_}{k}".ljust(24, "0")) for k in range(3)
            ]
            # Each order 20 times: 10 events, each delivered twice (a replay), to either receiver.
            bodies = [
                event_body(orders[n % 3], integration, event_id=f"evt_{round_}_{n // 2}")
                for n in range(60)
            ]
            answers = asyncio.run(_deliver_all([one.url, two.url], bodies))
            assert {answer.status_code for answer in answers} == {200}
            outcomes = [(a.json()["order_id"], a.json()["status"]) for a in answers]
            for order in orders:
                assert outcomes.count((order["id"], "enqueued")) == 1
                assert outcomes.count((order["id"], "already_seen")) == 19
    assert len(queued(ledger)) == 9
    assert len(set(queued(ledger))) == 9


def test_an_oversize_body_is_refused_over_a_real_socket(redis: Redis) -> None:
    ledger = make_ledger(redis)
    big = b'{"id": "evt_1", "pad": "' + b"x" * (2 * MAX_BODY_BYTES) + b'"}'
    with ReceiverServer(make_app(ledger)) as receiver, httpx.Client(timeout=10) as client:
        declared = client.post(
            receiver.url + WEBHOOK_PATH, content=big, headers={SIGNATURE_HEADER: sign("s", big)}
        )

        def chunked() -> Iterator[bytes]:
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]

        streamed = client.post(
            receiver.url + WEBHOOK_PATH, content=chunked(), headers={SIGNATURE_HEADER: "x"}
        )
        # The receiver still answers normally afterwards.
        small = b"{}"
        after = client.post(receiver.url + WEBHOOK_PATH, content=small, headers=signed(small))
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert after.status_code == 400
    assert ledger.queue.count == 0


@pytest.mark.slow
def test_the_latency_benchmark_enqueues_each_delivery_once_and_batches_confirmation(
    redis_url: str, redis: Redis
) -> None:
    """The benchmark itself: real uvicorn in its own process, 50 deliveries in flight, each
    new order confirmed OPEN with Kombo (the simulator in its own process) as deployed.

    What it must do is asserted; how fast is the benchmark's figure (p99 under 100 ms idle,
    docs/webhooks.md), not a test's: beside a CPU-bound process it measures the machine.

    The raw sender is used: httpx's client spends three times the receiver's CPU per request
    on this 2-core machine, and that would be measured too (see bench/webhook_latency.py).
    """
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "webhook_latency.py"),
            "--sender",
            "raw",
            "--deliveries",
            "1500",
            "--replays",
            "0.1",
            "--confirm",
            "on",
            "--json",
            "--redis-url",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["jobs_enqueued"] == 1500 + 200  # measured + warm-up, each once
    assert figures["p99_ms"] > 0, figures  # measured (the figure itself is the bench's)
    # Confirmation is batched across deliveries: far fewer requests than orders.
    assert 0 < figures["kombo_requests"] < 1700 / 2, figures
