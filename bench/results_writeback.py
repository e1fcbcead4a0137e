"""Results written back to Kombo per second, end to end, with 20 ms of Kombo latency.

    python bench/results_writeback.py [--results 600] [--integrations 20] [--processes 2]
                                      [--threads 32] [--latency 0.02]
                                      [--baseline-results 100] [--reps 3]

- the dispatcher: ``--results`` results submitted through the outbox (``Outbox.submit``,
  the path of ``dispatcher.submit_result`` and ``PUT /orders/.../result``), written by the
  results workers (``dispatcher worker --results --processes N --threads T``; started and
  waited for first); the clock runs from the first submit until the last result is written
  (every one through the per-integration write cap, ``DISPATCHER_KOMBO_WRITE_CONCURRENCY``);
- THE BASELINE: the same results PUT one at a time with the Kombo client (what ``dispatcher
  result`` did, without its process start per result).

The simulator runs in its own process with ``--latency`` per request. Results are partial
(``OPEN``), each repetition with its own ``result_url``, so that every repetition writes to
the same OPEN orders (a final result can be written once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

from _support import (
    API_KEY,
    Row,
    bench_env,
    common_args,
    flush,
    median,
    private_redis,
    report,
    simulator_process,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.results import build_result
from dispatcher.settings import load_settings
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import Simulator

NAMESPACE = "bench"


def _orders(integrations: int, per: int, total: int) -> list[tuple[str, str]]:
    # The simulator process generates the same orders from the same seed.
    sim = Simulator(integrations, per, seed=0)
    pairs = [(i, str(o["id"])) for i in sim.integration_ids for o in sim.orders(i, "OPEN")]
    # Round-robin over integrations, so that every integration's cap is in play.
    by_integration: dict[str, list[str]] = {}
    for integration, order in pairs:
        by_integration.setdefault(integration, []).append(order)
    mixed = [
        (integration, orders[n])
        for n in range(per)
        for integration, orders in by_integration.items()
        if n < len(orders)
    ]
    return mixed[:total]


def _workers(
    redis_url: str, kombo_url: str, processes: int, threads: int, tmp: str
) -> subprocess.Popen[bytes]:
    env = bench_env(
        redis_url,
        DISPATCHER_NAMESPACE=NAMESPACE,
        KOMBO_API_KEY=API_KEY,
        KOMBO_BASE_URL=kombo_url,
        DISPATCHER_LOG_LEVEL="WARNING",
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "worker",
            "--results",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
        ],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_workers(redis: Redis, processes: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(redis.smembers(f"rq:workers:{NAMESPACE}-results")) < processes:
        if time.monotonic() > deadline:
            raise SystemExit("bench: the results workers did not start")
        time.sleep(0.1)


def run_outbox(redis_url: str, orders: list[tuple[str, str]], rep: int) -> float:
    settings = load_settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=NAMESPACE)
    redis = Redis.from_url(redis_url)
    outbox = Outbox.from_settings(redis, settings)
    started = time.perf_counter()
    for integration, order in orders:
        outbox.submit(
            integration,
            order,
            {"status": "OPEN", "result_url": f"https://vendor.example/r/{rep}/{order}"},
        )
    while True:
        counts = outbox.counts()
        if counts["pending"] == 0:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if counts["failed"]:
        raise SystemExit(
            f"bench: {counts['failed']} results failed: {outbox.in_state('failed')[:1]}"
        )
    redis.close()
    return len(orders) / elapsed


def run_baseline(kombo_url: str, orders: list[tuple[str, str]], rep: int) -> float:
    with KomboClient(API_KEY, kombo_url) as client:
        started = time.perf_counter()
        for integration, order in orders:
            client.put_result(
                integration,
                order,
                build_result(status="OPEN", result_url=f"https://vendor.example/b/{rep}/{order}"),
            )
        return len(orders) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=600)
    parser.add_argument("--integrations", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2, help="results worker processes")
    parser.add_argument("--threads", type=int, default=32, help="write jobs per process")
    parser.add_argument("--latency", type=float, default=0.02, help="Kombo seconds per request")
    parser.add_argument("--baseline-results", type=int, default=100)
    common_args(parser)
    args = parser.parse_args()
    per = -(-args.results // args.integrations)
    orders = _orders(args.integrations, per, args.results)
    dispatcher: list[float] = []
    baseline: list[float] = []
    with (
        private_redis() as redis_url,
        simulator_process(args.integrations, per, latency=args.latency) as kombo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        redis = Redis.from_url(redis_url)
        workers = _workers(redis_url, kombo.url, args.processes, args.threads, tmp)
        try:
            _wait_workers(redis, args.processes)
            for rep in range(args.reps):
                baseline.append(run_baseline(kombo.url, orders[: args.baseline_results], rep))
                dispatcher.append(run_outbox(redis_url, orders, rep))
                redis.delete(*redis.keys(f"{NAMESPACE}:outbox*") or ["-"])
        finally:
            os.killpg(workers.pid, 15)
            workers.wait(30)
            flush(redis)
    value, base = median(dispatcher), median(baseline)
    ratio = value / base
    report(
        [
            Row(
                "results_writeback",
                f"results written per second, {args.latency * 1000:g} ms Kombo latency",
                value,
                "results/s",
                baseline="one PUT at a time",
                baseline_value=base,
                ratio=ratio,
                target=">= 10x the baseline",
                met=ratio >= 10,
                samples=dispatcher,
                baseline_samples=baseline,
                detail=(
                    f"{len(orders)} results over {args.integrations} integrations, "
                    f"{args.processes} results worker processes x {args.threads} threads, "
                    "write cap 10 per integration; "
                    f"baseline {args.baseline_results} sequential PUTs"
                ),
            )
        ],
        Path(args.json) if args.json else None,
    )


if __name__ == "__main__":
    main()
