"""Scale test: a fleet of pollers sweeping many integrations, each order dispatched once.

    python bench/fleet_scale.py [--integrations 1000] [--orders 250] [--latency 0.02] [--pollers 2,4]

Per fleet size: a private redis-server, the simulator as its own process (1,000 integrations
x 250 OPEN orders, 20 ms per request), the integrations registered with
`dispatcher integrations add`, N `dispatcher poll` processes started together. Reports the
time until every order is enqueued, checks that every order was enqueued exactly once and
that no integration was swept twice (each has had exactly one full sweep), and shows the
sequential baseline's latency floor (one request at a time: integrations x pages x latency).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from redis import Redis

from _support import free_port, private_redis, queued_count, queued_job_ids

QUEUE = "dispatcher-orders"


def run(pollers: int, integrations: int, orders: int, latency: float) -> dict[str, float]:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "sim", "--port", str(port),
         "--integrations", str(integrations), "--orders", str(orders), "--closed", "0",
         "--latency", str(latency)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ids: list[str] = []
    assert sim.stderr is not None
    for line in sim.stderr:
        if line.startswith("export KOMBO_INTEGRATION_IDS="):
            ids = line.strip().split("=", 1)[1].split(",")
            break
    # Keep reading what the simulator says: a full pipe would block its next write, and then
    # its exit on SIGINT (a loaded CI machine waited 30 s for it).
    threading.Thread(target=sim.stderr.read, daemon=True).start()
    time.sleep(0.5)
    with private_redis() as url:
        redis = Redis.from_url(url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "DISPATCHER_"))},
            "REDIS_URL": url,
            "KOMBO_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "KOMBO_API_KEY": "sim-api-key",
            "DISPATCHER_POLL_INTERVAL": "3600",  # the whole run is one interval
            "DISPATCHER_SWEEP_CONCURRENCY": "16",
            "DISPATCHER_LOG_LEVEL": "WARNING",
        }
        for start in range(0, len(ids), 200):
            subprocess.run(
                [sys.executable, "-m", "dispatcher", "integrations", "add", *ids[start : start + 200]],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
        # Everyone due now: the spread over the interval is for steady state, not for this test.
        redis.zadd("dispatcher:schedule", dict.fromkeys(ids, 0))
        total = integrations * orders
        started = time.monotonic()
        procs = [
            subprocess.Popen([sys.executable, "-m", "dispatcher", "poll"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(pollers)
        ]  # fmt: skip
        try:
            while queued_count(redis, QUEUE) < total and time.monotonic() - started < 900:
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            time.sleep(1)  # anything doubled would show now
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
        job_ids = queued_job_ids(redis, QUEUE)
        generations = [int(redis.hget(f"dispatcher:sweep:{i}", "generation") or 0) for i in ids]
        memory = int(redis.info("memory")["used_memory"])
    sim.send_signal(signal.SIGTERM)  # SIGINT is ignored when the run was started in the background
    sim.wait(30)
    return {
        "pollers": pollers,
        "orders": total,
        "enqueued": len(job_ids),
        "unique": len(set(job_ids)),
        "swept_twice": sum(1 for g in generations if g > 1),
        "never_swept": sum(1 for g in generations if g == 0),
        "seconds": round(elapsed, 1),
        "orders_per_second": round(total / elapsed),
        "redis_mb": round(memory / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=250)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--pollers", default="2,4")
    args = parser.parse_args()
    pages = -(-args.orders // 250)
    floor = args.integrations * pages * args.latency
    print(
        f"{args.integrations} integrations x {args.orders} OPEN orders, {args.latency * 1000:.0f} ms "
        f"per request; sequential baseline's latency floor: {floor:.0f} s ({os.cpu_count()} CPUs)"
    )
    print(
        "| pollers | orders | enqueued | unique | swept twice | never swept | seconds | orders/s | Redis MB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ok = True
    for n in (int(x) for x in re.split(r"[, ]+", args.pollers)):
        r = run(n, args.integrations, args.orders, args.latency)
        print("| " + " | ".join(str(r[k]) for k in (
            "pollers", "orders", "enqueued", "unique", "swept_twice", "never_swept", "seconds",
            "orders_per_second", "redis_mb")) + " |", flush=True)  # fmt: skip
        ok &= r["enqueued"] == r["unique"] == r["orders"] and not r["swept_twice"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
