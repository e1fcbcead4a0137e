"""Full sweep of many integrations with API latency, against a sequential sweep.

    python bench/full_sweep.py [--integrations 1000] [--orders 250] [--latency 0.02]
                               [--concurrency 32] [--baseline-integrations 50,100] [--reps 3]

The simulator serves from another process with ``--latency`` seconds per request; every
integration has ``--orders`` OPEN orders (one page of 250) and a tenth as many closed ones.
Two sweeps are timed: the first one (every order new: parsed, deduped, enqueued) and the
steady-state one (every order already seen).

- the dispatcher: ``Poller.sweep()`` with ``--concurrency`` integrations at a time (the
  ``DISPATCHER_SWEEP_CONCURRENCY`` setting);
- THE SEQUENTIAL BASELINE (below): one integration after another, one request at a time,
  each page handed to the same ``Ledger.dispatch``.

The baseline takes ``integrations x (latency + work)``: about 45 s at full size, per sweep and
per repetition. It is therefore timed on two subsets (``--baseline-integrations A,B``) and
extrapolated linearly to the full size; the per-integration times of the two subsets are
printed to show that it is linear. ``--baseline-integrations`` equal to ``--integrations``
measures it in full.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

from redis import Redis
from rq import Queue

from _support import (
    API_KEY,
    NAMESPACE,
    QUEUE,
    Row,
    common_args,
    flush,
    fmt,
    median,
    private_redis,
    redis_version,
    report,
    simulator_process,
    timed,
)
from dispatcher.kombo import KomboClient
from dispatcher.ledger import Ledger
from dispatcher.poller import Poller

PAGE_SIZE = 250


def sequential_sweep(client: KomboClient, ledger: Ledger, integration_ids: Sequence[str]) -> int:
    """THE SEQUENTIAL BASELINE: one integration after another, one HTTP request at a time."""
    new = 0
    for integration_id in integration_ids:
        for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE):
            new += len(ledger.dispatch(integration_id, page.orders).enqueued)
    return new


def run(
    integrations: int,
    orders: int,
    latency: float,
    concurrency: int,
    subsets: list[int],
    reps: int,
) -> list[Row]:
    total = integrations * orders
    times: dict[tuple[str, int], list[float]] = {}
    with (
        private_redis() as redis_url,
        simulator_process(integrations, orders, latency=latency) as sim,
        KomboClient(API_KEY, sim.url, max_connections=concurrency) as client,
        KomboClient(API_KEY, sim.url, max_connections=1) as one_client,
    ):
        redis = Redis.from_url(redis_url)
        queue = Queue(QUEUE, connection=redis)
        ledger = Ledger(redis, queue, NAMESPACE)
        ids = sim.integration_ids
        poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)

        def check(what: str, got: int, expected: int) -> None:
            if got != expected:
                raise SystemExit(f"bench: {what} enqueued {got} orders, expected {expected}")

        for _ in range(reps):
            flush(redis)
            new = 0
            for kind in ("first", "steady"):
                elapsed, report_ = timed(poller.sweep)
                times.setdefault((kind, integrations), []).append(elapsed)
                new += report_.orders_new
            check("the dispatcher's sweeps", new, total)
            for size in subsets:
                flush(redis)
                new = 0
                sweep_subset = functools.partial(sequential_sweep, one_client, ledger, ids[:size])
                for kind in ("first", "steady"):
                    elapsed, count = timed(sweep_subset)
                    times.setdefault((f"sequential {kind}", size), []).append(elapsed)
                    new += count
                check("the sequential sweeps", new, size * orders)
        version = redis_version(redis)

    rows: list[Row] = []
    small, large = min(subsets), max(subsets)
    for kind, label in (("first", "first sweep, all orders new"), ("steady", "re-sweep, all seen")):
        mine = times[(kind, integrations)]
        t_small = median(times[(f"sequential {kind}", small)])
        t_large = median(times[(f"sequential {kind}", large)])
        if large == integrations:
            baseline = t_large
            how = f"sequential sweep measured at full size ({integrations} integrations)"
        else:
            slope = (t_large - t_small) / (large - small) if large != small else t_large / large
            intercept = t_large - slope * large
            baseline = intercept + slope * integrations
            how = (
                f"sequential sweep EXTRAPOLATED linearly from {small} and {large} integrations: "
                f"{fmt(t_small)} s and {fmt(t_large)} s, i.e. {fmt(t_small / small * 1e3)} and "
                f"{fmt(t_large / large * 1e3)} ms per integration"
            )
        ratio = baseline / median(mine)
        rows.append(
            Row(
                bench="full_sweep",
                measure=(
                    f"{integrations} integrations x {orders} OPEN orders, {latency * 1e3:g} ms "
                    f"per request, {label}"
                ),
                value=median(mine),
                unit="s",
                baseline="sequential sweep (one integration, one request at a time)",
                baseline_value=baseline,
                ratio=ratio,
                ratio_note="(sequential time / dispatcher time)",
                target="<= 1/8 of sequential (ratio >= 8)",
                met=ratio >= 8,
                detail=(
                    f"concurrency {concurrency}; {how}; "
                    f"{fmt(total / median(mine))} orders/s; Redis {version}; median of {reps}"
                ),
                samples=mine,
                baseline_samples=times[(f"sequential {kind}", large)],
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=250, help="OPEN orders per integration")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=32, help="integrations at a time")
    parser.add_argument(
        "--baseline-integrations",
        default="50,100",
        help="two subset sizes on which the sequential sweep is timed (A,B)",
    )
    common_args(parser)
    args = parser.parse_args()
    subsets = sorted({int(x) for x in args.baseline_integrations.split(",")})
    if not subsets or subsets[-1] > args.integrations or subsets[0] < 1:
        parser.error("--baseline-integrations: sizes between 1 and --integrations")
    rows = run(args.integrations, args.orders, args.latency, args.concurrency, subsets, args.reps)
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
