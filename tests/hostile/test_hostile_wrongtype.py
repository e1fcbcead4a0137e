"""Issue 12, item 8: keys of the wrong type are data problems, named, not outages or silence.

Each test plants a key of another type where the dispatcher keeps one (a string where the
seen hash belongs, a hash as a lease, a string as the schedule...) in a real Redis and checks
what an operator sees: the sweep record and the ERROR line naming the key, the other
integrations still dispatched, ``dispatcher status`` showing the rest with one line per
problem, and ``/metrics`` and ``/healthz`` telling the same story.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue

from dispatcher import Settings
from dispatcher.kombo.client import KomboClient
from dispatcher.logs import escape_controls
from dispatcher.ops.status import take_snapshot
from dispatcher.poller.fleet_loop import FleetLoop
from dispatcher.poller.poller import Poller, SweepPolicy
from dispatcher.poller.schedule import Schedule
from dispatcher.store.key_schema import SCHEMA
from dispatcher.store.key_types import integration_keys, shared_keys
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import Ledger
from dispatcher.store.wrongtype import WRONGTYPE_CODE, describe, find_wrong_types
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.web.app import create_app
from support import queued_jobs, wait_until
from support.ops import invoke, settings_for
from support.web import samples, serving_client

pytestmark = pytest.mark.redis

GOOD = ["greenhouse:WrongTypeGood1", "lever:WrongTypeGood2"]
BAD = "personio:WrongTypeBad"


@pytest.fixture
def sim() -> Simulator:
    return Simulator([*GOOD, BAD], 6, seed=12)


@pytest.fixture
def conf(redis_url: str, sim: Simulator, namespace: str) -> Settings:
    return settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="log")


@pytest.fixture
def keys(conf: Settings) -> Keys:
    return Keys(conf.namespace)


def make_poller(redis: Redis, conf: Settings, sim: Simulator, **kw: Any) -> Poller:
    client = KomboClient(
        DEFAULT_API_KEY, sim.base_url, transport=sim.transport(), retry_budget=0,
        sleep=lambda s: None,
    )  # fmt: skip
    ledger = Ledger(redis, Queue(conf.queue, connection=redis), conf.namespace)
    return Poller(
        client,
        ledger,
        sim.integration_ids,
        # Due at once, swept again every 0.2 s, a failing one backs off to at most 0.4 s.
        policy=SweepPolicy(interval=0.2, backoff_cap=0.4),
        schedule=Schedule(redis, ledger.keys, lease_ttl=5),
        **kw,
    )


def start(poller: Poller) -> threading.Thread:
    thread = threading.Thread(target=FleetLoop(poller).run, kwargs={"sync_every": 0.1}, daemon=True)
    thread.start()
    return thread


def queued(redis: Redis, conf: Settings) -> set[tuple[str, str]]:
    jobs = queued_jobs(redis, conf.queue)
    return {(j.meta["integration_id"], j.meta["order_id"]) for j in jobs}


def open_orders(sim: Simulator, integration_id: str) -> set[tuple[str, str]]:
    return {(integration_id, o["id"]) for o in sim.orders(integration_id, status="OPEN")}


def sweep_record(redis: Redis, keys: Keys, integration_id: str) -> dict[str, str]:
    raw = redis.hgetall(keys.sweep(integration_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def errors_naming(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and key in r.getMessage()
    ]


# -- the fleet poller -------------------------------------------------------------------------


def test_a_seen_hash_of_the_wrong_type_is_that_integrations_error_and_the_others_flow(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a string where BAD's seen hash belongs, when the fleet poller runs, then BAD's
    sweeps fail with an ERROR line and a sweep record naming the key, once per sweep, and
    the other integrations' orders are all dispatched."""
    caplog.set_level(logging.INFO, logger="dispatcher")
    seen = keys.seen(BAD)
    redis.set(seen, "planted")
    poller = make_poller(redis, conf, sim)
    thread = start(poller)
    try:
        wait_until(
            lambda: int(sweep_record(redis, keys, BAD).get("error_count", 0)) >= 3,
            what="three failed sweeps of the integration with the broken key",
        )
        wait_until(
            lambda: queued(redis, conf) >= open_orders(sim, GOOD[0]) | open_orders(sim, GOOD[1])
        )
    finally:
        poller.stop.set()
        thread.join(20)
    record = sweep_record(redis, keys, BAD)
    assert record["last_error_code"] == WRONGTYPE_CODE
    assert f"key {seen} holds a string where a hash belongs" in record["last_error"]
    assert int(record["consecutive_failures"]) == int(record["error_count"])
    assert not any(i == BAD for i, _ in queued(redis, conf))
    assert redis.get(seen) == b"planted"  # reported, not repaired behind the operator's back
    # One ERROR line per failed sweep, each naming the key; nothing says "Redis unavailable".
    assert len(errors_naming(caplog, seen)) == int(record["error_count"])
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


def test_a_lease_of_the_wrong_type_fails_the_integration_instead_of_starving_it(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """A hash where BAD's lease belongs never expires, and SET NX fails on it exactly as on
    a lease held by another poller: before, BAD was never claimed again, without a word."""
    lease = keys.lease(BAD)
    redis.hset(lease, "owner", "nobody")
    poller = make_poller(redis, conf, sim)
    thread = start(poller)
    try:
        wait_until(
            lambda: int(sweep_record(redis, keys, BAD).get("error_count", 0)) >= 2,
            what="the unclaimable integration's failures recorded",
        )
        wait_until(
            lambda: queued(redis, conf) >= open_orders(sim, GOOD[0]) | open_orders(sim, GOOD[1])
        )
    finally:
        poller.stop.set()
        thread.join(20)
    record = sweep_record(redis, keys, BAD)
    assert record["last_error_code"] == WRONGTYPE_CODE
    assert f"key {lease} holds a hash where a string belongs" in record["last_error"]
    # Rescheduled with backoff, not retried on every turn of the loop.
    assert len(errors_naming(caplog, lease)) == int(record["error_count"]) <= 10


def test_a_schedule_of_the_wrong_type_is_one_error_naming_it_and_the_poller_recovers(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set(keys.schedule, "planted")
    poller = make_poller(redis, conf, sim)
    thread = start(poller)
    try:
        wait_until(lambda: bool(errors_naming(caplog, keys.schedule)), what="the error line")
        time.sleep(0.5)  # the poller keeps trying meanwhile
        redis.delete(keys.schedule)  # the operator repairs it
        wait_until(
            lambda: (
                queued(redis, conf)
                == set().union(*map(lambda i: open_orders(sim, i), sim.integration_ids))
            )
        )
    finally:
        poller.stop.set()
        thread.join(20)
    lines = errors_naming(caplog, keys.schedule)
    assert len(lines) == 1, lines
    assert f"key {keys.schedule} holds a string where a zset belongs" in lines[0]
    assert not [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert any("usable again" in r.getMessage() for r in caplog.records)


def test_poll_once_reports_the_broken_key_and_sweeps_the_rest(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys
) -> None:
    """``poll --once``: the sweep hash itself broken, so nothing can be recorded there; the
    report still names it, and the other integrations are swept and recorded."""
    redis.rpush(keys.sweep(BAD), "planted")
    report = make_poller(redis, conf, sim).sweep()
    assert report.errors == {
        BAD: f"integration {BAD}: key {keys.sweep(BAD)} holds a list where a hash belongs: "
        "repair or delete it"
    }
    assert report.orders_new == 2 * len(open_orders(sim, GOOD[0]))
    assert all(sweep_record(redis, keys, i).get("last_sweep_at") for i in GOOD)


# -- dispatcher status ------------------------------------------------------------------------


def _planted(redis: Redis, keys: Keys, conf: Settings, where: str) -> tuple[str, str | None]:
    """Plant a key of the wrong type; return it and the integration it belongs to."""
    queue_key = Queue(conf.queue, connection=redis).key
    choices: dict[str, tuple[str, str | None]] = {
        "seen": (keys.seen(BAD), BAD),
        "sweep": (keys.sweep(BAD), BAD),
        "lease": (keys.lease(BAD), BAD),
        "results": (keys.results(BAD), BAD),
        "schedule": (keys.schedule, None),
        "paused": (keys.paused, None),
        "integrations": (keys.integrations, None),
        "seen-integrations": (keys.seen_integrations, None),
        "stats": (keys.stats, None),
        "step-stats": (keys.step_stats, None),
        "kombo-requests": (keys.kombo_requests, None),
        "queue": (queue_key, None),
        "failed registry": (f"rq:failed:{conf.queue}", None),
        "workers": (f"rq:workers:{conf.queue}", None),
    }
    key, integration = choices[where]
    redis.delete(key)
    if where == "lease":
        redis.rpush(key, "planted")
    else:
        redis.set(key, "planted")
    return key, integration


WHERE = [
    "seen",
    "sweep",
    "lease",
    "results",
    "schedule",
    "paused",
    "integrations",
    "seen-integrations",
    "stats",
    "step-stats",
    "kombo-requests",
    "queue",
    "failed registry",
    "workers",
]


@pytest.mark.parametrize("where", WHERE)
def test_status_shows_a_broken_key_as_one_problem_and_the_rest_of_the_snapshot(
    redis: Redis, redis_url: str, conf: Settings, sim: Simulator, keys: Keys, where: str
) -> None:
    make_poller(redis, conf, sim).sweep()  # every integration swept and recorded
    key, integration = _planted(redis, keys, conf, where)
    env = {
        "REDIS_URL": redis_url,
        "KOMBO_INTEGRATION_IDS": ",".join(sim.integration_ids),
        "DISPATCHER_NAMESPACE": conf.namespace,
    }
    text = invoke(["status"], env)
    as_json = invoke(["status", "--json"], env)
    assert (text.exit_code, as_json.exit_code) == (0, 0), text.stderr + as_json.stderr
    assert "Traceback" not in text.output + as_json.output
    kind = "list" if where == "lease" else "string"
    problem = f"key {key} holds a {kind} where a "
    lines = [line for line in text.stdout.splitlines() if problem in line]
    assert len(lines) == 1, text.stdout
    prefix = f"  - integration {integration}: " if integration else "  - "
    assert lines[0].startswith(prefix + problem)
    snapshot = json.loads(as_json.stdout)
    assert snapshot["ok"] is False
    assert [p for p in snapshot["problems"] if problem in p] == [lines[0].removeprefix("  - ")]
    assert [b["key"] for b in snapshot["broken_keys"]] == [key]
    # The rest of the snapshot is still there.
    for good in GOOD:
        assert snapshot["integrations"][good]["state"] == "ok"
        assert f"{good}  " in text.stdout
    if integration:
        assert snapshot["integrations"][integration]["state"] == "failing"
        assert snapshot["integrations"][integration]["broken_keys"] == [key]
    assert "QUEUE" in text.stdout and "HANDLER" in text.stdout


# -- /metrics and /healthz --------------------------------------------------------------------


def test_metrics_and_healthz_agree_on_a_broken_shared_key(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys
) -> None:
    make_poller(redis, conf, sim).sweep()
    redis.set(keys.schedule, "planted")
    with serving_client(create_app(conf, redis)) as client:
        health = client.get("/healthz")
        metrics = client.get("/metrics")
    # Redis answers: up; the key is broken: a problem, and not healthy.
    got = samples(metrics.text)
    assert got[("dispatcher_redis_up", ())] == 1
    assert got[("dispatcher_redis_broken_keys", ())] == 1
    assert got[("dispatcher_status_problems", ())] >= 1
    assert health.status_code == 503
    assert health.text == (
        f"redis: key {keys.schedule} holds a string where a zset belongs: repair or delete it\n"
    )


def test_metrics_name_the_integration_whose_key_is_broken(
    redis: Redis, conf: Settings, sim: Simulator, keys: Keys
) -> None:
    """A broken key of one integration is that integration's problem: /metrics says so,
    /healthz stays 200 (the dispatcher serves every other integration; README)."""
    make_poller(redis, conf, sim).sweep()
    redis.set(keys.seen(BAD), "planted")
    with serving_client(create_app(conf, redis)) as client:
        health = client.get("/healthz")
        metrics = client.get("/metrics")
    got = samples(metrics.text)
    assert got[("dispatcher_redis_up", ())] == 1
    assert got[("dispatcher_redis_broken_keys", ())] == 1
    assert got[("dispatcher_integration_healthy", (("integration", BAD),))] == 0
    assert all(got[("dispatcher_integration_healthy", (("integration", g),))] == 1 for g in GOOD)
    # The first line is the verdict; notices about the server may follow (persistence off).
    assert (health.status_code, health.text.splitlines()[0]) == (200, "ok")


# -- the shared helper ------------------------------------------------------------------------


def test_the_helpers_types_are_the_schemas(conf: Settings, keys: Keys) -> None:
    queue_key = Queue(conf.queue, connection=Redis()).key
    expected = {**integration_keys(keys, "lever:X"), **shared_keys(keys, queue_key)}
    for key, kind in expected.items():
        specs = [s for s in SCHEMA if s.regex(conf.namespace, conf.queue).match(key)]
        assert specs and specs[0].type == kind, key


# Ids as an attacker would send them: separators, control characters, unicode.
ids = st.text(
    alphabet=st.sampled_from(
        [":", "\n", "\r", "\x00", "\x1b", "\t", " ", "é", "猫", "🙂", "a", "Z", "9"]
    ),
    min_size=1,
    max_size=30,
)


@given(integration_id=ids)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_broken_key_of_any_integration_id_is_one_line_naming_it(
    redis_url: str, integration_id: str
) -> None:
    redis = Redis.from_url(redis_url)
    namespace = f"p{uuid.uuid4().hex[:10]}"
    keys = Keys(namespace)
    try:
        conf = Settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace)
        redis.sadd(keys.swept_integrations, integration_id)
        redis.set(keys.seen(integration_id), "planted")
        snapshot = take_snapshot(redis, conf)
        mine = [p for p in snapshot.problems if escape_controls(keys.seen(integration_id)) in p]
        assert len(mine) == 1
        assert all(p.isprintable() for p in snapshot.problems)
        wrong = find_wrong_types(redis, {keys.seen(integration_id): "hash"})
        line = describe(RuntimeError("WRONGTYPE"), wrong)
        assert line.isprintable() and escape_controls(keys.seen(integration_id)) in line
    finally:
        for key in redis.scan_iter(f"{namespace}:*"):
            redis.delete(key)
        redis.close()


@pytest.mark.parametrize("command", [["poll", "--once"], ["integrations", "list"]])
def test_a_command_meeting_a_broken_shared_key_says_so_in_one_line(
    redis: Redis, redis_url: str, conf: Settings, sim: Simulator, keys: Keys, command: list[str]
) -> None:
    redis.set(keys.integrations, "planted")
    env = {
        "REDIS_URL": redis_url,
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": ",".join(sim.integration_ids),
        "DISPATCHER_NAMESPACE": conf.namespace,
    }
    result = invoke(command, env)
    assert result.exit_code == 1
    assert result.stderr == (
        f"dispatcher: error: Redis refused a command: key {keys.integrations} holds a string "
        "where a set belongs: repair or delete it\n"
    )
