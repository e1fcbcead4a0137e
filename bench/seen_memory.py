"""What the seen store costs in Redis per remembered order.

    python bench/seen_memory.py [--orders 100,1000,100000] [--generation 8760]

Writes N orders of one integration into a private redis-server exactly as the dispatch
script does (``HSETNX`` order id -> "<unix time>:<generation>"), then reads ``MEMORY USAGE``
of the seen hash and prints bytes per order. The generation is that of the last full sweep
that saw the order; the default, 8760, is a year of hourly full sweeps (the value grows by a
digit now and then, and with it the allocation). THE BASELINE is the naive loop's store: a
set of the same ids (``SADD``), which remembers no time and so can never be pruned.

RQ's job hashes are not counted: they expire with the job's result TTL; the seen store is
what stays. MEMORY USAGE is deterministic: one repetition.
"""

from __future__ import annotations

import argparse
import secrets
import string

from redis import Redis

from _support import Row, common_args, private_redis, redis_version, report
from dispatcher.store.keys import Keys

ALPHABET = string.ascii_letters + string.digits
INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"


def kombo_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(24))


def measure(redis: Redis, orders: int, generation: int) -> tuple[int, int]:
    """MEMORY USAGE of the seen hash and of the naive set, for the same ``orders`` ids."""
    redis.flushall()
    seen = Keys("dispatcher").seen(INTEGRATION)
    naive = f"naive:seen:{INTEGRATION}"
    value = f"1764000000:{generation}" if generation else "1764000000"
    with redis.pipeline(transaction=False) as pipe:
        for start in range(0, orders, 1000):
            for _ in range(min(1000, orders - start)):
                order_id = kombo_id()
                pipe.hsetnx(seen, order_id, value)
                pipe.sadd(naive, order_id)
            pipe.execute()
    return (
        int(redis.memory_usage(seen, samples=0) or 0),
        int(redis.memory_usage(naive, samples=0) or 0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="100,1000,100000")
    parser.add_argument(
        "--generation", type=int, default=8760, help="full-sweep generation in the values"
    )
    common_args(parser, reps=1)
    args = parser.parse_args()
    rows: list[Row] = []
    with private_redis() as url:
        redis = Redis.from_url(url)
        version = redis_version(redis)
        print(f"Redis {version}; one integration; 24-character order ids")
        print(f"{'orders':>8}  {'MEMORY USAGE':>12}  {'bytes/order':>11}  {'naive set':>9}")
        for n in (int(x) for x in args.orders.split(",")):
            usage, naive = measure(redis, n, args.generation)
            print(f"{n:>8}  {usage:>12}  {usage / n:>11.1f}  {naive / n:>9.1f}")
            rows.append(
                Row(
                    bench="seen_memory",
                    measure=f"seen store, {n:,} orders in one integration (MEMORY USAGE)",
                    value=usage / n,
                    unit="B/order",
                    baseline="naive SADD set of the same ids",
                    baseline_value=naive / n,
                    ratio=naive / usage,
                    ratio_note="(naive bytes / seen-store bytes; the set keeps no time)",
                    target="<= 100 B/order",
                    met=usage / n <= 100,
                    detail=f"values '<time>:{args.generation}', Redis {version}",
                )
            )
    report(rows[-1:], args.json)


if __name__ == "__main__":
    main()
