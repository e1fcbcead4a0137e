"""Full sweep of many integrations with API latency, against a sequential sweep.

    python bench/full_sweep.py [--integrations 1000] [--orders 250,20] [--latency 0.02]
                               [--concurrency 16] [--baseline-integrations 25,50] [--reps 2]

The simulator serves from another process with ``--latency`` seconds per request; every
integration has ``--orders`` OPEN orders (one page of at most 250) and a tenth as many closed
ones. Two sweeps are timed: the first one (every order new: parsed, deduped, enqueued) and the
steady-state one (every order already seen; the mean of three, as one full sweep in three
renews the orders' generation marks); then the fleet's incremental sweep. With 250
orders a sweep is bound by the poller's CPU (its detail says how much per integration); the
second scenario, 20 orders per integration, is bound by the latency.

- the dispatcher: ``Poller.sweep()`` with ``--concurrency`` integrations at a time (the
  ``DISPATCHER_SWEEP_CONCURRENCY`` setting); then ``--processes`` (2) poller processes, each
  sweeping its share as ``dispatcher poll --once --processes 2`` does: one Python process
  cannot use more than one core, and a sweep of 250-order pages is CPU-bound;
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
import gc
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

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
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.poller import Poller
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger

PAGE_SIZE = 250
# A full sweep renews the seen orders' generation marks one sweep in
# DISPATCHER_PRUNE_AFTER_SWEEPS (3): the steady state is the mean of that many re-sweeps.
CYCLE = Settings.model_fields["prune_after_sweeps"].default


def sequential_sweep(client: KomboClient, ledger: Ledger, integration_ids: Sequence[str]) -> int:
    """THE SEQUENTIAL BASELINE: one integration after another, one HTTP request at a time."""
    new = 0
    for integration_id in integration_ids:
        for page in client.iter_order_pages(integration_id, page_size=PAGE_SIZE):
            # The page as the client gives it, as the poller hands it on: the same work per
            # page on both sides, so that the ratio measures what concurrency buys.
            new += len(ledger.dispatch(integration_id, page.results).enqueued)
    return new


def _incremental(poller: Poller, ids: Sequence[str], concurrency: int) -> int:
    with ThreadPoolExecutor(concurrency) as pool:
        done = pool.map(lambda i: poller.sweep_integration(i, full=False), ids)
        return sum(one.orders_new for one in done)


class _PollerProcesses:
    """``processes`` poller processes, each sweeping its share of the integrations as
    ``dispatcher poll --once --processes N`` has them do; started (forked) once, outside the
    timings, as a fleet's pollers are long-lived."""

    def __init__(
        self, processes: int, redis_url: str, sim_url: str, ids: list[str], concurrency: int
    ) -> None:
        context = multiprocessing.get_context("fork")
        self._orders: list[Connection] = []
        self._processes = []
        for index in range(processes):
            mine, theirs = context.Pipe()
            args = (theirs, (index, processes), redis_url, sim_url, ids, concurrency)
            process = context.Process(target=_poller_process, args=args, daemon=True)
            process.start()
            self._orders.append(mine)
            self._processes.append(process)
        for pipe in self._orders:
            pipe.recv()  # set up

    def sweep(self, times: int) -> int:
        for pipe in self._orders:
            pipe.send(times)
        return sum(int(pipe.recv()) for pipe in self._orders)

    def __enter__(self) -> _PollerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self._orders:
            pipe.send(0)
        for process in self._processes:
            process.join(30)


def _poller_process(
    pipe: Connection,
    share: tuple[int, int],
    redis_url: str,
    sim_url: str,
    ids: list[str],
    concurrency: int,
) -> None:
    redis = Redis.from_url(redis_url)
    ledger = Ledger(redis, Queue(QUEUE, connection=redis), NAMESPACE)
    with KomboClient(API_KEY, sim_url, max_connections=concurrency) as client:
        poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)
        gc.freeze()
        pipe.send("ready")
        while times := int(pipe.recv()):
            pipe.send(sum(poller.sweep(share=share).orders_new for _ in range(times)))


def _measure(
    integrations: int,
    orders: int,
    latency: float,
    concurrency: int,
    subsets: list[int],
    reps: int,
    processes: int,
) -> tuple[dict[tuple[str, int], list[float]], str]:
    """Seconds of each sweep by (kind, integrations); the dispatcher's CPU seconds too."""
    times: dict[tuple[str, int], list[float]] = {}
    with (
        private_redis() as redis_url,
        simulator_process(integrations, orders, latency=latency) as sim,
        KomboClient(API_KEY, sim.url, max_connections=concurrency) as client,
        KomboClient(API_KEY, sim.url, max_connections=1) as one_client,
    ):
        redis = Redis.from_url(redis_url)
        ledger = Ledger(redis, Queue(QUEUE, connection=redis), NAMESPACE)
        ids = sim.integration_ids
        poller = Poller(client, ledger, ids, page_size=PAGE_SIZE, concurrency=concurrency)
        gc.freeze()  # as `dispatcher poll` does once it is set up

        def check(what: str, got: int, expected: int) -> None:
            if got != expected:
                raise SystemExit(f"bench: {what} enqueued {got} orders, expected {expected}")

        def record(kind: str, size: int, seconds: float) -> None:
            times.setdefault((kind, size), []).append(seconds)

        for _ in range(reps):
            flush(redis)
            new = 0
            for kind, sweeps in (("first", 1), ("steady", CYCLE)):
                cpu = time.process_time()
                elapsed, new_ = timed(
                    lambda n=sweeps: sum(poller.sweep().orders_new for _ in range(n))
                )
                record(kind, integrations, elapsed / sweeps)
                record(f"{kind} cpu", integrations, (time.process_time() - cpu) / sweeps)
                new += new_
            elapsed, count = timed(lambda: _incremental(poller, ids, concurrency))
            record("incremental", integrations, elapsed)
            check("the dispatcher's sweeps", new + count, integrations * orders)
            if processes > 1:
                flush(redis)
                with _PollerProcesses(processes, redis_url, sim.url, ids, concurrency) as fleet:
                    new = 0
                    for kind, sweeps in (("first", 1), ("steady", CYCLE)):
                        elapsed, new_ = timed(lambda n=sweeps: fleet.sweep(n))
                        record(f"{kind} x{processes}", integrations, elapsed / sweeps)
                        new += new_
                check(f"{processes} processes' sweeps", new, integrations * orders)
            for size in subsets:
                flush(redis)
                new = 0
                sweep_subset = functools.partial(sequential_sweep, one_client, ledger, ids[:size])
                for kind in ("first", "steady"):
                    elapsed, count = timed(sweep_subset)
                    record(f"sequential {kind}", size, elapsed)
                    new += count
                check("the sequential sweeps", new, size * orders)
        return times, redis_version(redis)


def _baseline(
    times: dict[tuple[str, int], list[float]], kind: str, subsets: list[int], integrations: int
) -> tuple[float, str]:
    """The sequential sweep's time at full size: measured, or extrapolated from two sizes."""
    small, large = min(subsets), max(subsets)
    t_small = median(times[(f"sequential {kind}", small)])
    t_large = median(times[(f"sequential {kind}", large)])
    if large == integrations:
        return t_large, f"sequential sweep measured at full size ({integrations} integrations)"
    slope = (t_large - t_small) / (large - small) if large != small else t_large / large
    baseline = t_large - slope * large + slope * integrations
    return baseline, (
        f"sequential sweep EXTRAPOLATED linearly from {small} and {large} integrations: "
        f"{fmt(t_small)} s and {fmt(t_large)} s, i.e. {fmt(t_small / small * 1e3)} and "
        f"{fmt(t_large / large * 1e3)} ms per integration"
    )


def run(
    integrations: int,
    orders: int,
    latency: float,
    concurrency: int,
    subsets: list[int],
    reps: int,
    processes: int,
) -> list[Row]:
    times, version = _measure(integrations, orders, latency, concurrency, subsets, reps, processes)
    scenario = f"{integrations} integrations x {orders} OPEN orders, {latency * 1e3:g} ms/request"
    rows: list[Row] = []
    kinds = [
        ("first", "first sweep, all new", 1),
        ("steady", f"re-sweep, all seen (mean of {CYCLE})", 1),
    ]
    if processes > 1:
        kinds += [
            ("first", f"first sweep, all new, {processes} poller processes", processes),
            ("steady", f"re-sweep, all seen (mean of {CYCLE}), {processes} poller processes",
             processes),
        ]  # fmt: skip
    for kind, label, n in kinds:
        mine = times[(kind if n == 1 else f"{kind} x{n}", integrations)]
        baseline, how = _baseline(times, kind, subsets, integrations)
        cpu = median(times[(f"{kind} cpu", integrations)]) / integrations
        how_swept = (
            f"`Poller.sweep()`, concurrency {concurrency}; poller CPU {cpu * 1e3:.1f} ms per "
            f"integration (latency {latency * 1e3:g} ms)"
            if n == 1
            else f"{n} processes each sweeping a share, as `dispatcher poll --once --processes "
            f"{n}` (started beforehand, as a fleet's pollers are), concurrency {concurrency} each"
        )
        ratio = baseline / median(mine)
        rows.append(
            Row(
                bench="full_sweep",
                measure=f"{scenario}, {label}",
                value=median(mine),
                unit="s",
                baseline="sequential sweep (one integration, one request at a time)",
                baseline_value=baseline,
                ratio=ratio,
                ratio_note="(sequential time / dispatcher time)",
                target="<= 1/8 of sequential (ratio >= 8)",
                met=ratio >= 8,
                detail=f"{how_swept}; {how}; Redis {version}; median of {reps}",
                samples=mine,
                baseline_samples=times[(f"sequential {kind}", max(subsets))],
            )
        )
    mine = times[("incremental", integrations)]
    baseline, how = _baseline(times, "steady", subsets, integrations)
    rows.append(
        Row(
            bench="full_sweep",
            measure=(
                f"{scenario}, the fleet's incremental re-sweep (orders created since the "
                "last sweep: one request per integration)"
            ),
            value=median(mine),
            unit="s",
            baseline="sequential full re-sweep",
            baseline_value=baseline,
            ratio=baseline / median(mine),
            ratio_note="(not like for like: the incremental sweep asks for less)",
            target="reported",
            detail=f"concurrency {concurrency}; median of {reps}",
            samples=mine,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument(
        "--orders",
        default="250,20",
        help="OPEN orders per integration; several (comma-separated) measure several scenarios",
    )
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=16, help="integrations at a time")
    parser.add_argument(
        "--baseline-integrations",
        default="25,50",
        help="two subset sizes on which the sequential sweep is timed (A,B)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also time the sweeps with this many poller processes (1: not)",
    )
    common_args(parser, reps=2)
    args = parser.parse_args()
    subsets = sorted({int(x) for x in args.baseline_integrations.split(",")})
    if not subsets or subsets[-1] > args.integrations or subsets[0] < 1:
        parser.error("--baseline-integrations: sizes between 1 and --integrations")
    rows: list[Row] = []
    for orders in (int(x) for x in args.orders.split(",")):
        rows += run(
            args.integrations,
            orders,
            args.latency,
            args.concurrency,
            subsets,
            args.reps,
            args.processes,
        )
    report(rows, args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
