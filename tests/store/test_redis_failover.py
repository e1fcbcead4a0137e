"""Sentinel failover under load, for real: a primary, a replica and three sentinels on
loopback (down-after 2 s); ``dispatcher poll``, ``dispatcher worker --processes 2`` (RQ's
worker pool) running provision_http against the vendor stand-in, ``dispatcher web`` taking
signed webhook deliveries and result PUTs, and ``dispatcher worker --results`` writing
results to the Kombo stand-in, while new orders, deliveries and results keep arriving; then
SIGKILL of the primary.

Sentinel promotes the replica, every process finds the new primary by itself, orders flow
again (measured: kill → the first order created after the kill provisioned), and in the end
every polled and every webhook-delivered order is provisioned, each under exactly one
idempotency key, every submitted result is applied by Kombo exactly once, and nothing is
failed. A result write retried by RQ's scheduler (a 429 with Retry-After, scheduled before
the kill, due after it) is written after the failover: the scheduler process, which dies
with the primary, is started again by its worker.

Also: ``DISPATCHER_REDIS_MIN_REPLICAS_ACK`` against a real replica; the results workers
(the command's worker pool, and a write job's writer built from the environment) connect
through a ``redis+sentinel://`` URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
import pytest
from rq import Queue
from rq.utils import utcparse

from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.connection import connect
from dispatcher.store.job_options import JobOptions
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import Ledger
from dispatcher.store.replication import ReplicaAck, ReplicasNotAcknowledged
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.results import current_writer, install_writer, write_claimed
from dispatcher.worker.steps import StepStore, step_key
from support import dispatcher_env, free_port, kill_tree, order_payload
from support.redis_topology import SentinelSet
from support.webhook import event_body, signed

pytestmark = [pytest.mark.redis]

TESTS = Path(__file__).resolve().parents[1]
WIRED = [sys.executable, "-m", "dispatcher"]
INTEGRATION = "greenhouse:FAILOVER0000000000000"
# Not polled: its one result write meets the 429 that schedules the retry across the kill.
PROBE_INTEGRATION = "greenhouse:FAILOVERPROBE00000000"
WEBHOOK_SECRET = "failover-webhook-secret"
API_TOKEN = "failover-api-token-0123456789"
RESULT = {"status": "COMPLETED", "result_url": "https://vendor.example/r/1", "score": 1,
          "max_score": 2}  # fmt: skip
PROBE_RETRY_AFTER = 8.0
RECOVERY_TARGET = 30.0


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    try:
        topology = SentinelSet(down_after_ms=2000)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield topology
    finally:
        topology.close()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
def test_replica_ack_passes_with_a_replica_and_fails_clearly_without(
    sentinels: SentinelSet,
) -> None:
    redis = connect(sentinels.url)
    redis.flushall()
    queue = Queue("ack-orders", connection=redis)
    orders = [Order.model_validate(order_payload(f"ACK{i}")) for i in range(3)]
    acked = Ledger(redis, queue, "ack", job_options=JobOptions(replica_ack=ReplicaAck(1, 2.0)))
    assert len(acked.dispatch(INTEGRATION, orders).enqueued) == 3
    store = StepStore(redis, Keys("ack"), INTEGRATION, "ACK0", 60, ack=ReplicaAck(1, 2.0))
    store.complete("provision_http", {"ok": True})
    # Two replicas are asked for, one exists: the write is made, but not counted as done.
    greedy = Ledger(redis, queue, "ack2", job_options=JobOptions(replica_ack=ReplicaAck(2, 0.1)))
    with pytest.raises(ReplicasNotAcknowledged, match="1 of 2 replica"):
        greedy.dispatch(INTEGRATION, [Order.model_validate(order_payload("ACK9"))])
    store = StepStore(redis, Keys("ack"), INTEGRATION, "ACK1", 60, ack=ReplicaAck(2, 0.1))
    with pytest.raises(ReplicasNotAcknowledged, match="DISPATCHER_REDIS_MIN_REPLICAS_ACK"):
        store.complete("provision_http", {"ok": True})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_results_workers_connect_through_a_sentinel_url(
    sentinels: SentinelSet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given results waiting to be written on the Sentinel-managed primary
    redis = connect(sentinels.url)
    sim = Simulator([INTEGRATION], 3, closed=0, seed=5)
    orders = [str(o["id"]) for o in sim.orders(INTEGRATION, status="OPEN")]
    with sim.serve() as server:
        env = dispatcher_env(
            sentinels.url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=server.url,
            DISPATCHER_NAMESPACE="sentinel-results",
            DISPATCHER_LOG_LEVEL="WARNING",
        )
        settings = Settings(_env_file=None, **{  # type: ignore[arg-type]
            k: v for k, v in env.items() if k.startswith(("DISPATCHER_", "KOMBO_", "REDIS_"))
        })  # fmt: skip
        outbox = Outbox.from_settings(redis, settings)
        for order_id in orders[:2]:
            outbox.submit(INTEGRATION, order_id, RESULT)
        # When `dispatcher worker --results` runs with the Sentinel URL, in RQ's worker pool
        done = subprocess.run(
            [*WIRED, "worker", "--results", "--processes", "2", "--burst"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        # Then it writes them
        assert done.returncode == 0, done.stderr
        assert outbox.counts() == {"pending": 0, "written": 2, "failed": 0}
        # And a write job run outside the command (a stock `rq worker`, which builds the
        # writer from the environment) reaches the primary through the sentinels too
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no stray .env
        outbox.submit(INTEGRATION, orders[2], RESULT)
        install_writer(None)
        try:
            assert write_claimed(current_writer(), INTEGRATION, orders[2]) == "written"
        finally:
            current_writer().writer.client.close()
            install_writer(None)
        assert sim.applied_writes[(INTEGRATION, orders[2])] == 1


def _until_accepted(send: Callable[[], httpx.Response], accepted: tuple[int, ...]) -> None:
    """Send until answered with one of ``accepted``: a client that retries, as Kombo does
    with a delivery and a vendor's platform with a result (503 while Redis fails over)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            status = send().status_code
        except httpx.TransportError:
            status = 0
        if status in accepted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not accepted within 60 s (last answer {status})")
        time.sleep(0.1)


def _start_web(env: dict[str, str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [*WIRED, "web", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                kill_tree(process.pid)
                raise AssertionError("dispatcher web did not start") from None
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failover_under_load_loses_no_order_and_repeats_no_step(
    sentinels: SentinelSet, vendor: VendorAPI
) -> None:
    # Given the chain running on the Sentinel-managed primary, 40 orders in, more arriving,
    # webhook deliveries and result PUTs arriving too
    redis = connect(sentinels.url)
    redis.flushall()
    sim = Simulator([INTEGRATION, PROBE_INTEGRATION], 40, closed=0, seed=16)
    initial_ids = {o["id"] for o in sim.orders(INTEGRATION, status="OPEN")}
    stop_adding = threading.Event()
    added_at: dict[str, float] = {}
    delivered: set[str] = set()
    submitted: list[tuple[str, str]] = []
    errors: list[str] = []

    def keep_ordering() -> None:
        while not stop_adding.wait(0.1):
            order = sim.add_order(INTEGRATION)
            added_at[order["id"]] = time.monotonic()

    def keep_delivering(url: str) -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=5) as http:
            while not stop_adding.wait(0.1):
                order_id = f"WEBHOOK{n:05d}"
                # Kombo knows the order it announces: the receiver confirms it OPEN there.
                order = sim.add_order(INTEGRATION, id=order_id)
                body = event_body(order, INTEGRATION, event_id=f"evt_{n}")
                try:
                    _until_accepted(
                        lambda b=body: http.post("/webhooks/kombo", content=b, headers=signed(
                            b, WEBHOOK_SECRET)), (200, 202),
                    )  # fmt: skip
                except AssertionError as exc:
                    errors.append(f"webhook {order_id}: {exc}")
                    return
                delivered.add(order_id)
                n += 1

    def keep_submitting(url: str, orders: list[str]) -> None:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        with httpx.Client(base_url=url, timeout=5, headers=headers) as http:
            for order_id in orders:
                if stop_adding.wait(0.15):
                    return
                path = f"/orders/{INTEGRATION}/{order_id}/result"
                try:
                    # 409: the result is already stored and final (an answer lost in transit)
                    _until_accepted(lambda p=path: http.put(p, json=RESULT), (202, 409))
                except AssertionError as exc:
                    errors.append(f"result {order_id}: {exc}")
                    return
                submitted.append((INTEGRATION, order_id))

    def provisioned() -> dict[str, set[str | None]]:
        keys: dict[str, set[str | None]] = {}
        with vendor.lock:
            calls = [c for c in vendor.calls if c.succeeded]
        for call in calls:
            keys.setdefault(str(call.body.get("id")), set()).add(call.idempotency_key)
        return keys

    with sim.serve() as server:
        env = dispatcher_env(
            sentinels.url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_BASE_URL=server.url,
            KOMBO_INTEGRATION_IDS=INTEGRATION,
            KOMBO_WEBHOOK_SECRET=WEBHOOK_SECRET,
            DISPATCHER_API_TOKEN=API_TOKEN,
            DISPATCHER_HANDLERS="provision_http",
            DISPATCHER_POLL_INTERVAL="0.5",
            DISPATCHER_FULL_SWEEP_INTERVAL="3",
            DISPATCHER_RETRY_BACKOFF="1",
            DISPATCHER_MAX_RETRIES="10",
            DISPATCHER_FORK_PER_JOB="false",
            DISPATCHER_LOG_LEVEL="WARNING",
            PROVISION_URL=vendor.url,
            PROVISION_TIMEOUT="2",
        )
        settings = Settings(_env_file=None, **{  # type: ignore[arg-type]
            k: v for k, v in env.items() if k.startswith(("DISPATCHER_", "KOMBO_", "REDIS_"))
        })  # fmt: skip
        outbox = Outbox.from_settings(redis, settings)
        log_dir = Path(os.environ.get("FAILOVER_LOGS", "/tmp"))
        names = ("poll", "work", "results", "web")
        logs = {name: (log_dir / f"failover-{name}.log").open("wb") for name in names}
        processes: list[subprocess.Popen[bytes]] = []

        def start(*args: str, log: str) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                [*WIRED, *args], env=env, stdout=logs[log], stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            processes.append(process)
            return process

        threads: list[threading.Thread] = []
        try:
            start("poll", log="poll")
            start("worker", "--processes", "2", log="work")
            start("worker", "--results", "--processes", "1", log="results")
            web, web_url = _start_web(env, logs["web"])
            processes.append(web)
            _wait(lambda: initial_ids <= set(provisioned()), 60, "the first 40 orders provisioned")
            result_orders = sorted(initial_ids)
            threads = [
                threading.Thread(target=keep_ordering, daemon=True),
                threading.Thread(target=keep_delivering, args=(web_url,), daemon=True),
                threading.Thread(target=keep_submitting, args=(web_url, result_orders),
                                 daemon=True),
            ]  # fmt: skip
            for thread in threads:
                thread.start()

            # A result write that meets a 429 (Retry-After 8 s): its retry is a job in RQ's
            # schedule, made before the kill and due after it
            probe = sim.orders(PROBE_INTEGRATION, status="OPEN")[0]["id"]
            sim.faults.retry_after = PROBE_RETRY_AFTER
            sim.fail_next("rate_limit", 1, integration_id=PROBE_INTEGRATION)
            # The results API takes results of dispatched orders only: mark it as the ledger
            # would (this integration is not polled).
            redis.hset(Keys(settings.namespace).seen(PROBE_INTEGRATION), probe, int(time.time()))
            headers = {"Authorization": f"Bearer {API_TOKEN}"}
            put = httpx.put(f"{web_url}/orders/{PROBE_INTEGRATION}/{probe}/result",
                            json=RESULT, headers=headers, timeout=5)  # fmt: skip
            assert put.status_code == 202, put.text

            def probe_scheduled() -> bool:
                record = outbox.get(PROBE_INTEGRATION, probe)
                return record is not None and record.next_attempt_at is not None

            _wait(probe_scheduled, 10, "the probe's write rescheduled after its 429")
            time.sleep(1.5)  # under load; and the probe's schedule reaches the replica

            # When the primary is SIGKILLed while jobs and result writes are in flight (slow
            # answers: each finishes, and records its outcome, with Redis gone)
            vendor.slow, sim.faults.latency = 1.5, 1.0
            time.sleep(0.5)
            old = sentinels.primary_address()
            killed_at, killed_utc = time.monotonic(), datetime.now(UTC)
            sentinels.kill_primary()
            time.sleep(1.5)
            vendor.slow, sim.faults.latency = 0, 0.0
            assert sim.applied_writes[(PROBE_INTEGRATION, probe)] == 0

            # Then Sentinel promotes the replica, and an order created after the kill is
            # provisioned: orders flow again, with no process restarted
            def flowing() -> bool:
                done = provisioned()
                return any(at > killed_at and oid in done for oid, at in list(added_at.items()))

            # And the retry scheduled before the kill is run after it
            seen: dict[str, float] = {}

            def both() -> bool:
                at = time.monotonic() - killed_at
                if "flowing" not in seen and flowing():
                    seen["flowing"] = at
                if "probe" not in seen and sim.applied_writes[(PROBE_INTEGRATION, probe)]:
                    seen["probe"] = at
                return len(seen) == 2

            _wait(both, 60, "orders flowing and the probe written after the failover")
            recovery, probe_written = seen["flowing"], seen["probe"]
            promoted = sentinels.primary_address()

            def scheduler_alive(queue: str) -> bool:
                # The scheduler process died with the primary (a traceback in the log); its
                # worker starts it again (RQ checks it at each maintenance pass): the queue's
                # scheduler lock is held by a scheduler beating on the new primary.
                holder = redis.get(f"rq:scheduler-lock:{queue}")
                beat = holder and redis.hget(f"rq:scheduler:{holder.decode()}", "last_heartbeat")
                return bool(beat) and utcparse(beat.decode()) > killed_utc

            for queue in (settings.queue, settings.results_queue):
                _wait(lambda q=queue: scheduler_alive(q), 30, f"a scheduler for {queue} again")
            time.sleep(3)
            stop_adding.set()
            for thread in threads:
                thread.join(70)
            assert errors == []
            open_ids = {o["id"] for o in sim.orders(INTEGRATION, status="OPEN")}
            expected = open_ids | initial_ids | set(added_at) | delivered
            _wait(
                lambda: expected <= set(provisioned()),
                90,
                "every polled and delivered order provisioned",
            )
            _wait(lambda: outbox.counts()["pending"] == 0, 90, "every result written")
            assert all(p.poll() is None for p in processes), "a process died"
        finally:
            stop_adding.set()
            for process in processes:
                kill_tree(process.pid)
                process.wait(10)
            for file in logs.values():
                file.close()

    done = provisioned()
    namespace = "dispatcher"
    for order_id in expected:
        assert done[order_id] == {step_key(namespace, INTEGRATION, order_id, "provision_http")}
    assert len(delivered) > 20 and len(submitted) > 20
    assert any(o not in open_ids for _, o in submitted)  # results did close orders
    written = [*submitted, (PROBE_INTEGRATION, probe)]
    assert {k: n for k, n in sim.applied_writes.items() if n != 1} == {}
    assert set(sim.applied_writes) == set(written)
    assert outbox.counts() == {"pending": 0, "written": len(written), "failed": 0}
    orders_queue = Queue(settings.queue, connection=redis)
    assert orders_queue.failed_job_registry.get_job_ids() == []
    assert probe_written > PROBE_RETRY_AFTER - 3  # not written before its Retry-After
    assert promoted != old
    figures = (
        f"failover: {len(expected)} orders ({len(delivered)} by webhook), all provisioned once "
        f"each; {len(written)} results, each applied once; nothing failed; "
        f"kill -> orders flowing again: {recovery:.1f} s (target {RECOVERY_TARGET:.0f} s, "
        f"down-after 2 s); retry scheduled before the kill written {probe_written:.1f} s "
        "after it"
    )
    print(figures)
    if os.environ.get("FAILOVER_FIGURES"):
        Path(os.environ["FAILOVER_FIGURES"]).write_text(figures + "\n")
    assert recovery <= RECOVERY_TARGET
