"""Support for the console's tests: a seeded dispatcher (real Redis, the simulator, a sweep,
a worker run with failures, a result written back) to serve (the ``world`` fixture of
tests/web), and an operator's login."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from dispatcher import Settings
from dispatcher.store.keys import Keys
from dispatcher.store.result_record import record_result
from dispatcher.testing.sim import Simulator
from support.ops import FailsFor, settings_for, sweep, work

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
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


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


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def login(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    """Log in with ``token`` (the login form's CSRF field read first), ``headers`` on both."""
    form = client.get("/", headers=headers)
    return client.post(
        "/console/login", data={"token": token, "csrf": csrf_of(form.text)}, headers=headers
    )


@contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    """An HTTP client with a console session."""
    with httpx.Client(base_url=url, timeout=10) as client:
        answer = login(client, TOKEN)
        assert answer.status_code == 303, answer.text
        yield client
