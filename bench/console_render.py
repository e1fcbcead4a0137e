"""The console's integrations page with many integrations, and the overview's round trips.

    python bench/console_render.py [--integrations 1000] [--reps 15]

A private redis-server holds N integrations as a running fleet leaves them (registered, a
recorded sweep each, a few remembered orders, results, every tenth failing). Measured in
process, through the ASGI app (no socket: server time only):

- GET /console/integrations (all N rows) against the baseline `take_snapshot` alone (the
  read every row comes from): medians, and the page's own cost (the difference);
- the overview's refresh (GET /console/live): Redis round trips, counted at the connection,
  for N/10 and N integrations, with no worker and with three registered RQ workers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import httpx
from redis import Redis
from redis.connection import Connection
from rq import Queue, Worker

from _support import Row, common_args, median, private_redis, report
from dispatcher.ops.status import take_snapshot
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys
from dispatcher.web.app import create_app

TOKEN = "bench-console-token-0123456789"
NAMESPACE = "bench"


def populate(redis: Redis, n: int) -> list[str]:
    keys = Keys(NAMESPACE)
    ids = [f"greenhouse:Bench{i:05d}" for i in range(n)]
    IntegrationRegistry(redis, keys).add(ids)
    now = time.time()
    with redis.pipeline(transaction=False) as pipe:
        for index, integration_id in enumerate(ids):
            sweep: dict[str, Any] = {
                "last_attempt_at": now - 30, "last_sweep_at": now - 30, "duration": 0.4,
                "orders_seen": 12, "orders_new": 1, "pages": 1, "error_count": 0,
            }  # fmt: skip
            if index % 10 == 0:
                sweep.update(last_error=f"integration {integration_id}: KOMBO.RATE_LIMIT: slow "
                             "down", last_error_code="KOMBO.RATE_LIMIT", last_error_at=now - 5,
                             error_count=2)  # fmt: skip
            pipe.hset(keys.sweep(integration_id), mapping=sweep)
            pipe.hset(keys.seen(integration_id), mapping={f"O{j}": int(now) for j in range(5)})
            pipe.hset(keys.results(integration_id), "O1", '{"status": "COMPLETED", "at": 1}')
            pipe.zadd(keys.schedule, {integration_id: now + 30})
        pipe.sadd(keys.seen_integrations, *ids)
        pipe.sadd(keys.swept_integrations, *ids)
        pipe.execute()
    return ids


class RoundTrips:
    """Counts what goes over the wire: one per command sent, one per pipeline."""

    def __init__(self) -> None:
        self.count = 0
        self._original = Connection.send_packed_command

    def __enter__(self) -> RoundTrips:
        counter = self

        def send(conn: Connection, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            counter._original(conn, command, check_health)

        Connection.send_packed_command = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Connection.send_packed_command = self._original  # type: ignore[method-assign]


async def get(client: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    answer = await client.get(path)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
    return elapsed


async def measure(redis_url: str, settings: Settings, reps: int, n: int) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    app = create_app(settings, redis)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        form = await client.get("/")
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        login = await client.post("/console/login", data={"token": TOKEN, "csrf": csrf})
        assert login.status_code == 303, login.text
        page = await client.get("/console/integrations")
        assert page.text.count("<tr data-integration=") == n, "not every row rendered"
        await get(client, "/console/integrations")  # warm: templates compiled, scripts loaded
        pages = [await get(client, "/console/integrations") for _ in range(reps)]
        snapshots = []
        for _ in range(reps):
            started = time.perf_counter()
            take_snapshot(redis, settings)
            snapshots.append(time.perf_counter() - started)
        with RoundTrips() as trips:
            await get(client, "/console/live")
        size = len(page.content)
    redis.close()
    return {"pages": pages, "snapshots": snapshots, "live_trips": trips.count, "size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=1000)
    common_args(parser, reps=15)
    args = parser.parse_args()
    n = args.integrations
    with private_redis() as redis_url:
        redis = Redis.from_url(redis_url)
        settings = Settings(
            REDIS_URL=redis_url, DISPATCHER_NAMESPACE=NAMESPACE, DISPATCHER_CONSOLE_TOKEN=TOKEN
        )
        trips: dict[str, int] = {}
        populate(redis, max(1, n // 10))
        trips[f"{max(1, n // 10)} integrations, 0 workers"] = asyncio.run(
            measure(redis_url, settings, 1, max(1, n // 10))
        )["live_trips"]
        redis.flushall()
        populate(redis, n)
        result = asyncio.run(measure(redis_url, settings, args.reps, n))
        trips[f"{n} integrations, 0 workers"] = result["live_trips"]
        queue = Queue(settings.queue, connection=redis)
        for index in range(3):
            Worker([queue], connection=redis, name=f"bench-worker-{index}").register_birth()
        trips[f"{n} integrations, 3 workers"] = asyncio.run(measure(redis_url, settings, 1, n))[
            "live_trips"
        ]
        redis.close()
    page_ms = [s * 1000 for s in result["pages"]]
    snap_ms = [s * 1000 for s in result["snapshots"]]
    page, snap = median(page_ms), median(snap_ms)
    rows = [
        Row(
            bench="console_render",
            measure=f"GET /console/integrations, {n} rows (server time)",
            value=page,
            unit="ms",
            baseline="take_snapshot alone",
            baseline_value=snap,
            ratio=page / snap if snap else None,
            ratio_note="x the snapshot's time (the page = snapshot + rows + template)",
            target="<= 300 ms",
            met=page <= 300,
            samples=page_ms,
            baseline_samples=snap_ms,
            detail=f"page {result['size'] / 1024:.0f} KiB; rendering alone ~{page - snap:.1f} ms",
        ),
        Row(
            bench="console_render",
            measure="overview refresh (GET /console/live): Redis round trips",
            value=float(trips[f"{n} integrations, 0 workers"]),
            unit="round trips",
            baseline=f"{max(1, n // 10)} integrations",
            baseline_value=float(trips[f"{max(1, n // 10)} integrations, 0 workers"]),
            ratio=trips[f"{max(1, n // 10)} integrations, 0 workers"]
            / trips[f"{n} integrations, 0 workers"],
            ratio_note=f"(1.0: the same with {n // max(1, n // 10)}x the integrations)",
            target="constant in the number of integrations",
            met=len({trips[k] for k in trips if k.endswith("0 workers")}) == 1,
            detail="; ".join(f"{k}: {v}" for k, v in trips.items())
            + " (the snapshot's listing of RQ workers, Worker.all, adds round trips per worker)",
        ),
    ]
    report(rows, args.json, header=f"console_render: {n} integrations, {args.reps} reps")


if __name__ == "__main__":
    main()
