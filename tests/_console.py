"""Support for the console's tests: a seeded dispatcher (real Redis, the simulator, a sweep,
a worker run with failures, a result written back) served by uvicorn on a real socket."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from _ops import FailsFor, settings_for, sweep, work
from redis import Redis

from _support import free_port
from dispatcher import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.result_record import record_result
from dispatcher.testing.sim import Simulator
from dispatcher.web.app import create_app

TOKEN = "console-token-for-tests-0123"
GOOD = ["greenhouse:ConsoleOne", "lever:ConsoleTwo"]
BROKEN = "workday:ConsoleBroken"
HOSTILE_ID = "HOSTILE1"
FAILING_ID = "FAILS2"
# Customer data, attacker-controlled: each would run or inject markup if rendered raw.
HOSTILE_NAME = '<script>alert("name")</script>'
HOSTILE_TITLE = '<img src=x onerror=alert("title")>'
HOSTILE_REASON = '<script>alert("reason")</script>'
HOSTILE_ERROR = '"><svg onload=alert("error")>'
ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class World:
    redis: Redis
    settings: Settings
    sim: Simulator
    url: str
    redis_url: str

    def keys(self) -> Keys:
        return Keys(self.settings.namespace)


def seed(redis: Redis, redis_url: str, namespace: str, **extra: Any) -> tuple[Settings, Simulator]:
    sim = Simulator(GOOD, 4, seed=5)
    candidate = dict(sim.orders(GOOD[0])[0]["candidate"])
    candidate.update(first_name=HOSTILE_NAME, email="hostile.candidate@example.com")
    job = dict(sim.orders(GOOD[0])[0]["job"], name=HOSTILE_TITLE)
    sim.add_order(GOOD[0], id=HOSTILE_ID, candidate=candidate, job=job)
    sim.add_order(GOOD[1], id=FAILING_ID)
    settings = settings_for(
        redis_url,
        sim,
        namespace,
        KOMBO_INTEGRATION_IDS=",".join([*GOOD, BROKEN]),
        DISPATCHER_CONSOLE_TOKEN=TOKEN,
        **extra,
    )
    sweep(redis, settings, sim, integration_ids=GOOD)
    keys = Keys(namespace)
    # A failing integration whose recorded error carries markup (Kombo's words are Kombo's).
    now = time.time()
    redis.hset(
        keys.sweep(BROKEN),
        mapping={
            "last_attempt_at": now,
            "last_error": f"integration {BROKEN}: {HOSTILE_ERROR}",
            "last_error_code": "KOMBO.<b>BAD</b>",
            "last_error_at": now,
            "error_count": 3,
        },
    )
    redis.sadd(keys.swept_integrations, BROKEN)
    work(redis, settings, [FailsFor("vendor", {HOSTILE_ID, FAILING_ID}, reason=HOSTILE_REASON)])
    finished = next(o["id"] for o in sim.orders(GOOD[1]) if o["id"] != FAILING_ID)
    record_result(redis, keys, GOOD[1], finished, "COMPLETED")
    return settings, sim


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread); yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def world(redis: Redis, redis_url: str, namespace: str) -> Iterator[World]:
    settings, sim = seed(redis, redis_url, namespace)
    with serving(create_app(settings, redis)) as url:
        yield World(redis, settings, sim, url, redis_url)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    """An HTTP client with a console session."""
    with httpx.Client(base_url=url, timeout=10) as client:
        form = client.get("/")
        answer = client.post("/console/login", data={"token": TOKEN, "csrf": csrf_of(form.text)})
        assert answer.status_code == 303, answer.text
        yield client
