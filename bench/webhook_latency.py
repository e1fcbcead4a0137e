"""Webhook-to-enqueue latency: signed order-received deliveries against a real receiver.

Starts a private redis-server and the receiver (`POST /webhooks/kombo`) under uvicorn in its
own process, then keeps ``--concurrency`` deliveries in flight (each client sends its next as
soon as the previous is answered) until ``--deliveries`` distinct orders were sent, and prints
the latency of each answer as seen by the client: p50, p90, p99, max. Every answer must be 200
and every order must be on the queue afterwards, or the run fails.

    python bench/webhook_latency.py                      # 2,000 deliveries, 50 concurrent
    python bench/webhook_latency.py --deliveries 5000 --concurrency 100 --replays 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _support import private_redis
from redis import Redis
from rq import Queue

from dispatcher.simulator import Simulator
from dispatcher.webhook import ORDER_EVENT, SIGNATURE_HEADER, WEBHOOK_PATH, sign

SECRET = "bench-webhook-secret"
QUEUE = "bench-orders"


def _serve(port: int) -> None:
    """The receiver process: the webhook routes on a Starlette app under uvicorn."""
    import uvicorn
    from starlette.applications import Starlette

    from dispatcher.ledger import Ledger
    from dispatcher.settings import load_settings
    from dispatcher.webhook import webhook_routes

    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    ledger = Ledger(redis, Queue(settings.queue, connection=redis), settings.namespace)
    app = Starlette(routes=webhook_routes(settings, ledger, acceptors=()))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deliveries(count: int) -> list[bytes]:
    """Signed-to-be bodies of ``count`` distinct realistic orders (simulator data)."""
    sim = Simulator(1, count, closed=0, seed=7)
    integration = sim.integration_ids[0]
    return [
        json.dumps(
            {
                "id": f"evt-{n}",
                "type": ORDER_EVENT,
                "data": {**order, "integration_id": integration},
            }
        ).encode()
        for n, order in enumerate(sim.orders(integration))
    ]


async def _run(
    url: str, phases: list[list[bytes]], concurrency: int
) -> list[tuple[list[float], float]]:
    """Send each phase's bodies, ``concurrency`` in flight; per phase: latencies and wall time.

    One client (one kept-alive connection) per in-flight delivery, as Kombo's senders would
    be, all made before the first phase: a client's creation costs milliseconds of CPU, and
    one pool shared by every task costs the client more than the receiver spends.
    """
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in range(concurrency)]
    try:
        return [await _phase(clients, bodies) for bodies in phases]
    finally:
        for client in clients:
            await client.aclose()


async def _phase(
    clients: list[httpx.AsyncClient], bodies: list[bytes]
) -> tuple[list[float], float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def deliver(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            headers = {SIGNATURE_HEADER: sign(SECRET, body)}
            started = time.perf_counter()
            response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"bench: HTTP {response.status_code}: {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(deliver(client) for client in clients))
    return latencies, time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bench: the receiver exited at start")
        try:
            httpx.get(url + WEBHOOK_PATH, timeout=1)  # 405: up, and nothing logged
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("bench: the receiver did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--replays", type=float, default=0.0, help="fraction of deliveries sent a second time"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return

    bodies = _deliveries(args.warmup + args.deliveries)
    warmup, measured = bodies[: args.warmup], bodies[args.warmup :]
    replays = measured[: int(len(measured) * args.replays)]
    sends = measured + replays
    random.Random(0).shuffle(sends)  # a replay may even arrive before its original
    with private_redis() as redis_url:
        port = _free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "KOMBO_WEBHOOK_SECRET": SECRET,
            "DISPATCHER_QUEUE": QUEUE,
            "DISPATCHER_LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--serve", str(port)], env=env
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            cpu_before = _cpu_seconds(proc.pid), time.process_time()
            phases = asyncio.run(_run(url, [warmup, sends], args.concurrency))
            server_cpu = _cpu_seconds(proc.pid) - cpu_before[0]
            client_cpu = time.process_time() - cpu_before[1]
        finally:
            proc.terminate()
            proc.wait(10)
        redis = Redis.from_url(redis_url)
        enqueued = Queue(QUEUE, connection=redis).count
        redis.close()
    expected = len(warmup) + len(measured)
    if enqueued != expected:
        raise SystemExit(f"bench: {enqueued} jobs enqueued, expected {expected}")
    latencies, wall = phases[1]
    ms = sorted(latency * 1000 for latency in latencies)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    print(
        f"{len(ms)} deliveries ({len(replays)} replays), {args.concurrency} concurrent, "
        f"{len(ms) / wall:.0f}/s; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{load:.1f}' for load in os.getloadavg())}"
    )
    print(
        f"latency ms: p50 {cuts[49]:.1f}  p90 {cuts[89]:.1f}  p99 {cuts[98]:.1f}  max {ms[-1]:.1f}"
    )
    print(f"every order enqueued once: {enqueued} jobs")
    print(
        f"CPU per delivery: receiver {server_cpu * 1000 / (len(warmup) + len(ms)):.2f} ms, "
        f"client {client_cpu * 1000 / (len(warmup) + len(ms)):.2f} ms"
    )


if __name__ == "__main__":
    main()
