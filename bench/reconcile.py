"""What one reconcile pass costs: seconds and Redis commands per pass over N dispatched orders.

    python bench/reconcile.py [--orders 100000] [--baseline-orders 5000] [--reps 3]

N orders of one integration are dispatched into a private redis-server with
``Ledger.dispatch`` (pages of 250, as a sweep does), then put where a day's orders are: 80 %
finished (status finished, in the finished registry, their chain recorded in
``{ns}:provisioned``), 10 % failed (in the failed registry), 10 % still queued. Then
``Reconciler.run`` (store/reconcile.py) passes over them, ``--reps`` times; nothing is lost,
so every pass finds nothing (the first also drops the dispatch records of the orders done,
and is reported apart). Per pass: wall seconds, the Redis commands it sent (``INFO
commandstats`` delta: HSCAN, EVALSHA, LRANGE...), every command Redis ran (the same delta with
the commands the scripts ran), and the longest single command (SLOWLOG with a threshold of
0 us: what any other client may have waited behind).

THE BASELINE checks each order the obvious way, with RQ's API: ``Job.fetch`` and ``job_id in
registry`` for the started, scheduled, deferred and failed registries (one round trip each),
over ``--baseline-orders`` of the same orders; compared per order.
"""

from __future__ import annotations

import argparse
import random
import string
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from _support import (
    NAMESPACE,
    QUEUE,
    Row,
    common_args,
    median,
    private_redis,
    redis_version,
    report,
    timed,
)
from dispatcher.kombo.models import Order, parse_order
from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.ledger import Ledger
from dispatcher.store.reconcile import BATCH, Reconciler
from dispatcher.store.results import Outbox
from dispatcher.store.rq_internals import failed_key, finished_key, queue_key

INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"
_ALPHABET = string.ascii_letters + string.digits
# The commands the reconciler sends itself (the rest of a delta ran inside its scripts).
_CLIENT_COMMANDS = ("evalsha", "eval", "hscan", "zscan", "lrange", "smembers", "script|load")


def _order(rng: random.Random, n: int) -> Order:
    order_id = "".join(rng.choice(_ALPHABET) for _ in range(24))
    return parse_order(
        {
            "id": order_id,
            "package_id": "typescript_test",
            "status": "OPEN",
            "candidate": {
                "first_name": "Ada",
                "last_name": f"Lovelace {n}",
                "email": f"ada{n}@example.com",
            },
            "application": {"id": f"app-{n}"},
            "job": {"id": "job-1", "name": "Engineer", "hiring_team": []},
        }
    )


def populate(redis: Redis, orders: int, seed: int = 1) -> tuple[Ledger, list[tuple[str, str]]]:
    """Dispatch ``orders`` orders and put them where a day's orders are (module doc)."""
    redis.flushall()
    rng = random.Random(seed)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NAMESPACE)
    dispatched: list[tuple[str, str]] = []
    for start in range(0, orders, 250):
        page = [_order(rng, n) for n in range(start, min(orders, start + 250))]
        ledger.dispatch(INTEGRATION, page)
        dispatched.extend((o.id, ledger.job_id(INTEGRATION, o.id)) for o in page)
    keys = Keys(NAMESPACE)
    queued = [job_id for n, (_, job_id) in enumerate(dispatched) if n % 10 == 9]
    redis.delete(queue_key(QUEUE))
    with redis.pipeline(transaction=False) as pipe:
        for n, (order_id, job_id) in enumerate(dispatched):
            if n % 10 == 8:
                pipe.hset(f"rq:job:{job_id}", "status", "failed")
                pipe.zadd(failed_key(QUEUE), {job_id: 4e9})
            elif n % 10 != 9:
                pipe.hset(f"rq:job:{job_id}", "status", "finished")
                pipe.zadd(finished_key(QUEUE), {job_id: 4e9})
                pipe.zadd(keys.provisioned, {order_ref(INTEGRATION, order_id): 1.7e9})
            if n % 1000 == 999:
                pipe.execute()
        for start in range(0, len(queued), 1000):
            pipe.rpush(queue_key(QUEUE), *queued[start : start + 1000])
        pipe.execute()
    return ledger, dispatched


def _commands(redis: Redis) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per command since the server started."""
    return {
        name.removeprefix("cmdstat_"): (int(stats["calls"]), int(stats["usec"]))
        for name, stats in redis.info("commandstats").items()
    }


def one_pass(redis: Redis, reconciler: Reconciler) -> dict[str, Any]:
    """Time one pass; count its commands; its longest single command (microseconds)."""
    redis.slowlog_reset()
    before = _commands(redis)
    seconds, found = timed(lambda: reconciler.run())
    after = _commands(redis)
    delta = {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}
    delta["info"] = 0  # our own INFO
    scripts = delta.get("evalsha", 0)
    script_us = after.get("evalsha", (0, 0))[1] - before.get("evalsha", (0, 0))[1]
    slowest = max(
        (
            int(entry["duration"])
            for entry in redis.slowlog_get(100_000)
            if not str(entry["command"]).upper().startswith(("SLOWLOG", "INFO"))
        ),
        default=0,
    )
    assert not found.findings, found.findings  # nothing is lost: nothing to repair
    return {
        "seconds": seconds,
        "client": sum(delta.get(name, 0) for name in _CLIENT_COMMANDS),
        "all": sum(v for k, v in delta.items() if not k.startswith("slowlog")),
        "script_us": script_us / scripts if scripts else 0.0,
        "slowest_us": slowest,
        "checked": found.orders_checked,
    }


def naive_pass(redis: Redis, dispatched: list[tuple[str, str]]) -> float:
    """The baseline's seconds per order: RQ's API, one round trip per question."""
    queue = Queue(QUEUE, connection=redis)
    registries = [
        StartedJobRegistry(queue=queue),
        ScheduledJobRegistry(queue=queue),
        DeferredJobRegistry(queue=queue),
        FailedJobRegistry(queue=queue),
    ]

    def check() -> int:
        lost = 0
        for _, job_id in dispatched:
            try:
                status = Job.fetch(job_id, connection=redis).get_status(refresh=False)
            except NoSuchJobError:
                lost += 1
                continue
            if status == "finished":
                continue
            if not any(job_id in registry for registry in registries):
                lost += status != "queued"
        return lost

    seconds, _ = timed(check)
    return seconds / len(dispatched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--baseline-orders", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=BATCH, help="orders per first-look script")
    common_args(parser, reps=3)
    args = parser.parse_args()
    with private_redis() as url:
        redis = Redis.from_url(url)
        redis.config_set("slowlog-log-slower-than", 0)
        redis.config_set("slowlog-max-len", 200_000)
        ledger, dispatched = populate(redis, args.orders)
        reconciler = Reconciler(
            ledger, Outbox(redis, NAMESPACE, f"{NAMESPACE}-results"), ["log"], grace=0.0,
            batch=args.batch,
        )  # fmt: skip
        first = one_pass(redis, reconciler)
        passes = [one_pass(redis, reconciler) for _ in range(args.reps)]
        naive = [naive_pass(redis, dispatched[: args.baseline_orders]) for _ in range(args.reps)]
        version = redis_version(redis)
    n = args.orders
    seconds = [p["seconds"] for p in passes]
    per_order = median(seconds) / n
    baseline = median(naive)
    header = (
        f"Redis {version}; {n:,} dispatched orders in one integration (80 % finished, "
        f"10 % failed, 10 % queued); batches of {args.batch}\n"
        f"first pass (drops the dispatch records of the orders done): "
        f"{first['seconds']:.2f} s, {first['client']:,} commands sent, {first['all']:,} run"
    )
    rows = [
        Row(
            bench="reconcile",
            measure=f"one pass over {n:,} dispatched orders (wall)",
            value=median(seconds),
            unit="s",
            target="reported",
            samples=seconds,
            detail=f"{per_order * 1e6:.1f} us per order",
        ),
        Row(
            bench="reconcile",
            measure=f"time per order checked, pass over {n:,} orders",
            value=per_order * 1e6,
            unit="us",
            baseline=f"RQ's API per order (Job.fetch + 4 registries), {args.baseline_orders:,} "
            "orders",
            baseline_value=baseline * 1e6,
            ratio=baseline / per_order,
            ratio_note="(baseline time / reconciler time)",
            target="reported",
            samples=[s / n * 1e6 for s in seconds],
            baseline_samples=[s * 1e6 for s in naive],
        ),
        Row(
            bench="reconcile",
            measure=f"Redis commands sent per pass over {n:,} orders",
            value=float(median([p["client"] for p in passes])),
            unit="commands",
            target="reported",
            detail=f"run in all, scripts' commands included: "
            f"{median([p['all'] for p in passes]):,.0f}",
        ),
        Row(
            bench="reconcile",
            measure=f"mean time of one first-look script ({args.batch} orders), in Redis",
            value=median([p["script_us"] for p in passes]),
            unit="us",
            target="reported",
            detail="INFO commandstats usec / calls of EVALSHA",
        ),
        Row(
            bench="reconcile",
            measure=f"longest single Redis command of a pass over {n:,} orders",
            value=float(max(p["slowest_us"] for p in passes)),
            unit="us",
            target="reported",
            detail="SLOWLOG at 0 us: what another client may wait behind",
        ),
    ]
    report(rows, args.json, header=header)


if __name__ == "__main__":
    main()
