"""The poller's peak memory over sweeps of 100k and 1M orders, and the seen store after them.

    python bench/poller_rss.py [--orders 100000,1000000] [--per-integration 1000] [--reps 1]

Runs the real ``dispatcher poll --once`` in a subprocess against the simulator (its own
process, real socket) and reads the poller's peak RSS from ``wait4`` (``ru_maxrss``). Each
size sweeps ``orders / per-integration`` integrations of ``--per-integration`` OPEN orders,
every order new, from an empty Redis. Flat means the peak does not grow with the number of
orders: pages are dispatched as they arrive and nothing is kept per order. THE BASELINE is
the same poller on the smallest size.

After the largest sweep, the seen store's ``MEMORY USAGE`` (summed over the integrations'
hashes) is divided by the orders remembered: the real path, at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from redis import Redis

from _support import (
    API_KEY,
    NAMESPACE,
    QUEUE,
    Row,
    bench_env,
    common_args,
    flush,
    fmt,
    median,
    private_redis,
    redis_version,
    report,
    simulator_process,
)
from dispatcher.store.keys import Keys


def poll_once(env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """Run ``dispatcher poll --once --json``; return (peak RSS in MiB, seconds, report)."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-poll-") as workdir,
        tempfile.TemporaryFile("w+") as stderr,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "poll", "--once", "--json"],
            env=env,
            cwd=workdir,  # no stray .env
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        # wait4, not Popen.wait: it returns the child's own resource usage (peak RSS).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        stderr.seek(0)
        err = stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"bench: poll --once exited {proc.returncode}: {err.strip()[-500:]}")
    return usage.ru_maxrss / 1024, elapsed, json.loads(out)


def run(sizes: list[int], per_integration: int, reps: int) -> list[Row]:
    integrations = max(sizes) // per_integration
    peaks: dict[int, list[float]] = {}
    seconds: dict[int, list[float]] = {}
    with (
        private_redis() as redis_url,
        simulator_process(integrations, per_integration) as sim,
    ):
        redis = Redis.from_url(redis_url)
        for _ in range(reps):
            for size in sizes:
                flush(redis)
                ids = sim.integration_ids[: size // per_integration]
                env = bench_env(
                    redis_url,
                    KOMBO_BASE_URL=sim.url,
                    KOMBO_API_KEY=API_KEY,
                    KOMBO_INTEGRATION_IDS=",".join(ids),
                    DISPATCHER_NAMESPACE=NAMESPACE,
                    DISPATCHER_QUEUE=QUEUE,
                    DISPATCHER_LOG_LEVEL="WARNING",
                )
                peak, elapsed, result = poll_once(env)
                if result["orders_new"] != size:
                    new = result["orders_new"]
                    raise SystemExit(f"bench: poll --once enqueued {new} of {size} orders")
                peaks.setdefault(size, []).append(peak)
                seconds.setdefault(size, []).append(elapsed)
        keys = Keys(NAMESPACE)
        seen_bytes = 0
        with redis.pipeline(transaction=False) as pipe:
            for integration_id in ids:
                pipe.memory_usage(keys.seen(integration_id), samples=0)
            seen_bytes = sum(int(x or 0) for x in pipe.execute())
        remembered = sum(int(redis.hlen(keys.seen(i))) for i in ids)
        version = redis_version(redis)

    small, large = min(sizes), max(sizes)
    growth = median(peaks[large]) / median(peaks[small])
    timings = "; ".join(
        f"{size:,} orders: {fmt(median(seconds[size]))} s, {fmt(size / median(seconds[size]))}/s"
        for size in sizes
    )
    return [
        Row(
            bench="poller_rss",
            measure=f"poller peak RSS, `dispatcher poll --once` over {large:,} new orders",
            value=median(peaks[large]),
            unit="MiB",
            baseline=f"the same over {small:,} orders",
            baseline_value=median(peaks[small]),
            ratio=growth,
            ratio_note=f"(peak at {large:,} / peak at {small:,}; 1 = flat)",
            target="flat: <= 1.1x over 10x the orders",
            met=growth <= 1.1,
            detail=f"{per_integration} orders per integration; {timings}; median of {reps}",
            samples=peaks[large],
            baseline_samples=peaks[small],
        ),
        Row(
            bench="poller_rss",
            measure=(
                f"seen store after the real {large:,}-order sweep, {len(ids)} integrations "
                "(MEMORY USAGE)"
            ),
            value=seen_bytes / remembered,
            unit="B/order",
            target="<= 100 B/order",
            met=seen_bytes / remembered <= 100,
            detail=f"{remembered:,} orders remembered, {seen_bytes:,} bytes; Redis {version}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="100000,1000000", help="total orders per sweep")
    parser.add_argument("--per-integration", type=int, default=1000)
    common_args(parser, reps=1)
    args = parser.parse_args()
    sizes = sorted({int(x) for x in args.orders.split(",")})
    if any(size % args.per_integration for size in sizes):
        parser.error("--orders: each size must be a multiple of --per-integration")
    rows = run(sizes, args.per_integration, args.reps)
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
