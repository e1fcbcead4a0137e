"""The cost of DISPATCHER_REDIS_MIN_REPLICAS_ACK on ingest: N=1 against N=0, same run.

    python bench/replica_ack.py [--integrations 20] [--orders 250] [--reps 5]

A primary and one replica (``--replicaof``) on loopback, nothing on disk; the simulator
serves from another process. Each repetition starts from an empty Redis, so every order is
new, and the two contenders alternate: the poller's sweep end to end (``Poller.sweep()``),
and the dedupe + enqueue step alone on pages fetched beforehand (``Ledger.dispatch``). With
N=1 each page's dispatch script is followed by ``WAIT 1 <timeout>`` in the same round trip.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import Redis
from rq import Queue

from _support import (
    API_KEY,
    NAMESPACE,
    QUEUE,
    Row,
    common_args,
    flush,
    free_port,
    median,
    queued_count,
    redis_version,
    report,
    simulator_process,
    timed,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.models import Order
from dispatcher.poller.poller import Poller
from dispatcher.settings import Settings
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.replication import ReplicaAck

PAGE_SIZE = 250


@contextmanager
def primary_with_replica() -> Iterator[str]:
    """A throwaway primary and its replica, synced; yields the primary's URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
    workdir = tempfile.mkdtemp(prefix="bench-replica-")
    ports = [free_port(), free_port()]
    procs = []
    for index, port in enumerate(ports):
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--dbfilename", f"d{port}.rdb",
                "--loglevel", "warning"]  # fmt: skip
        if index:
            args += ["--replicaof", "127.0.0.1", str(ports[0])]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
    try:
        replica = Redis(port=ports[1])
        for _ in range(1000):
            try:
                if replica.info("replication").get("master_link_status") == "up":
                    break
            except Exception:
                pass
            time.sleep(0.01)
        else:
            raise SystemExit("bench: the replica did not sync")
        replica.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def run(integrations: int, orders: int, reps: int) -> list[Row]:
    concurrency = Settings.model_fields["sweep_concurrency"].default
    total = integrations * orders
    with (
        primary_with_replica() as redis_url,
        simulator_process(integrations, orders) as sim,
        KomboClient(API_KEY, sim.url, max_connections=concurrency) as client,
    ):
        redis = Redis.from_url(redis_url)
        queue = Queue(QUEUE, connection=redis)
        ids = sim.integration_ids
        ledgers = {
            "N=0": Ledger(redis, queue, NAMESPACE),
            "N=1": Ledger(
                redis, queue, NAMESPACE, job_options=JobOptions(replica_ack=ReplicaAck(1, 1.0))
            ),
        }
        pages: list[tuple[str, list[Order]]] = [
            (integration_id, page.orders)
            for integration_id in ids
            for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE)
        ]
        gc.freeze()

        def sweep(ledger: Ledger) -> Callable[[], int]:
            poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)
            return lambda: poller.sweep().orders_new

        def step(ledger: Ledger) -> Callable[[], int]:
            return lambda: sum(len(ledger.dispatch(i, p).enqueued) for i, p in pages)

        contenders = {
            (kind, name): make(ledger)
            for kind, make in (("e2e", sweep), ("step", step))
            for name, ledger in ledgers.items()
        }
        seconds: dict[tuple[str, str], list[float]] = {}
        for _ in range(reps):
            for key, contender in contenders.items():
                flush(redis)
                elapsed, enqueued = timed(contender)
                if enqueued != total or queued_count(redis) != total:
                    raise SystemExit(f"bench: {key} enqueued {enqueued}, expected {total}")
                seconds.setdefault(key, []).append(elapsed)
        version = redis_version(redis)

    rows: list[Row] = []
    where = {"e2e": "end to end (sweep)", "step": "dedupe + enqueue step alone"}
    for kind in ("e2e", "step"):
        acked = [total / s for s in seconds[(kind, "N=1")]]
        plain = [total / s for s in seconds[(kind, "N=0")]]
        ratio = median(acked) / median(plain)
        rows.append(
            Row(
                bench="replica_ack",
                measure=f"new orders with DISPATCHER_REDIS_MIN_REPLICAS_ACK=1, {where[kind]}",
                value=median(acked),
                unit="orders/s",
                baseline="DISPATCHER_REDIS_MIN_REPLICAS_ACK=0 (no WAIT)",
                baseline_value=median(plain),
                ratio=ratio,
                ratio_note="(throughput with WAIT / without)",
                target="reported",
                detail=(
                    f"{total:,} orders ({integrations} x {orders}), page {PAGE_SIZE}, one replica "
                    f"on loopback, Redis {version}, median of {reps}"
                ),
                samples=acked,
                baseline_samples=plain,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=20)
    parser.add_argument("--orders", type=int, default=250, help="OPEN orders per integration")
    common_args(parser, reps=5)
    args = parser.parse_args()
    rows = run(args.integrations, args.orders, args.reps)
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
