"""The Redis key schema: documented once (dispatcher.store.key_schema.SCHEMA, shown in
docs/redis-keys.md), and a full run writes nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job

from dispatcher.store.key_schema import SCHEMA, schema_markdown
from dispatcher.store.keys import Keys, job_id_for
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import Simulator
from support.ops import TESTS, dispatcher, env_for, invoke, settings_for, sweep

DOC = TESTS.parent / "docs" / "redis-keys.md"


def test_the_document_shows_the_schema_of_the_code() -> None:
    text = DOC.read_text()
    assert schema_markdown() in text, (
        "docs/redis-keys.md is out of date: paste the table "
        "`python -c 'from dispatcher.store.key_schema import schema_markdown; print(schema_markdown())'`"
    )


def test_every_key_method_of_keys_is_in_the_schema() -> None:
    keys = Keys("{ns}")
    named = {
        keys.seen("{integration}"),
        keys.seen_integrations,
        keys.sweep("{integration}"),
        keys.steps("{integration}", "{order}"),
        keys.effects("{integration}", "{order}", "{handler}"),
        keys.step_stats,
        keys.stats,
        keys.swept_integrations,
        keys.kombo_requests,
        keys.integrations,
        keys.paused,
        keys.schedule,
        keys.lease("{integration}"),
        keys.rejected("{integration}"),
        keys.results("{integration}"),
        keys.throughput("{hour}"),  # type: ignore[arg-type]
        keys.console_login("{client}"),
        keys.console_login_all,
        keys.console_session("{nonce}"),
        keys.webhook_unconfirmed,
        keys.webhook_unconfirmed_since,
        keys.outbox("{integration}", "{order}"),
        keys.outbox_index("{state}"),
        keys.kombo_writes("{integration}"),
        keys.in_flight("{integration}"),
        keys.fair_ring,
        keys.fair_parked,
        keys.timeline("{integration}", "{order}"),
        keys.provisioned,
        keys.result_stats,
        keys.dispatched("{integration}", "{order}"),
        keys.reconcile,
        keys.reconcile_lease,
    }
    methods = {name for name in dir(Keys) if not name.startswith("_") and name != "namespace"}
    assert len(methods) == len(named), "a new Keys member: add it here and to SCHEMA"
    assert named <= {spec.pattern for spec in SCHEMA}


def test_patterns_match_what_they_describe() -> None:
    by_pattern = {spec.pattern: spec.regex("ns", "ns-orders") for spec in SCHEMA}
    assert by_pattern["{ns}:seen:{integration}"].match("ns:seen:lever:abc")
    assert not by_pattern["{ns}:seen:{integration}"].match("other:seen:lever:abc")
    assert by_pattern["rq:job:{job_id}"].match("rq:job:order-" + "a" * 32)
    assert not by_pattern["rq:job:{job_id}"].match("rq:job:someone-elses-job")
    assert not by_pattern["rq:queue:{queue}"].match("rq:queue:default")


@pytest.fixture
def keyspace(redis: Redis) -> Iterator[set[str]]:
    """Every key written while the test runs (Redis keyspace notifications)."""
    redis.config_set("notify-keyspace-events", "KA")
    pubsub = redis.pubsub()
    pubsub.psubscribe("__keyspace@0__:*")
    pubsub.get_message(timeout=5)  # the subscription's confirmation
    written: set[str] = set()
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message and message["type"] == "pmessage":
                written.add(message["channel"].decode().split(":", 1)[1])

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()
        redis.config_set("notify-keyspace-events", "")


@pytest.mark.slow
@pytest.mark.redis
def test_a_full_run_writes_only_documented_keys(
    redis: Redis, redis_url: str, namespace: str, keyspace: set[str]
) -> None:
    """Given a sweep (one integration failing), a forking worker with its scheduler (orders
    finished, failed, waiting for a retry), the step records the handler chain keeps, and
    every operator command, then every key written matches a documented pattern, and
    every key left has the documented type."""
    sim = Simulator(["greenhouse:KeysOne", "lever:KeysTwo"], 6, seed=14)
    settings = settings_for(
        redis_url,
        sim,
        namespace,
        KOMBO_INTEGRATION_IDS="greenhouse:KeysOne,lever:KeysTwo,workday:KeysMissing",
        DISPATCHER_HANDLERS="log,provision",
    )
    sweep(redis, settings, sim)
    orders = [o["id"] for o in sim.orders("greenhouse:KeysOne")]
    retried = Job.fetch(
        job_id_for(namespace, "greenhouse:KeysOne", orders[1]),
        connection=redis,
        serializer=JOB_SERIALIZER,
    )
    retried.retries_left, retried.retry_intervals = 1, [3600]
    retried.save()
    env = env_for(
        redis_url,
        settings,
        TEST_CHAIN="flaky",
        TEST_FAIL_ORDERS=orders[0],
        TEST_RETRY_ORDERS=orders[1],
    )
    worker = subprocess.run(
        [sys.executable, str(TESTS / "_test_worker.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    keys = Keys(namespace)
    # What the handler chain records (dispatcher.worker.jobs), written here as it would.
    for order_id in orders[2:]:
        redis.hset(
            keys.steps("greenhouse:KeysOne", order_id),
            "log",
            json.dumps({"output": {}, "completed_at": 1.0}),
        )
        redis.expire(keys.steps("greenhouse:KeysOne", order_id), settings.result_ttl)
    redis.sadd(keys.effects("greenhouse:KeysOne", orders[0], "provision"), "account")
    redis.hincrby(keys.step_stats, "provision:failed", 2)

    for args in (
        ["status"],
        ["status", "--json"],
        ["failed"],
        ["show", orders[0]],
        ["show", orders[1], "--json"],
        ["forget", orders[0], "--integration", "greenhouse:KeysOne", "--yes"],
    ):
        result = invoke(args, env)
        assert result.exit_code == 0, (args, result.output)
    assert dispatcher(["status"], env).returncode == 0  # and once in a process of its own
    sweep(redis, settings, sim)  # re-dispatches the forgotten order
    rq = subprocess.run(
        [str(Path(sys.executable).parent / "rq"), "info", "-u", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rq.returncode == 0, rq.stderr

    patterns = [(spec, spec.regex(namespace, settings.queue)) for spec in SCHEMA]
    left = {key.decode() for key in redis.keys("*")}
    assert keyspace, "keyspace notifications did not arrive"
    undocumented = sorted(
        key for key in keyspace | left if not any(regex.match(key) for _, regex in patterns)
    )
    assert undocumented == []
    for key in left:
        spec = next(spec for spec, regex in patterns if regex.match(key))
        assert redis.type(key).decode() == spec.type, (key, spec.pattern)
    # The run did touch what the schema promises: the seen store, jobs, registries, workers.
    touched = {spec.pattern for spec, regex in patterns if any(regex.match(k) for k in keyspace)}
    assert {
        "{ns}:seen:{integration}",
        "{ns}:sweep:{integration}",
        "{ns}:kombo-requests",
        "{ns}:swept-integrations",
        "rq:job:{job_id}",
        "rq:results:{job_id}",
        "rq:finished:{queue}",
        "rq:failed:{queue}",
        "rq:scheduled:{queue}",
        "rq:wip:{queue}",
        "rq:worker:{worker}",
        "rq:scheduler-lock:{queue}",
    } <= touched


def test_the_queue_defaults_to_one_per_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatcher.settings import load_settings

    for name in ("DISPATCHER_NAMESPACE", "DISPATCHER_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().queue == "dispatcher-orders"
    monkeypatch.setenv("DISPATCHER_NAMESPACE", "tenant-b")
    assert load_settings().queue == "tenant-b-orders"
    monkeypatch.setenv("DISPATCHER_QUEUE", "shared")
    assert load_settings().queue == "shared"
    assert load_settings(DISPATCHER_QUEUE="given").queue == "given"
