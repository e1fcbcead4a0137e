"""``dispatcher replay`` (issue 14, item 9): a handler added after the orders were dispatched
runs on those still OPEN, once, with the usual step records and idempotency keys. The
simulator on a real socket, real Redis, and ``dispatcher`` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from redis import Redis

from dispatcher.store.keys import Keys
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.steps import step_key
from support import dispatcher_env

pytestmark = pytest.mark.redis
INTEGRATION = "greenhouse:Replay00000000000000000"


def run(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env={**env, **extra}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def steps(redis: Redis, order_id: str) -> dict[str, Any]:
    raw = redis.hgetall(Keys("dispatcher").steps(INTEGRATION, order_id))
    return {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"_")}


@pytest.mark.slow
def test_replay_runs_only_the_new_step_on_dispatched_orders_still_open(
    redis: Redis, redis_url: str, vendor: VendorAPI
) -> None:
    sim = Simulator([INTEGRATION], 0, closed=0, seed=5)
    for index in range(4):
        sim.add_order(INTEGRATION, id=f"R{index}")
    with sim.serve() as server:
        env = dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=server.url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=INTEGRATION,
            DISPATCHER_HANDLERS="log",
            DISPATCHER_RETRY_BACKOFF="0",
            PROVISION_URL=vendor.url,
        )
        # Given four orders dispatched and worked with the chain of then (log only)
        assert run(env, "poll", "--once").returncode == 0
        assert run(env, "worker", "--burst").returncode == 0
        logged = {f"R{i}": steps(redis, f"R{i}")["log"]["completed_at"] for i in range(4)}
        # and then: one order closed, one new order not dispatched yet
        sim.set_status(INTEGRATION, "R3", "COMPLETED")
        sim.add_order(INTEGRATION, id="NEW")
        # When provision_http joins the chain and is replayed
        new_env = {**env, "DISPATCHER_HANDLERS": "log,provision_http"}
        replayed = run(
            new_env, "replay", "--integration", INTEGRATION, "--handlers", "provision_http"
        )
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.splitlines()[0] == (
            f"3 orders of {INTEGRATION} queued for provision_http on dispatcher-orders (4 OPEN)"
        )
        assert "1 never dispatched, left to the poller" in replayed.stdout
        assert "NEW" in replayed.stdout
        worked = run(new_env, "worker", "--burst")
        assert worked.returncode == 0, worked.stderr
        # Then each OPEN dispatched order was provisioned once, with its step's usual key
        keys = {step_key("dispatcher", INTEGRATION, f"R{i}", "provision_http") for i in range(3)}
        assert set(vendor.succeeded_per_key()) == keys
        assert all(count == 1 for count in vendor.succeeded_per_key().values())
        for index in range(3):
            recorded = steps(redis, f"R{index}")
            assert set(recorded) == {"log", "provision_http"}
            # the log step was not run again
            assert recorded["log"]["completed_at"] == logged[f"R{index}"]
        assert set(steps(redis, "R3")) == {"log"}  # closed: not replayed
        assert steps(redis, "NEW") == {}  # not dispatched: left to the poller
        # And a second replay queues nothing: the step is recorded as completed (issue 23:
        # it queued the three again, jobs that did nothing)
        again = run(new_env, "replay", "--integration", INTEGRATION, "--handlers",
                    "provision_http")  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[:2] == [
            f"0 orders of {INTEGRATION} queued for provision_http on dispatcher-orders (4 OPEN)",
            "  3 with provision_http completed, skipped (--force runs it again): R0, R1, R2",
        ]
        assert redis.llen("rq:queue:dispatcher-orders") == 0
        assert run(new_env, "worker", "--burst").returncode == 0
        assert all(count == 1 for count in vendor.succeeded_per_key().values())
        assert len(vendor.succeeded_per_key()) == 3
        # With --force the three run the step again (the vendor sees the same keys again)
        provisioned = {
            f"R{i}": steps(redis, f"R{i}")["provision_http"]["completed_at"] for i in range(3)
        }
        forced = run(new_env, "replay", "--integration", INTEGRATION, "--handlers",
                     "provision_http", "--force")  # fmt: skip
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.splitlines()[0] == (
            f"3 orders of {INTEGRATION} queued for provision_http on dispatcher-orders (4 OPEN)"
        )
        assert run(new_env, "worker", "--burst").returncode == 0
        assert set(vendor.succeeded_per_key()) == keys
        for index in range(3):
            recorded = steps(redis, f"R{index}")
            assert recorded["log"]["completed_at"] == logged[f"R{index}"]
            assert recorded["provision_http"]["completed_at"] > provisioned[f"R{index}"]


def test_replay_refuses_a_handler_outside_the_chain(redis_url: str) -> None:
    env = dispatcher_env(redis_url, KOMBO_API_KEY=DEFAULT_API_KEY, DISPATCHER_HANDLERS="log")
    refused = run(env, "replay", "--integration", INTEGRATION, "--handlers", "crm")
    assert refused.returncode == 2
    assert refused.stderr == (
        "dispatcher: error: --handlers: crm not in DISPATCHER_HANDLERS (log): the workers "
        "would refuse the jobs\n"
    )
