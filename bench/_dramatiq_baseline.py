"""THE DRAMATIQ BASELINE of bench/dispatch.py: dramatiq's own worker on sleep jobs.

``dramatiq --processes P --threads T`` (the threaded dispatcher's counts) runs the actor of
bench/_dramatiq_jobs.py, which sleeps ``delay`` seconds per job, on the bench's private Redis
in a namespace of its own. Timed as the dispatcher is: the workers are started and waited for
(each worker process's broker heartbeats in Redis once it polls), then ``jobs`` messages are
sent at once and the clock runs until dramatiq has acknowledged every one (its messages hash
is empty). CPU is that of dramatiq's whole process tree; memory the peak of samples.

dramatiq is optional (the ``bench`` extra): :func:`available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from _support import BENCH_DIR, Row, bench_env, median, stop_group

# The names bench/_dramatiq_jobs.py declares (that module makes a broker at import: it is
# imported only by the worker processes, never here).
NAMESPACE = "bench-dramatiq"
QUEUE = "bench-sleep"
ACTOR = "sleep_job"


def available() -> bool:
    """Whether dramatiq is installed (the optional ``bench`` extra)."""
    return importlib.util.find_spec("dramatiq") is not None


@dataclass
class Batch:
    """One timed batch of dramatiq jobs."""

    jobs: int
    wall: float
    cpu: float
    send: float  # seconds the bench took to send the batch (the clock runs meanwhile)
    rss: float = 0.0  # peak bytes, whole worker process tree
    pss: float = 0.0


def _wait_for_workers(redis: Redis, proc: subprocess.Popen[bytes], processes: int) -> None:
    heartbeats = f"{NAMESPACE}:__heartbeats__"
    deadline = time.monotonic() + 60
    while redis.zcard(heartbeats) < processes:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: dramatiq did not start {processes} worker processes")
        time.sleep(0.05)


def _sender(redis: Redis, redis_url: str) -> Callable[[int, float], None]:
    """A function that sends jobs at once, made before the clock starts (dramatiq's import and
    its brokers' set-up are not the batch's)."""
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    # dramatiq sends one message per round trip; a broker whose client is a pipeline sends the
    # batch in one, through dramatiq's own enqueue (its middleware, encoding and script), as
    # the dispatcher's batch goes in one `Ledger.dispatch`. The pipeline cannot answer the one
    # query a broker makes of its own (the Lua stack size, kept per class): a broker on a plain
    # client asks it first, in join (an empty queue: it returns at once).
    RedisBroker(url=redis_url, namespace=NAMESPACE).join(QUEUE)
    pipe = redis.pipeline(transaction=False)
    # The default middleware, as an application that sends messages has it.
    broker = RedisBroker(client=pipe, namespace=NAMESPACE)

    def send(jobs: int, delay: float) -> None:
        for _ in range(jobs):
            broker.enqueue(Message(QUEUE, ACTOR, (delay,), {}, {}))
        pipe.execute()

    return send


def run_batch(
    redis: Redis,
    redis_url: str,
    *,
    processes: int,
    threads: int,
    jobs: int,
    delay: float,
    tree_cpu: Callable[[int], float],
    tree_memory: Callable[[int], tuple[float, float]],
    warmup: int = 0,
) -> Batch:
    """Start ``dramatiq`` with ``processes`` x ``threads``, run ``warmup`` sleep jobs untimed,
    then time ``jobs`` sleep jobs, stop it.

    ``tree_cpu`` and ``tree_memory`` measure a process tree from its root pid (bench/_support.py's,
    so both contenders are measured by the same code)."""
    redis.flushall()
    workdir = tempfile.mkdtemp(prefix="bench-dramatiq-")
    command = [
        sys.executable, "-m", "dramatiq", "--processes", str(processes), "--threads",
        str(threads), "--path", str(BENCH_DIR), "--worker-shutdown-timeout", "10000",
        "_dramatiq_jobs",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        env=bench_env(redis_url, BENCH_DRAMATIQ_REDIS_URL=redis_url),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    messages = f"{NAMESPACE}:{QUEUE}.msgs"
    dead = f"{NAMESPACE}:{QUEUE}.XQ"
    try:
        _wait_for_workers(redis, proc, processes)
        send_all = _sender(redis, redis_url)
        if warmup:
            send_all(warmup, delay)
            _wait_until_acked(redis, proc, messages, dead, 30 + warmup * 0.2)
        time.sleep(0.5)  # as for the dispatcher: let every worker reach its fetch loop
        cpu_before = tree_cpu(proc.pid)
        started = time.perf_counter()
        send_all(jobs, delay)
        send = time.perf_counter() - started
        rss, pss = _wait_until_acked(
            redis, proc, messages, dead, 30 + jobs * 0.2, tree_memory=tree_memory
        )
        wall = time.perf_counter() - started
        cpu = tree_cpu(proc.pid) - cpu_before
        if not rss:  # a batch quicker than the first sample
            rss, pss = tree_memory(proc.pid)
    finally:
        stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return Batch(jobs, wall, cpu, send, rss, pss)


def _wait_until_acked(
    redis: Redis,
    proc: subprocess.Popen[bytes],
    messages: str,
    dead: str,
    timeout: float,
    *,
    tree_memory: Callable[[int], tuple[float, float]] | None = None,
) -> tuple[float, float]:
    """Wait until every message sent is acked; the peak RSS and PSS sampled meanwhile."""
    deadline = time.monotonic() + timeout
    rss = pss = 0.0
    sampled = 0.0
    while redis.hlen(messages):  # a job's message leaves the hash when it is acked
        if tree_memory is not None and time.monotonic() - sampled > 0.5:
            sampled = time.monotonic()
            now_rss, now_pss = tree_memory(proc.pid)
            rss, pss = max(rss, now_rss), max(pss, now_pss)
        if redis.zcard(dead):
            raise SystemExit("bench: a dramatiq job failed (dead-lettered)")
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: {redis.hlen(messages)} dramatiq jobs left unfinished")
        time.sleep(0.01)
    return rss, pss


def _version() -> str:
    from importlib.metadata import version

    return version("dramatiq")


def rows(
    batches: list[Batch],
    *,
    label: str,
    rates: list[float],
    cpu_per_order: list[float],
    rss: list[float],
    rq_based: dict[str, float],
    delay: float,
    processes: int,
    threads: int,
) -> list[Row]:
    """The threaded dispatcher (``label``; its per-repetition ``rates``, CPU seconds per order
    and peak RSS) beside dramatiq's ``batches``: throughput, then CPU per order.

    ``rq_based`` holds the median orders/s of every RQ-based set-up measured in the same run
    (the issue wants the threaded worker ahead of each)."""
    mib = 1024 * 1024
    drama_rates = [b.jobs / b.wall for b in batches]
    drama_cpu = median([b.cpu / b.jobs for b in batches])
    mine, theirs = median(rates), median(drama_rates)
    cpu = median(cpu_per_order)
    behind = [name for name, rate in rq_based.items() if rate >= mine]
    where = (
        f"ahead of every RQ-based set-up measured here ({', '.join(rq_based)})"
        if not behind
        else f"NOT ahead of {', '.join(behind)}"
    )
    baseline = (
        f"dramatiq {_version()} `--processes {processes} --threads {threads}`, "
        f"{delay * 1e3:g} ms sleep jobs"
    )
    detail = (
        f"{batches[0].jobs} orders / jobs each; CPU per order {cpu * 1e3:.2f} ms (dispatcher) vs "
        f"{drama_cpu * 1e3:.2f} ms per job (dramatiq); worker tree RSS "
        f"{median(rss) / mib:.0f} MiB vs {median([b.rss for b in batches]) / mib:.0f} MiB "
        f"(dramatiq PSS {median([b.pss for b in batches]) / mib:.0f} MiB); sending dramatiq's "
        f"batch took {median([b.send for b in batches]) * 1e3:.0f} ms of its wall time; the "
        f"threaded dispatcher is {where}. dramatiq's jobs only sleep (its figures are the ceiling "
        "of a queue with these thread counts) and its idle workers poll Redis with a back-off "
        "of up to 1 s (its default worker timeout), which a burst after idle waits out first; "
        f"median of {len(batches)}"
    )
    result = [
        Row(
            bench="dispatch",
            measure=f"orders/s with a {delay * 1e3:g} ms I/O handler, {label}, beside dramatiq",
            value=mine,
            unit="jobs/s",  # an order is one job
            baseline=baseline,
            baseline_value=theirs,
            ratio=mine / theirs,
            ratio_note="(dispatcher orders/s over dramatiq jobs/s)",
            target="within 2x of dramatiq's jobs/s (ratio >= 0.5) and ahead of every RQ set-up",
            met=mine / theirs >= 0.5 and not behind,
            detail=detail,
            samples=rates,
            baseline_samples=drama_rates,
        )
    ]
    # CPU is counted in clock ticks (10 ms): a smoke run's handful of jobs may show none.
    if cpu > 0 and drama_cpu > 0:
        result.append(
            Row(
                bench="dispatch",
                measure=f"worker CPU per order, {label}, beside dramatiq's per job",
                value=cpu * 1e3,
                unit="ms",
                baseline=baseline,
                baseline_value=drama_cpu * 1e3,
                ratio=drama_cpu / cpu,
                ratio_note="(dramatiq's CPU per job over the dispatcher's per order)",
                target="<= 2 ms per order (issue 25)",
                met=cpu <= 0.002,
                detail=detail,
                samples=[c * 1e3 for c in cpu_per_order],
                baseline_samples=[b.cpu / b.jobs * 1e3 for b in batches],
            )
        )
    return result
