"""What the seen store costs in Redis per remembered order.

    python bench/seen_memory.py [--orders 1000,100000]

Dispatches N orders of one integration into a private redis-server, then reads
``MEMORY USAGE`` of the seen hash (and the growth of ``used_memory``, for the hash alone)
and prints bytes per order. RQ's job hashes are not counted: they expire with the job's
result TTL; the seen store is what stays.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from redis import Redis

from _support import private_redis
from dispatcher.keys import Keys

ALPHABET = string.ascii_letters + string.digits


def kombo_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(24))


def measure(redis: Redis, orders: int) -> tuple[int, float]:
    redis.flushall()
    key = Keys("dispatcher").seen("greenhouse:HWUTwvyx2wLoSUHphiWVrp28")
    before = int(redis.info("memory")["used_memory"])
    now = "1764000000:12"  # first seen : generation of the last full sweep (what the script writes)
    with redis.pipeline(transaction=False) as pipe:
        for start in range(0, orders, 1000):
            # Exactly what the dispatch script writes: HSETNX order id -> unix time.
            for _ in range(min(1000, orders - start)):
                pipe.hsetnx(key, kombo_id(), now)
            pipe.execute()
    after = int(redis.info("memory")["used_memory"])
    usage = int(redis.memory_usage(key, samples=0) or 0)
    return usage, (after - before) / orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="100,1000,100000")
    args = parser.parse_args()
    with private_redis() as url:
        redis = Redis.from_url(url)
        version = redis.info("server")["redis_version"]
        print(f"Redis {version}; one integration; 24-character order ids")
        print(
            f"{'orders':>8}  {'MEMORY USAGE':>12}  {'bytes/order':>11}  {'used_memory Δ/order':>19}"
        )
        for n in (int(x) for x in args.orders.split(",")):
            usage, delta = measure(redis, n)
            print(f"{n:>8}  {usage:>12}  {usage / n:>11.1f}  {delta:>19.1f}")


if __name__ == "__main__":
    main()
