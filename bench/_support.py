"""Shared by the benchmarks: private servers, timing, the baseline jobs, and result rows.

Every benchmark script measures the dispatcher and its baseline in the same run, repeats
both, and reports medians and the ratio of the medians as :class:`Row` objects. With
``--json PATH`` a script also writes its rows there; ``bench/run_all.py`` collects them
into one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis
from rq import Queue, Retry

from dispatcher.kombo.models import Order
from dispatcher.store.job_options import JobOptions
from dispatcher.store.keys import job_id_for
from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.testing import free_port as free_port
from dispatcher.testing.redis_server import private_redis as private_redis
from dispatcher.testing.sim import DEFAULT_API_KEY

BENCH_DIR = Path(__file__).resolve().parent
QUEUE = "dispatcher-orders"
NAMESPACE = "dispatcher"
API_KEY = DEFAULT_API_KEY
_T = TypeVar("_T")


# ------------------------------------------------------------------------------ processes

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> tuple[dict[int, int], dict[int, int]]:
    """Every process's parent and CPU ticks (its own and its reaped children's)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 11-14 after the name.
        ticks[int(entry)] = sum(int(x) for x in fields[11:15])
    return parents, ticks


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def tree_memory(root: int) -> tuple[float, float]:
    """RSS and PSS in bytes of a process and its descendants (smaps_rollup)."""
    rss = pss = 0
    for pid in _descendants(root, _proc_table()[0]):
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and its descendants, including reaped children."""
    parents, ticks = _proc_table()
    return sum(ticks.get(pid, 0) for pid in _descendants(root, parents)) / _CLOCK_TICKS


def stop_group(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session`` and everything it started: SIGTERM
    to its group (a warm shutdown), SIGKILL after ``timeout`` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------------------ servers


@dataclass(frozen=True)
class SimServer:
    """A simulator serving over a real socket from another process."""

    url: str
    integration_ids: list[str]
    pid: int


@contextmanager
def _helper_process(args: list[str]) -> Iterator[dict[str, Any]]:
    """Run a bench helper server that prints one JSON line when ready and exits when its
    stdin closes (so it never outlives the benchmark); yield that line."""
    proc = subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: {args[0]} exited early (code {proc.wait()})")
        ready: dict[str, Any] = json.loads(line)
        ready["pid"] = proc.pid
        yield ready
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def simulator_process(
    integrations: int,
    orders: int,
    *,
    latency: float = 0.0,
    seed: int = 0,
    pregenerate: bool = True,
) -> Iterator[SimServer]:
    """Run the simulator (``bench/_sim_server.py``) in its own process, as a remote API would
    be (its CPU is not the poller's GIL), and yield its URL and integration ids."""
    args = [
        str(BENCH_DIR / "_sim_server.py"),
        "--integrations", str(integrations), "--orders", str(orders),
        "--latency", str(latency), "--seed", str(seed),
    ]  # fmt: skip
    if not pregenerate:
        args.append("--lazy")
    with _helper_process(args) as ready:
        yield SimServer(ready["url"], ready["integration_ids"], ready["pid"])


@contextmanager
def vendor_process(delay: float) -> Iterator[str]:
    """Run the slow vendor API (``bench/_vendor_server.py``) and yield its provisioning URL."""
    with _helper_process([str(BENCH_DIR / "_vendor_server.py"), "--delay", str(delay)]) as ready:
        yield str(ready["url"])


def bench_env(redis_url: str, **extra: str) -> dict[str, str]:
    """An environment for a ``dispatcher`` or ``rq`` subprocess, free of the caller's
    dispatcher settings (and of a stray .env: subprocesses run in a temporary directory)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KOMBO_", "DISPATCHER_", "REDIS_", "PROVISION_", "SMTP_", "NOTIFY_"))
    }
    env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], _T]) -> tuple[float, _T]:
    """Wall-clock seconds of one call, and what it returned."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated."""
    if value == 0 or not (abs(value) < float("inf")):
        return str(value)
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}g}"


# ------------------------------------------------------------------------------ baselines


def job_options() -> JobOptions:
    """The job options the dispatcher uses by default (the baselines create the same jobs)."""
    return JobOptions()


def rq_job_arguments(integration_id: str, order: Order) -> dict[str, Any]:
    """Everything the dispatcher puts in an order's RQ job, as ``Queue.enqueue`` arguments.

    The baselines enqueue jobs identical to the dispatcher's (same function, payload, id,
    description, meta, timeouts and retries), so only how they get there differs.
    """
    options = job_options()
    return {
        "kwargs": {"integration_id": integration_id, "order": order.to_payload()},
        "job_id": job_id_for(NAMESPACE, integration_id, order.id),
        "description": f"order {order.id} integration {integration_id} package {order.package_id}",
        "meta": {
            "order_id": order.id,
            "integration_id": integration_id,
            "package_id": order.package_id,
        },
        "timeout": options.timeout,
        "result_ttl": options.result_ttl,
        "failure_ttl": options.failure_ttl,
        "retry": Retry(max=len(options.retry_intervals), interval=list(options.retry_intervals)),
    }


def naive_seen_key(integration_id: str) -> str:
    return f"naive:seen:{integration_id}"


def naive_dispatch(redis: Redis, queue: Queue, integration_id: str, orders: Sequence[Order]) -> int:
    """THE NAIVE BASELINE: what one writes first. For each order, ``SADD`` it to a set of
    seen ids and, if it was not there, ``Queue.enqueue`` its job. Two round trips and more
    per order, and a crash between the two loses the order; returns how many were new."""
    new = 0
    for order in orders:
        if redis.sadd(naive_seen_key(integration_id), order.id):
            arguments = rq_job_arguments(integration_id, order)
            arguments["job_timeout"] = arguments.pop("timeout")
            queue.enqueue(JOB_FUNCTION, **arguments)
            new += 1
    return new


def enqueue_many_dispatch(queue: Queue, integration_id: str, orders: Sequence[Order]) -> int:
    """THE RQ BASELINE: RQ's own ``enqueue_many`` in one pipeline, with no dedupe at all."""
    datas = [
        Queue.prepare_data(JOB_FUNCTION, **rq_job_arguments(integration_id, order))
        for order in orders
    ]
    with queue.connection.pipeline() as pipe:
        jobs = queue.enqueue_many(datas, pipeline=pipe)
        pipe.execute()
    return len(jobs)


# ------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One measured figure next to its baseline, with the target it is held to.

    ``ratio`` is always "how many times better than the baseline" (throughput / throughput,
    or time / time inverted), unless ``ratio_note`` says otherwise.
    """

    bench: str
    measure: str
    value: float | None
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    ratio_note: str = ""
    target: str = ""
    met: bool | None = None
    detail: str = ""
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)


def common_args(parser: argparse.ArgumentParser, *, reps: int = 3) -> None:
    parser.add_argument(
        "--reps", type=int, default=reps, help=f"repetitions of each contender (default {reps})"
    )
    parser.add_argument("--json", type=Path, help="also write the result rows to this file")


def report(rows: list[Row], json_path: Path | None, *, header: str = "") -> None:
    """Print the rows readably and write them as JSON for run_all.py."""
    if header:
        print(header)
    for row in rows:
        value = "-" if row.value is None else f"{fmt(row.value)} {row.unit}"
        print(f"\n[{row.bench}] {row.measure}: {value}")
        if row.samples:
            print(f"    samples: {', '.join(fmt(s) for s in row.samples)}")
        if row.baseline:
            base = "-" if row.baseline_value is None else f"{fmt(row.baseline_value)} {row.unit}"
            print(f"    baseline ({row.baseline}): {base}")
            if row.baseline_samples:
                print(f"    baseline samples: {', '.join(fmt(s) for s in row.baseline_samples)}")
        if row.ratio is not None:
            print(f"    ratio: {fmt(row.ratio)}x {row.ratio_note}".rstrip())
        if row.target:
            verdict = {True: "MET", False: "MISSED", None: "-"}[row.met]
            print(f"    target: {row.target}: {verdict}")
        if row.detail:
            print(f"    {row.detail}")
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(row) for row in rows], indent=1))


def dependency_versions() -> str:
    """What a benchmark ran with, on one line: Python, the ``redis-server`` its private servers
    run, and the libraries on the hot paths (dramatiq only where the ``bench`` extra is)."""
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    # "Redis server v=7.0.15 sha=... malloc=... bits=64 build=..."
    redis_server = server.stdout.split()[2].removeprefix("v=") if server.returncode == 0 else "?"
    parts = [f"Python {platform.python_version()}", f"redis-server {redis_server}"]
    for label, distribution in (
        ("redis-py", "redis"), ("hiredis", "hiredis"), ("httpx", "httpx"), ("rq", "rq"),
        ("dramatiq", "dramatiq"),
    ):  # fmt: skip
        try:
            parts.append(f"{label} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            if distribution != "dramatiq":
                parts.append(f"no {label}")
    return ", ".join(parts)


def redis_version(redis: Redis) -> str:
    return str(redis.info("server")["redis_version"])


def queued_count(redis: Redis, queue: str = QUEUE) -> int:
    """Jobs waiting to run: on the worker queue and on each integration's list (the fair
    feeder keeps a window of them on the worker queue: dispatcher.store.fair)."""
    lists = [f"rq:queue:{queue}", *redis.scan_iter(f"rq:queue:{queue}@*", count=1000)]
    with redis.pipeline(transaction=False) as pipe:
        for key in lists:
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def queued_job_ids(redis: Redis, queue: str = QUEUE) -> list[bytes]:
    """The ids of the jobs :func:`queued_count` counts."""
    lists = [f"rq:queue:{queue}", *redis.scan_iter(f"rq:queue:{queue}@*", count=1000)]
    return [job_id for key in lists for job_id in redis.lrange(key, 0, -1)]


def flush(redis: Redis) -> None:
    redis.flushall()
    # Give back the memory of big runs before the next repetition measures anything.
    redis.memory_purge()
