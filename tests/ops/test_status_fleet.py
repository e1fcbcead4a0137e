"""`dispatcher status` shows every worker and queue the dispatcher runs, with `rq info`'s
numbers: real worker processes of both kinds (the handler chain, the results writers) on a
private redis-server, compared with `rq info`'s own output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Worker

from dispatcher import Settings
from dispatcher.testing.sim import Simulator
from dispatcher.web.app import create_app
from support import kill_tree, wait_until
from support.console import TOKEN, logged_in
from support.ops import env_for, invoke, settings_for, sweep
from support.web import serving

pytestmark = pytest.mark.redis

INTEGRATION = "greenhouse:FleetOne"
RQ = Path(sys.executable).with_name("rq")


@pytest.fixture
def fleet(redis: Redis, redis_url: str, namespace: str) -> Iterator[dict[str, Any]]:
    """One orders worker and a results worker pool of two processes, as the Procfile runs
    them, after they have worked a sweep's orders."""
    sim = Simulator([INTEGRATION], 5, seed=3)
    settings = settings_for(
        redis_url, sim, namespace, DISPATCHER_HANDLERS="log", DISPATCHER_CONSOLE_TOKEN=TOKEN
    )
    sweep(redis, settings, sim)
    env = env_for(redis_url, settings)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for args in ([], ["--results", "--processes", "2"])
    ]
    try:
        orders = Queue(settings.queue, connection=redis)
        results = Queue(settings.results_queue, connection=redis)

        def settled() -> bool:
            return (
                len(Worker.all(queue=orders)) == 1
                and len(Worker.all(queue=results)) == 2
                and orders.count == 0
                and orders.finished_job_registry.count == 5
                and orders.started_job_registry.count == 0
            )

        wait_until(settled, timeout=60, what="three workers up and the orders worked")
        yield {"settings": settings, "env": env, "redis": redis}
    finally:
        for proc in procs:
            kill_tree(proc.pid)
            proc.wait(30)


def _rq_info(redis_url: str, *queues: str) -> dict[str, Any]:
    """`rq info --raw --by-queue`'s numbers: per queue (queued, executing, finished, failed),
    and the workers (name -> (queue, state))."""
    answer = subprocess.run(
        [str(RQ), "info", "--url", redis_url, "--raw", "--by-queue", *queues],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # "queue <name> 0, 0 executing, 5 finished, 0 failed", then "<queue>: <worker> (idle), ..."
    counts = {
        m.group(1): tuple(int(m.group(i)) for i in range(2, 6))
        for m in re.finditer(
            r"^queue (\S+) (\d+), (\d+) executing, (\d+) finished, (\d+) failed$",
            answer.stdout,
            re.MULTILINE,
        )
    }
    workers: dict[str, tuple[str, str]] = {}
    for m in re.finditer(r"^(\S+):\s+(.*)$", answer.stdout, re.MULTILINE):
        for w in re.finditer(r"(\w+) \((\w+)\)", m.group(2)):
            workers[w.group(1)] = (m.group(1), w.group(2))
    assert set(counts) == set(queues), answer.stdout
    return {"counts": counts, "workers": workers, "text": answer.stdout}


def test_status_shows_every_worker_and_queue_with_rq_infos_numbers(
    fleet: dict[str, Any], redis_url: str
) -> None:
    settings: Settings = fleet["settings"]
    queues = (settings.queue, settings.results_queue)
    info = _rq_info(redis_url, *queues)
    data = json.loads(invoke(["status", "--json"], fleet["env"]).stdout)

    assert list(data["queues"]) == list(queues), data["queues"]
    shown_counts = {
        name: (q["queued"], q["started"], q["finished"], q["failed"])
        for name, q in data["queues"].items()
    }
    assert shown_counts == info["counts"], info["text"]
    assert shown_counts[settings.queue] == (0, 0, 5, 0)
    assert data["queues"][settings.results_queue]["kind"] == "results"
    shown = {w["name"]: (",".join(w["queues"]), w["state"]) for w in data["workers"]}
    assert shown == info["workers"], info["text"]
    assert sorted(q for q, _ in shown.values()) == sorted(
        [settings.queue, settings.results_queue, settings.results_queue]
    )
    assert not any("worker running" in p for p in data["problems"]), data["problems"]

    text = invoke(["status"], fleet["env"]).stdout
    for name, (listens, state) in shown.items():
        line = rf"^{re.escape(name)}\s+{state}\s+{re.escape(listens)}\s"
        assert re.search(line, text, re.MULTILINE), text
    for name in queues:
        assert re.search(rf"^{re.escape(name)}\s+0\s", text, re.MULTILINE), text


def test_the_console_shows_every_worker_and_queue(fleet: dict[str, Any], redis_url: str) -> None:
    settings: Settings = fleet["settings"]
    info = _rq_info(redis_url, settings.queue, settings.results_queue)
    with serving(create_app(settings, fleet["redis"])) as url, logged_in(url) as client:
        page = client.get("/console/live").text
    assert re.findall(r'data-queue="([^"]+)"', page) == [settings.queue, settings.results_queue]
    assert re.search(r'id="worker-count">3<', page), page
    assert set(re.findall(r'data-worker="([^"]+)"', page)) == set(info["workers"])
    assert re.search(r'id="queued">0<', page) and re.search(r'id="results-queued">0<', page)
