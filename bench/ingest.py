"""Ingest of new orders: poll -> dedupe -> enqueue, against two baselines.

    python bench/ingest.py [--integrations 20] [--orders 250] [--reps 3]

The simulator serves from another process over a real socket with no latency; each
repetition starts from an empty Redis, so every order is new. Three contenders ingest the
same orders into the same kind of RQ job:

- the dispatcher: ``Poller.sweep()`` (``Ledger.dispatch`` per page: one HMGET + one Lua
  script), with its default sweep concurrency;
- the naive loop: one integration after another, and per order ``SADD`` then
  ``Queue.enqueue`` (bench/_support.py ``naive_dispatch``);
- RQ's ``enqueue_many`` in one pipeline per page, with no dedupe at all (what the
  dispatcher's atomic dedupe costs on top of RQ's fastest enqueue).

End to end, the three fetch and parse pages with the same ``KomboClient``. The same three
are also timed on pages fetched beforehand (the dedupe-and-enqueue step alone).
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable, Sequence

from redis import Redis
from rq import Queue

from _support import (
    API_KEY,
    NAMESPACE,
    QUEUE,
    Row,
    common_args,
    enqueue_many_dispatch,
    flush,
    median,
    naive_dispatch,
    private_redis,
    queued_count,
    redis_version,
    report,
    simulator_process,
    timed,
)
from dispatcher import tracing
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.models import Order
from dispatcher.poller.poller import Poller
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER

PAGE_SIZE = 250
Pages = list[tuple[str, list[Order]]]


def _fetch_all(client: KomboClient, integration_ids: Sequence[str]) -> Pages:
    return [
        (integration_id, page.orders)
        for integration_id in integration_ids
        for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE)
    ]


def _sequential_e2e(
    client: KomboClient, integration_ids: Sequence[str], step: Callable[[str, list[Order]], int]
) -> int:
    """A baseline end to end: one integration after another, one page at a time."""
    total = 0
    for integration_id in integration_ids:
        for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE):
            total += step(integration_id, page.orders)
    return total


def run(integrations: int, orders: int, reps: int) -> list[Row]:
    concurrency = Settings.model_fields["sweep_concurrency"].default
    total = integrations * orders
    with (
        private_redis() as redis_url,
        simulator_process(integrations, orders) as sim,
        KomboClient(API_KEY, sim.url, max_connections=concurrency) as client,
    ):
        redis = Redis.from_url(redis_url)
        queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
        ledger = Ledger(redis, queue, NAMESPACE)
        ids = sim.integration_ids
        poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)

        def naive(integration_id: str, page: list[Order]) -> int:
            return naive_dispatch(redis, queue, integration_id, page)

        def many(integration_id: str, page: list[Order]) -> int:
            return enqueue_many_dispatch(queue, integration_id, page)

        def dispatch(integration_id: str, page: list[Order]) -> int:
            return len(ledger.dispatch(integration_id, page).enqueued)

        def sweep() -> int:
            return poller.sweep().orders_new

        pages = _fetch_all(client, ids)
        # The harness holds these pages; a poller holds one at a time. Frozen, they are not
        # walked by every garbage collection of the timed code (which would add ~25 us per
        # order to the end-to-end contenders here).
        gc.freeze()
        e2e: dict[str, Callable[[], int]] = {
            "dispatcher": sweep,
            "naive": lambda: _sequential_e2e(client, ids, naive),
            "enqueue_many": lambda: _sequential_e2e(client, ids, many),
        }
        steps: dict[str, Callable[[], int]] = {
            "dispatcher": lambda: sum(dispatch(i, p) for i, p in pages),
            "naive": lambda: sum(naive(i, p) for i, p in pages),
            "enqueue_many": lambda: sum(many(i, p) for i, p in pages),
        }
        seconds: dict[tuple[str, str], list[float]] = {}
        for _ in range(reps):
            # Interleaved, so that a noisy moment hits every contender alike.
            for kind, contenders in (("e2e", e2e), ("step", steps)):
                for name, contender in contenders.items():
                    flush(redis)
                    elapsed, enqueued = timed(contender)
                    if enqueued != total or queued_count(redis) != total:
                        raise SystemExit(
                            f"bench: {name} ({kind}) enqueued {enqueued} / {queued_count(redis)} "
                            f"jobs, expected {total}"
                        )
                    seconds.setdefault((kind, name), []).append(elapsed)
        version = redis_version(redis)

    def rate(kind: str, name: str) -> list[float]:
        return [total / s for s in seconds[(kind, name)]]

    rows: list[Row] = []
    where = {
        "e2e": "end to end (HTTP + parsing + dedupe + enqueue)",
        "step": "dedupe + enqueue step alone (pages fetched beforehand)",
    }
    for kind in ("e2e", "step"):
        subject = rate(kind, "dispatcher")
        for baseline, label, factor in (
            ("naive", "naive SADD + Queue.enqueue loop", 5.0),
            ("enqueue_many", "RQ enqueue_many, one pipeline per page, no dedupe", 0.8),
        ):
            base = rate(kind, baseline)
            ratio = median(subject) / median(base)
            rows.append(
                Row(
                    bench="ingest",
                    measure=f"new orders, {where[kind]}",
                    value=median(subject),
                    unit="orders/s",
                    baseline=label,
                    baseline_value=median(base),
                    ratio=ratio,
                    target=f">= {factor:g}x {baseline}",
                    met=ratio >= factor,
                    detail=(
                        f"{total:,} orders ({integrations} integrations x {orders}), page size "
                        f"{PAGE_SIZE}, sweep concurrency {concurrency}, Redis {version}, "
                        f"median of {reps}"
                    ),
                    samples=subject,
                    baseline_samples=base,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=20)
    parser.add_argument("--orders", type=int, default=250, help="OPEN orders per integration")
    common_args(parser)
    args = parser.parse_args()
    # The poller runs in this process: traced like `dispatcher poll` when OTEL_* asks for it.
    tracing.configure("bench-ingest")
    rows = run(args.integrations, args.orders, args.reps)
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
