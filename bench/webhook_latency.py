"""Webhook-to-enqueue latency: signed order-received deliveries against a real receiver.

Starts a private redis-server and the receiver (``POST /webhooks/kombo`` on a Starlette app
under uvicorn) in its own process, then keeps ``--concurrency`` deliveries in flight (each
sender posts its next as soon as the previous is answered) until ``--deliveries`` distinct
orders were sent, and prints the latency of each answer as the sender saw it: p50, p90, p99,
max. Every answer must be 200 and every order must be enqueued exactly once, or the run fails.

Two senders: ``httpx`` (one ``httpx.AsyncClient`` per in-flight delivery) and ``raw`` (HTTP/1.1
written and read on asyncio streams). On a 2-core machine the sender shares the CPUs with the
receiver, and httpx spends about three times the receiver's CPU per request: its figure
includes that queueing. The raw sender costs little, so its figure is the receiver's.

    python bench/webhook_latency.py                    # httpx, 2,000 deliveries, 50 in flight
    python bench/webhook_latency.py --sender raw --replays 0.2 --json

The receiver process calls ``gc.freeze()`` once its app is built, as ``dispatcher web``
should: without it a full garbage collection of the start-up objects stalls every delivery
in flight for about 30 ms every second or two (``--no-gc-freeze`` shows it).

The receiver confirms each new order OPEN with Kombo before dispatching it (issue 22: a
replayed delivery must not re-dispatch a completed order). ``--confirm both`` (the default)
runs the same deliveries twice in one run, side by side: without confirmation (the baseline)
and with it, against the simulator in its own process over a real socket (``--kombo-latency``
seconds per request), and reports the Kombo requests the confirmation cost per 1,000 orders.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from rq import Queue

from _support import free_port, private_redis, queued_count, simulator_process
from dispatcher.kombo.client import KomboClient
from dispatcher.testing.sim import DEFAULT_API_KEY
from dispatcher.web.kombo_delivery import ORDER_EVENT, SIGNATURE_HEADER, sign
from dispatcher.web.webhook import WEBHOOK_PATH

SECRET = "bench-webhook-secret"
QUEUE = "bench-orders"

# One delivery: post a body, return the HTTP status.
Post = Callable[[bytes], Awaitable[int]]


def _serve(port: int) -> None:
    """The receiver process: the webhook routes on a Starlette app under uvicorn."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from dispatcher.settings import load_settings
    from dispatcher.store.ledger import Ledger
    from dispatcher.web.app import server_config
    from dispatcher.web.bodies import body_middleware
    from dispatcher.web.webhook import webhook_receiver

    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    ledger = Ledger(redis, Queue(settings.queue, connection=redis), settings.namespace)
    receiver = webhook_receiver(settings, ledger, acceptors=())

    def kombo_requests(request: Request) -> PlainTextResponse:
        confirmer = receiver.confirmer
        return PlainTextResponse(str(confirmer.requests if confirmer else 0))

    # As `dispatcher web` serves it: the body limits of every route, the receiver's routes.
    app = Starlette(
        routes=[*receiver.routes, Route("/bench/kombo-requests", kombo_requests)],
        middleware=body_middleware(settings.web_body_timeout, settings.web_body_budget),
    )
    if os.environ.get("BENCH_GC_FREEZE") != "0":
        # What `dispatcher web` should do once its app is built: move the objects of start-up
        # (imported modules, pydantic schemas) out of the collector's reach, so that a full
        # collection stays short instead of stalling every delivery in flight (~30 ms here).
        gc.freeze()
    # Served as `dispatcher web` serves it (header deadline, connection limit).
    uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=port)).run()


def _deliveries(kombo_url: str, integration: str) -> list[bytes]:
    """Bodies of order-received events for every OPEN order the simulator holds, read from
    it as Kombo's own orders (so that confirming them finds them)."""
    orders: list[dict[str, Any]] = []
    with KomboClient(DEFAULT_API_KEY, kombo_url) as client:
        for page in client.iter_order_pages(integration, page_size=250):
            orders.extend(raw.data for raw in page.results)
    return [
        json.dumps(
            {
                "id": f"evt-{n}",
                "type": ORDER_EVENT,
                "data": {**order, "integration_id": integration},
            }
        ).encode()
        for n, order in enumerate(orders)
    ]


async def _httpx_sender(stack: AsyncExitStack, url: str) -> Post:
    # One client (one kept-alive connection) per sender, as Kombo's would be: one pool shared
    # by every sender costs more CPU than the receiver spends.
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))

    async def post(body: bytes) -> int:
        headers = {SIGNATURE_HEADER: sign(SECRET, body), "Content-Type": "application/json"}
        response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
        return response.status_code

    return post


_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


async def _raw_sender(stack: AsyncExitStack, url: str) -> Post:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    stack.callback(writer.close)

    async def post(body: bytes) -> int:
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{SIGNATURE_HEADER}: {sign(SECRET, body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(answer)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return int(answer.split(b" ", 2)[1])

    return post


async def _run(
    url: str, sender: str, phases: list[list[bytes]], concurrency: int
) -> list[tuple[list[float], float]]:
    """Send each phase's bodies, ``concurrency`` in flight; per phase: latencies, wall time.

    Senders (and their connections) are made before the first phase: making an httpx
    client costs milliseconds of CPU, which is not the receiver's latency.
    """
    make = _httpx_sender if sender == "httpx" else _raw_sender
    async with AsyncExitStack() as stack:
        posts = [await make(stack, url) for _ in range(concurrency)]
        return [await _phase(posts, bodies) for bodies in phases]


async def _phase(posts: list[Post], bodies: list[bytes]) -> tuple[list[float], float]:
    todo = iter(bodies)
    latencies: list[float] = []

    async def deliver(post: Post) -> None:
        for body in todo:
            started = time.perf_counter()
            status = await post(body)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"bench: HTTP {status} for a valid delivery")

    started = time.perf_counter()
    await asyncio.gather(*(deliver(post) for post in posts))
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
            httpx.get(url + WEBHOOK_PATH, timeout=1)  # 405: it is up (and logs nothing)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("bench: the receiver did not start")


def measure(
    deliveries: int,
    concurrency: int,
    sender: str,
    warmup: int,
    replays: float,
    redis_url: str | None = None,
    *,
    confirm: bool = False,
    kombo_latency: float = 0.0,
) -> dict[str, Any]:
    """Run the benchmark; the figures as a dict (what ``--json`` prints).

    ``redis_url``: an empty Redis to use instead of starting a private one. ``confirm``:
    the receiver confirms each order with the simulator (``kombo_latency`` s a request).
    """
    with simulator_process(1, warmup + deliveries, latency=kombo_latency, seed=7) as kombo:
        return _measure(
            _deliveries(kombo.url, kombo.integration_ids[0]), warmup, concurrency, sender,
            replays, redis_url, kombo.url if confirm else None,
        )  # fmt: skip


def _measure(
    bodies: list[bytes],
    warmup: int,
    concurrency: int,
    sender: str,
    replays: float,
    redis_url: str | None,
    kombo_url: str | None,
) -> dict[str, Any]:
    first, measured = bodies[:warmup], bodies[warmup:]
    sends = measured + measured[: int(len(measured) * replays)]
    random.Random(0).shuffle(sends)  # a replay may even arrive before its original
    with nullcontext(redis_url) if redis_url else private_redis() as redis_url:
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "KOMBO_WEBHOOK_SECRET": SECRET,
            "DISPATCHER_QUEUE": QUEUE,
            "DISPATCHER_LOG_LEVEL": "WARNING",
            "DISPATCHER_WEBHOOK_CONFIRM": "true" if kombo_url else "false",
            "KOMBO_API_KEY": DEFAULT_API_KEY,
            "KOMBO_BASE_URL": kombo_url or "http://127.0.0.1:1",
        }
        command = [sys.executable, str(Path(__file__)), "--serve", str(port)]
        proc = subprocess.Popen(command, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            cpu_before = _cpu_seconds(proc.pid), time.process_time()
            asked_before = int(httpx.get(url + "/bench/kombo-requests").text)
            phases = asyncio.run(_run(url, sender, [first, sends], concurrency))
            receiver_cpu = _cpu_seconds(proc.pid) - cpu_before[0]
            sender_cpu = time.process_time() - cpu_before[1]
            asked = int(httpx.get(url + "/bench/kombo-requests").text) - asked_before
        finally:
            proc.terminate()
            proc.wait(10)
        redis = Redis.from_url(redis_url)
        enqueued = queued_count(redis, QUEUE)
        redis.close()
    if enqueued != len(bodies):
        raise SystemExit(f"bench: {enqueued} jobs enqueued, expected {len(bodies)}")
    latencies, wall = phases[1]
    ms = sorted(latency * 1000 for latency in latencies)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    total = len(first) + len(sends)
    return {
        "confirm": kombo_url is not None,
        "sender": sender,
        "deliveries": len(ms),
        "replays": len(sends) - len(measured),
        "concurrency": concurrency,
        "per_second": round(len(ms) / wall),
        "p50_ms": round(cuts[49], 1),
        "p90_ms": round(cuts[89], 1),
        "p99_ms": round(cuts[98], 1),
        "max_ms": round(ms[-1], 1),
        "jobs_enqueued": enqueued,
        # Requests of the whole run (warm-up included) per 1,000 distinct orders delivered.
        "kombo_requests": asked,
        "kombo_requests_per_1000_orders": round(asked * 1000 / len(bodies), 1),
        "receiver_cpu_ms": round(receiver_cpu * 1000 / total, 2),
        "sender_cpu_ms": round(sender_cpu * 1000 / total, 2),
        "cpus": os.cpu_count(),
        "load_average": [round(load, 1) for load in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sender", choices=["httpx", "raw"], default="httpx")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--replays", type=float, default=0.0, help="fraction of deliveries sent a second time"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--redis-url", help="an empty Redis to use (default: a private one)")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the receiver's start-up objects to the garbage collector (slower tail)",
    )
    parser.add_argument(
        "--confirm",
        choices=["off", "on", "both"],
        default="both",
        help="confirm orders with Kombo (the simulator): off (the baseline), on, or both side by "
        "side (default)",
    )
    parser.add_argument(
        "--kombo-latency", type=float, default=0.0, help="seconds per simulator request"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.no_gc_freeze:
        os.environ["BENCH_GC_FREEZE"] = "0"  # read by the receiver process
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.confirm]
    if args.redis_url and len(modes) > 1:
        parser.error("--redis-url takes one run: add --confirm on or --confirm off")
    rows = [
        measure(
            args.deliveries,
            args.concurrency,
            args.sender,
            args.warmup,
            args.replays,
            args.redis_url,
            confirm=confirm,
            kombo_latency=args.kombo_latency,
        )
        for confirm in modes
    ]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    for r in rows:
        _print(r)
    if len(rows) == 2:
        base, confirmed = rows
        print(
            f"confirmed / unconfirmed: p50 x{confirmed['p50_ms'] / base['p50_ms']:.2f}, "
            f"p99 x{confirmed['p99_ms'] / base['p99_ms']:.2f}; Kombo requests per 1,000 "
            f"orders: {confirmed['kombo_requests_per_1000_orders']}"
        )


def _print(r: dict[str, Any]) -> None:
    print(
        f"{'confirmed with Kombo' if r['confirm'] else 'unconfirmed (baseline)'}: "
        f"{r['deliveries']} deliveries ({r['replays']} replays), {r['concurrency']} in flight, "
        f"{r['sender']} sender: {r['per_second']}/s; {r['cpus']} CPUs, load average "
        f"{' '.join(map(str, r['load_average']))}"
    )
    print(
        f"  latency ms: p50 {r['p50_ms']}  p90 {r['p90_ms']}  p99 {r['p99_ms']}  max {r['max_ms']}"
    )
    print(f"  jobs enqueued: {r['jobs_enqueued']} (each order once)")
    print(
        f"  Kombo requests: {r['kombo_requests']} "
        f"({r['kombo_requests_per_1000_orders']} per 1,000 orders)"
    )
    print(f"  CPU per delivery: receiver {r['receiver_cpu_ms']} ms, sender {r['sender_cpu_ms']} ms")


if __name__ == "__main__":
    main()
