"""Retention: finished jobs (order payloads: personal data) and failed jobs expire after the
configured times; the seen store keeps ids only."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import pytest
from redis import Redis

from dispatcher.store.keys import Keys, job_id_for
from dispatcher.testing.sim import Simulator
from support import wait_until
from support.ops import TESTS, dispatcher, env_for, invoke, settings_for

pytestmark = pytest.mark.redis
INTEGRATION = "greenhouse:Retention"


def run_pipeline(redis_url: str, env: dict[str, str], sim: Simulator, failing: str) -> None:
    with sim.serve() as server:
        poll = dispatcher(["poll", "--once"], {**env, "KOMBO_BASE_URL": server.url})
    assert poll.returncode == 0, poll.stderr
    worker = subprocess.run(
        [sys.executable, str(TESTS / "_test_worker.py")],
        env={**env, "TEST_CHAIN": "flaky", "TEST_FAIL_ORDERS": failing},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr


@pytest.mark.slow
def test_the_defaults_are_seven_and_thirty_days(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator([INTEGRATION], 2, seed=16)
    settings = settings_for(redis_url, sim, namespace)
    assert (settings.result_ttl, settings.failure_ttl) == (7 * 86400, 30 * 86400)
    failing = sim.orders(INTEGRATION)[0]["id"]
    run_pipeline(redis_url, env_for(redis_url, settings), sim, failing)
    for order in sim.orders(INTEGRATION):
        ttl = redis.ttl(f"rq:job:{job_id_for(namespace, INTEGRATION, order['id'])}")
        expected = 30 * 86400 if order["id"] == failing else 7 * 86400
        assert expected - 60 < ttl <= expected


def test_finished_and_failed_jobs_keep_the_configured_times(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator([INTEGRATION], 4, seed=17)
    settings = settings_for(redis_url, sim, namespace)
    env = env_for(redis_url, settings, DISPATCHER_RESULT_TTL="1234", DISPATCHER_FAILURE_TTL="4321")
    failing = sim.orders(INTEGRATION)[0]["id"]
    run_pipeline(redis_url, env, sim, failing)
    for order in sim.orders(INTEGRATION):
        job_id = job_id_for(namespace, INTEGRATION, order["id"])
        expected = 4321 if order["id"] == failing else 1234
        for key in (f"rq:job:{job_id}", f"rq:results:{job_id}"):
            assert expected - 60 < redis.ttl(key) <= expected, key
    seen = redis.hgetall(Keys(namespace).seen(INTEGRATION))
    assert {k.decode() for k in seen} == {o["id"] for o in sim.orders(INTEGRATION)}
    # "<first seen>:<generation of the last full sweep that saw it OPEN>", nothing else
    assert all(value.replace(b":", b"").isdigit() for value in seen.values())


@pytest.mark.slow
def test_expired_jobs_leave_no_personal_data_behind(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator([INTEGRATION], 3, seed=18)
    settings = settings_for(redis_url, sim, namespace)
    env = env_for(redis_url, settings, DISPATCHER_RESULT_TTL="1", DISPATCHER_FAILURE_TTL="2")
    emails = [o["candidate"]["email"].encode() for o in sim.orders(INTEGRATION)]
    run_pipeline(redis_url, env, sim, sim.orders(INTEGRATION)[0]["id"])
    # The payloads, for now: unless the 1 s TTL ran out already (a loaded machine) and the
    # jobs with it.
    stored = _everything(redis)
    assert any(email in stored for email in emails) or not redis.keys("rq:job:*")
    wait_until(lambda: not redis.keys("rq:job:*"), timeout=10, what="the jobs to expire")
    everything = _everything(redis)
    assert not any(email in everything for email in emails)
    data = json.loads(invoke(["status", "--json"], env).stdout)
    queue = data["queues"][settings.queue]
    assert (queue["finished"], queue["failed"]) == (0, 0)  # expired entries are not counted
    assert data["orders"]["seen"] == 3  # the ids stay: no second dispatch


def _everything(redis: Redis) -> bytes:
    """Every value stored in Redis, concatenated (RQ's compressed job data unpacked)."""
    parts: list[bytes] = []
    for key in redis.keys("*"):
        kind = redis.type(key).decode()
        if kind == "string":
            parts.append(redis.get(key) or b"")
        elif kind == "hash":
            parts.extend(redis.hgetall(key).values())
        elif kind == "list":
            parts.extend(redis.lrange(key, 0, -1))
        elif kind in {"set", "zset"}:
            parts.extend(redis.smembers(key) if kind == "set" else redis.zrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in redis.xrange(key):
                parts.extend(fields.values())
    unpacked = []
    for part in parts:
        try:
            unpacked.append(zlib.decompress(part))
        except zlib.error:
            unpacked.append(part)
    return b"\n".join(unpacked)
