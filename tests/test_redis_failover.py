"""Sentinel failover under load, for real: a primary, a replica and three sentinels on
loopback (down-after 2 s); ``dispatcher poll`` and ``dispatcher worker --processes 2`` (RQ's
worker pool) running provision_http against the vendor stand-in while new orders keep
arriving; then SIGKILL of the primary.

Sentinel promotes the replica, every process finds the new primary by itself, orders flow
again (measured: kill → the first order created after the kill provisioned), and in the end
every OPEN order is provisioned, each under exactly one idempotency key.

Also: ``DISPATCHER_REDIS_MIN_REPLICAS_ACK`` against a real replica.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq import Queue

from _redis_topology import SentinelSet
from _support import dispatcher_env, kill_tree, order_payload
from dispatcher.kombo.models import Order
from dispatcher.store.connection import connect
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import JobOptions, Ledger
from dispatcher.store.replication import ReplicaAck, ReplicasNotAcknowledged
from dispatcher.testing.simulator import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.jobs import StepStore, step_key

pytestmark = [pytest.mark.redis]

TESTS = Path(__file__).parent
WIRED = [sys.executable, "-m", "dispatcher"]
INTEGRATION = "greenhouse:FAILOVER0000000000000"
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
@pytest.mark.timeout(240)
def test_failover_under_load_loses_no_order_and_repeats_no_step(
    sentinels: SentinelSet, vendor: VendorAPI
) -> None:
    # Given the chain running on the Sentinel-managed primary, 40 orders in, more arriving
    redis = connect(sentinels.url)
    redis.flushall()
    sim = Simulator([INTEGRATION], 40, closed=0, seed=16)
    stop_adding = threading.Event()
    added_at: dict[str, float] = {}

    def keep_ordering() -> None:
        while not stop_adding.wait(0.1):
            order = sim.add_order(INTEGRATION)
            added_at[order["id"]] = time.monotonic()

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
        log_dir = Path(os.environ.get("FAILOVER_LOGS", "/tmp"))
        logs = {name: (log_dir / f"failover-{name}.log").open("wb") for name in ("poll", "work")}
        poll = subprocess.Popen(
            [*WIRED, "poll"], env=env, stdout=logs["poll"], stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        work = subprocess.Popen(
            [*WIRED, "worker", "--processes", "2"], env=env, stdout=logs["work"],
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        adder = threading.Thread(target=keep_ordering, daemon=True)
        try:
            _wait(lambda: len(provisioned()) >= 40, 60, "the first 40 orders provisioned")
            adder.start()
            time.sleep(2)  # under load: orders arriving, sweeps and jobs in flight

            # When the primary is SIGKILLed
            old = sentinels.primary_address()
            killed_at = time.monotonic()
            sentinels.kill_primary()

            # Then Sentinel promotes the replica, and an order created after the kill is
            # provisioned: orders flow again, with no process restarted
            def flowing() -> bool:
                done = provisioned()
                return any(at > killed_at and oid in done for oid, at in list(added_at.items()))

            recovery = _wait(flowing, 60, "orders flowing after the failover")
            promoted = sentinels.primary_address()
            time.sleep(3)
            stop_adding.set()
            adder.join()
            open_ids = {o["id"] for o in sim.orders(INTEGRATION, status="OPEN")}
            _wait(
                lambda: open_ids <= set(provisioned()),
                90,
                "every OPEN order provisioned",
            )
            assert poll.poll() is None and work.poll() is None, "a process died"
        finally:
            stop_adding.set()
            for process in (poll, work):
                kill_tree(process.pid)
                process.wait(10)
            for file in logs.values():
                file.close()

    done = provisioned()
    namespace = "dispatcher"
    for order_id in open_ids:
        assert done[order_id] == {step_key(namespace, INTEGRATION, order_id, "provision_http")}
    assert promoted != old
    figures = (
        f"failover: {len(open_ids)} OPEN orders, all provisioned once each; "
        f"kill -> orders flowing again: {recovery:.1f} s (target {RECOVERY_TARGET:.0f} s, "
        "down-after 2 s)"
    )
    print(figures)
    if os.environ.get("FAILOVER_FIGURES"):
        Path(os.environ["FAILOVER_FIGURES"]).write_text(figures + "\n")
    assert recovery <= RECOVERY_TARGET
