"""Results written back to Kombo per second, end to end, with 20 ms of Kombo latency.

    python bench/results_writeback.py [--results 500] [--integrations 20] [--processes 4]
                                      [--threads T] [--submit web|outbox] [--clients 8]
                                      [--latency 0.02] [--baseline-results 100] [--reps 3]

By default exactly the Procfile's ``web`` and ``results`` lines at default settings:

- the dispatcher: ``--results`` results PUT to ``dispatcher web`` (``PUT
  /orders/{integration}/{order}/result``, by ``--clients`` clients at once) for orders the
  ledger dispatched, written by ``dispatcher worker --results --processes 4`` (its default
  threads; ``--threads`` passes one; started and waited for first); the clock runs from the
  first PUT until the last result is written (every one through the per-integration write
  cap, ``DISPATCHER_KOMBO_WRITE_CONCURRENCY``). ``--submit outbox`` submits with
  ``Outbox.submit`` in this process instead (the path of ``dispatcher.submit_result``);
- THE BASELINE: the same results PUT one at a time with the Kombo client (what ``dispatcher
  result`` did, without its process start per result).

The simulator runs in its own process with ``--latency`` per request. Results are partial
(``OPEN``), each repetition with its own ``result_url``, so that every repetition writes to
the same OPEN orders (a final result can be written once). The first line printed names the
versions of Python, redis-py, hiredis, httpx, rq and redis-server the figures came from.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from redis import Redis

from _support import (
    API_KEY,
    Row,
    bench_env,
    common_args,
    dependency_versions,
    flush,
    free_port,
    median,
    private_redis,
    report,
    simulator_process,
    stop_group,
    tree_cpu_seconds,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.results import build_result
from dispatcher.settings import load_settings
from dispatcher.store.keys import Keys
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import Simulator

NAMESPACE = "bench"


def _orders(integrations: int, per: int, total: int) -> list[tuple[str, str]]:
    # The simulator process generates the same orders from the same seed.
    sim = Simulator(integrations, per, seed=0)
    pairs = [(i, str(o["id"])) for i in sim.integration_ids for o in sim.orders(i, "OPEN")]
    # Round-robin over integrations, so that every integration's cap is in play.
    by_integration: dict[str, list[str]] = {}
    for integration, order in pairs:
        by_integration.setdefault(integration, []).append(order)
    mixed = [
        (integration, orders[n])
        for n in range(per)
        for integration, orders in by_integration.items()
        if n < len(orders)
    ]
    return mixed[:total]


# The results API's bearer token (DISPATCHER_API_TOKEN takes 24 characters and more).
TOKEN = "bench-results-token-0123456789"


def _env(redis_url: str, kombo_url: str) -> dict[str, str]:
    # Default settings (INFO logs included: what a deployment writes per result) but what
    # the processes must be told: where Redis and Kombo are, the key, the API's token.
    return bench_env(
        redis_url,
        DISPATCHER_NAMESPACE=NAMESPACE,
        KOMBO_API_KEY=API_KEY,
        KOMBO_BASE_URL=kombo_url,
        DISPATCHER_API_TOKEN=TOKEN,
    )


def _start(args: list[str], env: dict[str, str], tmp: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _workers(
    redis_url: str, kombo_url: str, processes: int, threads: int | None, tmp: str
) -> subprocess.Popen[bytes]:
    """``dispatcher worker --results --processes N`` (the Procfile's line), ``--threads T``
    only when given."""
    args = ["worker", "--results", "--processes", str(processes)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return _start(args, _env(redis_url, kombo_url), tmp)


def _web(redis_url: str, kombo_url: str, tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    """``dispatcher web`` (the Procfile's line) on a free port, once it answers."""
    port = free_port()
    proc = _start(["web", "--port", str(port)], _env(redis_url, kombo_url), tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: dispatcher web did not start")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, timeout=30)


def _wait_workers(redis: Redis, processes: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(redis.smembers(f"rq:workers:{NAMESPACE}-results")) < processes:
        if time.monotonic() > deadline:
            raise SystemExit("bench: the results workers did not start")
        time.sleep(0.1)


def _mark_dispatched(redis: Redis, orders: list[tuple[str, str]]) -> None:
    # As the ledger does: the results API takes results for dispatched orders only.
    keys = Keys(NAMESPACE)
    with redis.pipeline(transaction=False) as pipe:
        for integration, order in orders:
            pipe.hset(keys.seen(integration), order, str(int(time.time())))
        pipe.execute()


def _put_all(web_url: str, orders: list[tuple[str, str]], rep: int, clients: int) -> None:
    """PUT every result to ``dispatcher web``, ``clients`` at once, as vendors' services do."""
    errors: list[str] = []

    def client(mine: list[tuple[str, str]]) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=web_url, headers=headers, timeout=30) as http:
            for integration, order in mine:
                body = {"status": "OPEN", "result_url": f"https://vendor.example/r/{rep}/{order}"}
                answer = http.put(f"/orders/{integration}/{order}/result", json=body)
                if answer.status_code != 202:
                    errors.append(f"{order}: {answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(orders[n::clients],)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"bench: {len(errors)} PUTs refused, e.g. {errors[0]}")


def run_dispatcher(
    redis_url: str,
    orders: list[tuple[str, str]],
    rep: int,
    web_url: str | None,
    clients: int,
    roles: dict[str, int],
) -> tuple[float, dict[str, float]]:
    """Results per second from the first submit until the last is written: PUT to
    ``dispatcher web`` when ``web_url`` is given, else ``Outbox.submit`` here; and the CPU
    seconds per result of each process tree of ``roles`` (name -> root pid) and of this
    process (the submitting clients)."""
    settings = load_settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=NAMESPACE)
    redis = Redis.from_url(redis_url)
    outbox = Outbox.from_settings(redis, settings)
    cpu_before = {name: tree_cpu_seconds(pid) for name, pid in roles.items()}
    own_before = time.process_time()
    started = time.perf_counter()
    if web_url is not None:
        _put_all(web_url, orders, rep, clients)
    else:
        for integration, order in orders:
            outbox.submit(
                integration,
                order,
                {"status": "OPEN", "result_url": f"https://vendor.example/r/{rep}/{order}"},
            )
    while True:
        counts = outbox.counts()
        if counts["pending"] == 0:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    cpu = {
        name: (tree_cpu_seconds(pid) - cpu_before[name]) / len(orders)
        for name, pid in roles.items()
    }
    cpu["submitting clients (the bench)"] = (time.process_time() - own_before) / len(orders)
    if counts["failed"]:
        raise SystemExit(
            f"bench: {counts['failed']} results failed: {outbox.in_state('failed')[:1]}"
        )
    redis.close()
    return len(orders) / elapsed, cpu


def run_baseline(kombo_url: str, orders: list[tuple[str, str]], rep: int) -> float:
    with KomboClient(API_KEY, kombo_url) as client:
        started = time.perf_counter()
        for integration, order in orders:
            client.put_result(
                integration,
                order,
                build_result(status="OPEN", result_url=f"https://vendor.example/b/{rep}/{order}"),
            )
        return len(orders) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=500)
    parser.add_argument("--integrations", type=int, default=20)
    parser.add_argument(
        "--processes", type=int, default=4, help="results worker processes (the Procfile's 4)"
    )
    parser.add_argument(
        "--threads", type=int, help="write jobs per process (default: the worker's own)"
    )
    parser.add_argument(
        "--submit",
        choices=("web", "outbox"),
        default="web",
        help="PUT to dispatcher web (default), or Outbox.submit in this process",
    )
    parser.add_argument("--clients", type=int, default=8, help="clients PUTting at once (web)")
    parser.add_argument("--latency", type=float, default=0.02, help="Kombo seconds per request")
    parser.add_argument("--baseline-results", type=int, default=100)
    common_args(parser)
    args = parser.parse_args()
    print(dependency_versions(), flush=True)
    per = -(-args.results // args.integrations)
    orders = _orders(args.integrations, per, args.results)
    dispatcher: list[float] = []
    baseline: list[float] = []
    cpus: list[dict[str, float]] = []
    with (
        private_redis() as redis_url,
        simulator_process(args.integrations, per, latency=args.latency) as kombo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        redis = Redis.from_url(redis_url)
        _mark_dispatched(redis, orders)
        workers = _workers(redis_url, kombo.url, args.processes, args.threads, tmp)
        web: subprocess.Popen[bytes] | None = None
        try:
            web_url = None
            if args.submit == "web":
                web, web_url = _web(redis_url, kombo.url, tmp)
            _wait_workers(redis, args.processes)
            for rep in range(args.reps):
                baseline.append(run_baseline(kombo.url, orders[: args.baseline_results], rep))
                roles = {"results workers": workers.pid, "Kombo simulator": kombo.pid}
                roles["redis-server"] = int(redis.info("server")["process_id"])
                if web is not None:
                    roles["dispatcher web"] = web.pid
                rate, cpu = run_dispatcher(redis_url, orders, rep, web_url, args.clients, roles)
                dispatcher.append(rate)
                cpus.append(cpu)
                redis.delete(*redis.keys(f"{NAMESPACE}:outbox*") or ["-"])
        finally:
            _stop(workers)
            if web is not None:
                _stop(web)
            flush(redis)
    value, base = median(dispatcher), median(baseline)
    ratio = value / base
    # Where the machine's CPU went per result (every process shares its cores): the ceiling
    # of the rate is cores / total, whatever the latency.
    per_role = {name: median([cpu[name] for cpu in cpus]) for name in cpus[0]}
    total = sum(per_role.values())
    spent = ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in per_role.items())
    cores = os.cpu_count() or 1
    report(
        [
            Row(
                "results_writeback",
                f"results written per second, {args.latency * 1000:g} ms Kombo latency",
                value,
                "results/s",
                baseline="one PUT at a time",
                baseline_value=base,
                ratio=ratio,
                target=">= 10x the baseline",
                met=ratio >= 10,
                samples=dispatcher,
                baseline_samples=baseline,
                detail=(
                    f"{len(orders)} results over {args.integrations} integrations, "
                    + (
                        f"PUT to dispatcher web by {args.clients} clients, "
                        if args.submit == "web"
                        else "Outbox.submit, "
                    )
                    + f"dispatcher worker --results --processes {args.processes}"
                    + (f" --threads {args.threads}" if args.threads else "")
                    + ", default settings (write cap 10 per integration); "
                    f"baseline {args.baseline_results} sequential PUTs; CPU ms per result: "
                    f"{spent}; total {total * 1e3:.2f} ms, a ceiling of {cores / total:.0f} "
                    f"results/s on {cores} cores; {dependency_versions()}"
                ),
            )
        ],
        Path(args.json) if args.json else None,
    )


if __name__ == "__main__":
    main()
