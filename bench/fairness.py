"""Another integration's wait behind one integration's burst: fair dispatch against one queue.

    python bench/fairness.py [--burst 5000] [--seconds 1.0] [--processes 2] [--threads 100]
                             [--late 100] [--every 0.2]

``dispatcher worker --processes P --threads T`` runs the built-in ``provision_http`` handler
against a local vendor API answering after ``--seconds`` (bench/_vendor_server.py). First
``--burst`` orders of one integration are dispatched at once; then, while they run, ``--late``
orders of ten other integrations, one every ``--every`` seconds. Each late order's wait is the
time from its dispatch to its job's start (RQ's ``started_at``).

- the dispatcher as it is: each integration's orders wait on its own list and are fed to the
  worker queue in turn (dispatcher.store.fair);
- THE BASELINE: the same workers on one FIFO queue (the dispatch feeds every order to the
  worker queue at once: ``FairOptions(window=10**9)``), which is what the dispatcher did
  before.

Target: p99 <= 2 s with 1 s handlers behind 5,000 orders on 2 x 100 threads.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from _support import (
    NAMESPACE,
    QUEUE,
    Row,
    bench_env,
    flush,
    private_redis,
    report,
    vendor_process,
)
from dispatcher.kombo.models import Order
from dispatcher.store.fair import FairOptions
from dispatcher.store.job_options import JobOptions
from dispatcher.store.keys import job_id_for
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator

ONE_QUEUE = FairOptions(window=10**9)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _waits(
    redis_url: str, env: dict[str, str], processes: int, burst: int, late: int, every: float,
    fair: FairOptions | None,
) -> list[float]:  # fmt: skip
    redis = Redis.from_url(redis_url)
    flush(redis)
    sim = Simulator(1, burst, closed=0, seed=9)
    big_integration = sim.integration_ids[0]
    big = [Order.model_validate(o) for o in sim.orders(big_integration)]
    others = Simulator(10, late // 10 + 1, closed=0, seed=11)
    small = [
        (integration, Order.model_validate(o))
        for integration in others.integration_ids
        for o in others.orders(integration)
    ]
    small = [small[(i % 10) * (late // 10 + 1) + i // 10] for i in range(late)]  # interleaved
    ledger = Ledger(
        redis, Queue(QUEUE, connection=redis), NAMESPACE,
        job_options=JobOptions(fair=fair) if fair else None,
    )  # fmt: skip
    workdir = tempfile.mkdtemp(prefix="bench-fair-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "worker", "--processes", str(processes)],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while Worker.count(connection=redis) < processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the workers did not start")
            time.sleep(0.05)
        time.sleep(0.5)
        ledger.dispatch(big_integration, big)
        dispatched: dict[str, float] = {}
        for integration, order in small:
            time.sleep(every)
            dispatched[job_id_for(NAMESPACE, integration, order.id)] = time.time()
            ledger.dispatch(integration, [order])
        deadline = time.monotonic() + 120 + burst * 2
        waits: dict[str, float] = {}
        while len(waits) < len(dispatched):
            pending = [job_id for job_id in dispatched if job_id not in waits]
            for job in Job.fetch_many(pending, connection=redis, serializer=JOB_SERIALIZER):
                if job is not None and job.started_at is not None:
                    waits[job.id] = job.started_at.timestamp() - dispatched[job.id]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: {len(waits)} of {late} late orders started in time")
            time.sleep(0.1)
        return list(waits.values())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(
    burst: int, seconds: float, processes: int, threads: int, late: int, every: float
) -> list[Row]:
    with private_redis() as redis_url, vendor_process(seconds) as vendor_url:
        env = bench_env(
            redis_url,
            DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor_url,
            DISPATCHER_QUEUE=QUEUE,
            DISPATCHER_NAMESPACE=NAMESPACE,
            DISPATCHER_FORK_PER_JOB="false",
            DISPATCHER_WORKER_THREADS=str(threads),
            DISPATCHER_HANDLER_TIMEOUT=str(max(60.0, 10 * seconds)),
        )
        fair = _waits(redis_url, env, processes, burst, late, every, None)
        fifo = _waits(redis_url, env, processes, burst, late, every, ONE_QUEUE)

    def line(waits: list[float]) -> str:
        return (
            f"p50 {_percentile(waits, 0.5):.2f} s, p99 {_percentile(waits, 0.99):.2f} s, "
            f"max {max(waits):.2f} s"
        )

    p99, base_p99 = _percentile(fair, 0.99), _percentile(fifo, 0.99)
    return [
        Row(
            bench="fairness",
            measure=(
                f"another integration's wait (p99) behind {burst} orders of one, "
                f"{seconds:g} s handlers, {processes} x {threads} threads"
            ),
            value=p99,
            unit="s",
            baseline="the same workers on one FIFO queue",
            baseline_value=base_p99,
            ratio=base_p99 / p99 if p99 > 0 else None,
            target="p99 <= 2 s",
            met=p99 <= 2.0,
            detail=(
                f"{late} late orders of 10 other integrations, one every {every:g} s: fair "
                f"{line(fair)}; one queue {line(fifo)}"
            ),
            samples=sorted(fair),
            baseline_samples=sorted(fifo),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--late", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = run(args.burst, args.seconds, args.processes, args.threads, args.late, args.every)
    report(rows, args.json)


if __name__ == "__main__":
    main()
