"""Re-sweep of orders already seen: the dedupe step, and end to end.

    python bench/resweep.py [--integrations 20] [--orders 1000] [--reps 5]

Every order has been dispatched once before the clock starts; a re-sweep must find that out
and enqueue nothing. Kombo keeps an order OPEN for days, so this is what almost every sweep
is.

The dedupe step alone, on pages fetched beforehand:

- the dispatcher's ``Ledger.dispatch`` as an incremental sweep calls it (no generation: one
  ``HMGET`` per page), and as a full sweep calls it (a new generation: the ``HMGET``, and on
  one full sweep in three a script per page renewing the orders' generation marks, which
  pruning reads). Full sweeps are timed in whole cycles of three, so the renewal is paid in
  full: the figure is the mean cost of a full sweep;
- the naive loop's dedupe: one ``SADD`` per order (bench/_support.py ``naive_dispatch``).

End to end (HTTP and parsing included, simulator in another process, no latency):
``Poller.sweep()`` (what ``dispatcher poll --once`` runs: full sweeps, concurrently; also
timed in cycles of three) against
the naive loop (one integration after another, ``SADD`` per order). The fleet's incremental
sweep is timed too: it asks Kombo only for orders created since the last sweep, so a re-sweep
costs one request per integration.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from rq import Queue

from _support import (
    API_KEY,
    NAMESPACE,
    QUEUE,
    Row,
    common_args,
    flush,
    median,
    naive_dispatch,
    naive_seen_key,
    private_redis,
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
from dispatcher.store.ledger import Ledger

PAGE_SIZE = 250
# A full sweep renews an order's generation mark one sweep in DISPATCHER_PRUNE_AFTER_SWEEPS
# (3): full sweeps are timed in whole cycles of that many.
CYCLE = Settings.model_fields["prune_after_sweeps"].default


Pages = list[tuple[str, list[Order]]]


def _contenders(
    redis: Redis, poller: Poller, pages: Pages, concurrency: int
) -> dict[str, Callable[[], int]]:
    """Each contender re-sweeps and returns how many orders it enqueued (must be 0)."""
    ledger, client = poller.ledger, poller.client
    ids = list(dict.fromkeys(integration_id for integration_id, _ in pages))

    def incremental_step() -> int:
        return sum(len(ledger.dispatch(i, p).enqueued) for i, p in pages)

    def naive_step() -> int:
        new = 0
        for integration_id, page in pages:
            key = naive_seen_key(integration_id)
            for order in page:
                new += redis.sadd(key, order.id)
        return new

    def naive_e2e() -> int:
        new = 0
        for integration_id in ids:
            for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE):
                new += naive_dispatch(redis, ledger.queue, integration_id, page.orders)
        return new

    def incremental_e2e() -> int:
        with ThreadPoolExecutor(concurrency) as pool:
            done = pool.map(lambda i: poller.sweep_integration(i, full=False), ids)
            return sum(one.orders_new for one in done)

    return {
        "incremental step": incremental_step,
        "full step": lambda: _full_sweep_cycle(redis, ledger, ids, pages),
        "naive step": naive_step,
        "sweep": lambda: sum(poller.sweep().orders_new for _ in range(CYCLE)),
        "incremental sweep": incremental_e2e,
        "naive sweep": naive_e2e,
    }


def _full_sweep_cycle(redis: Redis, ledger: Ledger, ids: list[str], pages: Pages) -> int:
    """CYCLE full sweeps' dedupe steps. The generations are the next of the integrations'
    own count, as the poller's full sweeps number them (they share it, so each finds the
    marks the other left)."""
    new = 0
    for _ in range(CYCLE):
        generation = 1 + max(_generation(redis, ledger, i) for i in ids)
        for integration_id, page in pages:
            new += len(
                ledger.dispatch(
                    integration_id, page, generation=generation, keep_generations=CYCLE
                ).enqueued
            )
        for integration_id in ids:
            redis.hset(ledger.keys.sweep(integration_id), "generation", generation)
    return new


def _generation(redis: Redis, ledger: Ledger, integration_id: str) -> int:
    return int(redis.hget(ledger.keys.sweep(integration_id), "generation") or 0)


def _measure(integrations: int, orders: int, reps: int) -> tuple[dict[str, list[float]], str]:
    concurrency = Settings.model_fields["sweep_concurrency"].default
    total = integrations * orders
    with (
        private_redis() as redis_url,
        simulator_process(integrations, orders) as sim,
        KomboClient(API_KEY, sim.url, max_connections=concurrency) as client,
    ):
        redis = Redis.from_url(redis_url)
        queue = Queue(QUEUE, connection=redis)
        ledger = Ledger(redis, queue, NAMESPACE)
        ids = sim.integration_ids
        poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)
        pages: Pages = [
            (integration_id, page.orders)
            for integration_id in ids
            for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE)
        ]
        # The harness holds these pages; a poller holds one at a time. Frozen, they are not
        # walked by every garbage collection of the timed code (which would add ~25 us per
        # order to the end-to-end contenders here).
        gc.freeze()
        # Every order seen once, by the dispatcher and by the naive loop (its own set).
        flush(redis)
        first = poller.sweep()
        for integration_id, page in pages:
            naive_dispatch(redis, queue, integration_id, page)
        if first.orders_new != total or queued_count(redis) != 2 * total:
            raise SystemExit(
                f"bench: setup enqueued {queued_count(redis)} jobs, expected {2 * total}"
            )
        contenders = _contenders(redis, poller, pages, concurrency)
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(reps):
            for name, contender in contenders.items():
                elapsed, new = timed(contender)
                if new != 0:
                    raise SystemExit(f"bench: {name} enqueued {new} orders on a re-sweep")
                seconds[name].append(elapsed)
        if queued_count(redis) != 2 * total:
            raise SystemExit("bench: a re-sweep enqueued something")
        return seconds, redis_version(redis)


def run(integrations: int, orders: int, reps: int) -> list[Row]:
    concurrency = Settings.model_fields["sweep_concurrency"].default
    total = integrations * orders
    seconds, version = _measure(integrations, orders, reps)

    def per_order_us(name: str) -> list[float]:
        sweeps = CYCLE if name in ("full step", "sweep") else 1
        return [s / (total * sweeps) * 1e6 for s in seconds[name]]

    detail = (
        f"{total:,} orders seen before ({integrations} integrations x {orders}), page size "
        f"{PAGE_SIZE}, Redis {version}, median of {reps}"
    )
    rows: list[Row] = []
    naive_step_us = per_order_us("naive step")
    for name, label in (
        ("incremental step", "dedupe step, incremental sweep (HMGET per page)"),
        ("full step", "dedupe step, full sweep (HMGET; marks renewed one sweep in 3)"),
    ):
        mine = per_order_us(name)
        ratio = median(naive_step_us) / median(mine)
        rows.append(
            Row(
                bench="resweep",
                measure=label,
                value=median(mine),
                unit="us/order",
                baseline="naive SADD per order",
                baseline_value=median(naive_step_us),
                ratio=ratio,
                target=">= 30x naive",
                met=ratio >= 30,
                detail=detail,
                samples=mine,
                baseline_samples=naive_step_us,
            )
        )
    naive_e2e_us = per_order_us("naive sweep")
    for name, label in (
        ("sweep", f"end to end, Poller.sweep() (full, concurrency {concurrency}, mean of {CYCLE})"),
        ("incremental sweep", "end to end, fleet incremental sweep (1 request/integration)"),
    ):
        mine = per_order_us(name)
        rows.append(
            Row(
                bench="resweep",
                measure=label,
                value=median(mine),
                unit="us/order",
                baseline="naive loop: sequential fetch + SADD per order",
                baseline_value=median(naive_e2e_us),
                ratio=median(naive_e2e_us) / median(mine),
                target="reported",
                detail=detail,
                samples=mine,
                baseline_samples=naive_e2e_us,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=20)
    parser.add_argument("--orders", type=int, default=1000, help="OPEN orders per integration")
    common_args(parser, reps=5)
    args = parser.parse_args()
    rows = run(args.integrations, args.orders, args.reps)
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
