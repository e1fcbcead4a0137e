"""Dispatch throughput with handlers that wait on I/O, against one default ``rq worker``.

    python bench/dispatch.py [--processes 32] [--orders 600] [--baseline-orders 20]
                             [--delay 0.1] [--modes inprocess,fork,threads,dramatiq] [--reps 3]
                             [--threads 50] [--threaded-processes 2] [--warmup-rounds 2]

The chain is the built-in ``provision_http`` handler posting each order to a local vendor
API (bench/_vendor_server.py, another process) that answers after ``--delay`` seconds: each
step waits 100 ms on a real socket, as on a slow vendor API.

- the dispatcher: ``dispatcher worker --processes N`` (RQ's worker pool of the dispatcher's
  workers), as deployed, in both worker modes: ``DISPATCHER_FORK_PER_JOB=false`` (each job
  in its worker process) and the default (RQ's work horse forked per job);
- the threaded worker: ``dispatcher worker --processes P --threads T``
  (``--threaded-processes``, ``--threads``), each process running T jobs at once;
- THE BASELINE: one default ``rq worker`` process on the same queue and job function;
- THE DRAMATIQ BASELINE (``dramatiq`` mode, beside ``threads``; bench/_dramatiq_baseline.py):
  ``dramatiq`` with the threaded mode's process and thread counts on jobs that sleep
  ``--delay``, on the same private Redis in its own namespace, timed the same way. It needs
  the optional ``bench`` extra (``pip install -e '.[bench]'``); without it the mode is skipped.

Memory is the RSS and PSS (``/proc/<pid>/smaps_rollup``: shared pages split between the
processes sharing them) of the whole worker process tree, the peak of samples taken every
half second while the batch runs.

Another integration's wait behind a burst is bench/fairness.py's.

Workers are started first and waited for (start-up is not measured), then given an untimed
warm-up of ``--warmup-rounds`` jobs per thread or process (2 by default; dramatiq too): a
worker that has been running has its connections made and its first calls' imports done, and
a few thousand orders are not enough to spread a cold start thin. Then the orders are
enqueued at once (``Ledger.dispatch``) and the clock runs until every job has finished.
Per-order overhead is the time a worker process spends per order beyond the ``--delay`` wait
(N x wall / orders - delay), split into the part inside the job (started_at..ended_at: step
records, the handler's HTTP client) and outside it (dequeue, fork of the work horse,
registries). CPU per order is that of the whole worker process tree, from /proc.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

import _dramatiq_baseline as dramatiq_baseline
from _support import (
    NAMESPACE,
    QUEUE,
    Row,
    bench_env,
    common_args,
    dependency_versions,
    flush,
    median,
    private_redis,
    report,
    stop_group,
    tree_cpu_seconds,
    tree_memory,
    vendor_process,
)
from dispatcher.kombo.models import Order
from dispatcher.store.fair import FairOptions
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator


@dataclass
class Run:
    """One timed batch through one worker set-up."""

    orders: int
    wall: float
    cpu: float
    in_job: float  # mean seconds from a job's started_at to its ended_at
    rss: float = 0.0  # peak bytes, whole worker process tree
    pss: float = 0.0


def _orders(count: int, seed: int = 7) -> tuple[str, list[Order]]:
    sim = Simulator(1, count, closed=0, seed=seed)
    integration_id = sim.integration_ids[0]
    return integration_id, [Order.model_validate(o) for o in sim.orders(integration_id)]


def _run_batch(
    redis: Redis,
    command: list[str],
    env: dict[str, str],
    workers: int,
    orders: int,
    job_options: JobOptions | None = None,
    warmup: int = 0,
) -> Run:
    flush(redis)
    queue = Queue(QUEUE, connection=redis)
    integration_id, batch = _orders(orders)
    ledger = Ledger(redis, queue, NAMESPACE, job_options=job_options)
    workdir = tempfile.mkdtemp(prefix="bench-worker-")  # no stray .env is read
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while Worker.count(connection=redis) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: {command[:3]} did not start {workers} workers")
            time.sleep(0.05)
        finished = FinishedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        if warmup:
            # Untimed: each thread makes its connections and the first calls their imports,
            # as in a worker that has been running.
            ledger.dispatch(*_orders(warmup, seed=8))
            deadline = time.monotonic() + 60 + warmup * 5.0 / workers
            while finished.count < warmup:
                if failed.count or proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench: {finished.count} of {warmup} warm-up jobs finished")
                time.sleep(0.01)
        warm = set(finished.get_job_ids())
        time.sleep(0.5)  # let every worker reach its blocking pop
        cpu_before = tree_cpu_seconds(proc.pid)
        started = time.perf_counter()
        ledger.dispatch(integration_id, batch)
        # A guard against a hang, not a target: on 2 shared cores a default `rq worker` (a fork
        # and the job's imports per order) has taken over 1.7 s an order.
        deadline = time.monotonic() + 60 + orders * 5.0 / workers
        rss = pss = 0.0
        sampled = 0.0
        while finished.count < warmup + orders:
            if time.monotonic() - sampled > 0.5:
                sampled = time.monotonic()
                now_rss, now_pss = tree_memory(proc.pid)
                rss, pss = max(rss, now_rss), max(pss, now_pss)
            if failed.count:
                job = Job.fetch(
                    failed.get_job_ids()[0], connection=redis, serializer=JOB_SERIALIZER
                )
                raise SystemExit(f"bench: a job failed: {job.latest_result()}")
            if proc.poll() is not None or time.monotonic() > deadline:
                done = finished.count - warmup
                raise SystemExit(f"bench: {done} of {orders} jobs finished in time")
            time.sleep(0.01)
        wall = time.perf_counter() - started
        cpu = tree_cpu_seconds(proc.pid) - cpu_before
        timed = [job_id for job_id in finished.get_job_ids() if job_id not in warm]
        jobs = [j for j in Job.fetch_many(timed, connection=redis, serializer=JOB_SERIALIZER) if j]
        spans = [
            (j.ended_at - j.started_at).total_seconds() for j in jobs if j.started_at and j.ended_at
        ]
    finally:
        stop_group(proc)  # warm shutdown of the pool and its workers
        shutil.rmtree(workdir, ignore_errors=True)
    return Run(orders, wall, cpu, sum(spans) / len(spans), rss, pss)


MODES = ("inprocess", "fork", "threads", "dramatiq")
# A stock `rq worker` does not run the fair feeder (dispatcher.store.fair), which moves jobs
# from each integration's list to the worker queue: the baseline's batch goes onto the queue
# at once, as bench/fairness.py's one-queue baseline does.
_ONE_QUEUE = JobOptions(fair=FairOptions(window=10**9))


@dataclass(frozen=True)
class Setup:
    """How one mode's workers are started."""

    label: str
    env: dict[str, str]
    processes: int
    threads: int = 1

    @property
    def slots(self) -> int:
        return self.processes * self.threads


def _setups(modes: list[str], processes: int, threads: int, threaded: int) -> dict[str, Setup]:
    setups = {
        "inprocess": Setup(
            f"`dispatcher worker --processes {processes}`, DISPATCHER_FORK_PER_JOB=false",
            {"DISPATCHER_FORK_PER_JOB": "false"},
            processes,
        ),
        "fork": Setup(
            f"`dispatcher worker --processes {processes}`, DISPATCHER_FORK_PER_JOB=true",
            {"DISPATCHER_FORK_PER_JOB": "true"},
            processes,
        ),
        "threads": Setup(
            f"`dispatcher worker --processes {threaded} --threads {threads}`",
            {"DISPATCHER_FORK_PER_JOB": "false", "DISPATCHER_WORKER_THREADS": str(threads)},
            threaded,
            threads,
        ),
    }
    return {mode: setups[mode] for mode in modes}


def _command(processes: int) -> list[str]:
    command = [sys.executable, "-m", "dispatcher", "worker"]
    return command if processes == 1 else [*command, "--processes", str(processes)]


def run(
    processes: int,
    orders: int,
    baseline_orders: int,
    delay: float,
    modes: list[str],
    reps: int,
    threads: int = 50,
    threaded_processes: int = 2,
    warmup_rounds: int = 2,
) -> list[Row]:
    rq_binary = shutil.which("rq", path=str(Path(sys.executable).parent)) or "rq"
    setups = _setups([m for m in modes if m != "dramatiq"], processes, threads, threaded_processes)
    with_dramatiq = "dramatiq" in modes and dramatiq_baseline.available()
    if "dramatiq" in modes and not with_dramatiq:
        print("bench: dramatiq mode skipped: dramatiq is not installed (pip install -e '.[bench]')")
    drama: list[dramatiq_baseline.Batch] = []
    with private_redis() as redis_url, vendor_process(delay) as vendor_url:
        redis = Redis.from_url(redis_url)
        env = bench_env(
            redis_url,
            DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor_url,
            DISPATCHER_QUEUE=QUEUE,
            DISPATCHER_NAMESPACE=NAMESPACE,
        )
        # Jobs are JSON (rq_internals.JOB_SERIALIZER): the stock worker must read them so.
        rq_worker = [rq_binary, "worker", "--serializer", "json", "--url", redis_url, QUEUE]
        mine: dict[str, list[Run]] = {mode: [] for mode in setups}
        base: list[Run] = []
        for _ in range(reps):
            for mode, setup in setups.items():
                mine[mode].append(
                    _run_batch(
                        redis, _command(setup.processes), {**env, **setup.env},
                        setup.processes, orders, warmup=warmup_rounds * setup.slots,
                    )
                )  # fmt: skip
            if with_dramatiq:
                drama.append(
                    dramatiq_baseline.run_batch(
                        redis, redis_url, processes=threaded_processes, threads=threads,
                        jobs=orders, delay=delay, tree_cpu=tree_cpu_seconds,
                        tree_memory=tree_memory,
                        warmup=warmup_rounds * threaded_processes * threads,
                    )
                )  # fmt: skip
            base.append(
                _run_batch(
                    redis, rq_worker, env, 1, baseline_orders, job_options=_ONE_QUEUE,
                    warmup=warmup_rounds,
                )
            )  # fmt: skip

    def rates(runs: list[Run]) -> list[float]:
        return [r.orders / r.wall for r in runs]

    def overheads(runs: list[Run], slots: int) -> tuple[float, float, float, float]:
        per_order = median([slots * r.wall / r.orders for r in runs]) - delay
        in_job = median([r.in_job for r in runs]) - delay
        cpu = median([r.cpu / r.orders for r in runs])
        return per_order, in_job, per_order - in_job, cpu

    def describe(runs: list[Run], slots: int) -> str:
        total, in_job, outside, cpu = overheads(runs, slots)
        mib = 1024 * 1024
        return (
            f"per order beyond the {delay * 1e3:g} ms wait: {total * 1e3:.1f} ms "
            f"({in_job * 1e3:.1f} ms inside the job, {outside * 1e3:.1f} ms outside it), "
            f"CPU {cpu * 1e3:.2f} ms/order; worker tree RSS "
            f"{median([r.rss for r in runs]) / mib:.0f} MiB, PSS "
            f"{median([r.pss for r in runs]) / mib:.0f} MiB"
        )

    baseline = rates(base)
    rows: list[Row] = []
    for mode, setup in setups.items():
        subject = rates(mine[mode])
        ratio = median(subject) / median(baseline)
        if mode == "threads":
            target = ">= 600 orders/s at <= 250 MB" if delay < 0.5 else ">= 300 orders/s"
            rss = median([r.rss for r in mine[mode]])
            met = median(subject) >= (600 if delay < 0.5 else 300) and (
                delay >= 0.5 or rss <= 250e6
            )
        else:
            target = ">= 100 orders/s and >= 10x rq worker"
            met = median(subject) >= 100 and ratio >= 10
        rows.append(
            Row(
                bench="dispatch",
                measure=(f"orders/s with a {delay * 1e3:g} ms I/O handler, {setup.label}"),
                value=median(subject),
                unit="orders/s",
                baseline="one default `rq worker` process",
                baseline_value=median(baseline),
                ratio=ratio,
                target=target,
                met=met,
                detail=(
                    f"{orders} orders; {describe(mine[mode], setup.slots)}. Baseline: "
                    f"{baseline_orders} orders; {describe(base, 1)}. Handler provision_http, "
                    f"vendor answers after {delay * 1e3:g} ms; {_warm(warmup_rounds)}; "
                    f"median of {reps}"
                ),
                samples=subject,
                baseline_samples=baseline,
            )
        )
    if drama:
        runs = mine["threads"]
        rq_based = {setups[m].label: median(rates(mine[m])) for m in setups if m != "threads"}
        rq_based["one default `rq worker`"] = median(baseline)
        rows += dramatiq_baseline.rows(
            drama, label=setups["threads"].label, rates=rates(runs),
            cpu_per_order=[r.cpu / r.orders for r in runs], rss=[r.rss for r in runs],
            rq_based=rq_based, delay=delay, processes=threaded_processes, threads=threads,
        )  # fmt: skip
    return rows


def _warm(rounds: int) -> str:
    if not rounds:
        return "cold workers (no warm-up)"
    return f"after an untimed warm-up of {rounds} jobs per thread or process, for each"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=32, help="dispatcher worker processes")
    parser.add_argument("--orders", type=int, default=600, help="orders for the dispatcher")
    parser.add_argument("--baseline-orders", type=int, default=20, help="orders for rq worker")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds each handler waits")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="worker modes to measure (dramatiq: beside threads)",
    )
    parser.add_argument("--threads", type=int, default=50, help="threads per process (threads)")
    parser.add_argument(
        "--threaded-processes", type=int, default=2, help="worker processes (threads mode)"
    )
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=2,
        help="untimed jobs per slot before each timed batch, for every contender (0: cold)",
    )
    common_args(parser)
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: a comma-separated subset of {', '.join(MODES)}")
    if "dramatiq" in modes and "threads" not in modes:
        parser.error("--modes: dramatiq is measured beside threads")
    rows = run(
        args.processes, args.orders, args.baseline_orders, args.delay, modes, args.reps,
        args.threads, args.threaded_processes, args.warmup_rounds,
    )  # fmt: skip
    report(rows, args.json, header=f"{__doc__.splitlines()[0]}\n{dependency_versions()}")


if __name__ == "__main__":
    main()
