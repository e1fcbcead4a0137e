"""End to end over real sockets and processes: simulator server, real Redis, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator
from support import dispatcher_env, queued_jobs, wait_while_progressing
from support.ops import dispatcher as run

pytestmark = pytest.mark.redis
QUEUE = "dispatcher-orders"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    yield Simulator(3, 40, closed=6, seed=11)


def env_for(sim_url: str, sim: Simulator, redis_url: str, **extra: str) -> dict[str, str]:
    return dispatcher_env(
        redis_url,
        KOMBO_BASE_URL=sim_url,
        KOMBO_API_KEY=DEFAULT_API_KEY,
        KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
        **extra,
    )


def open_orders(sim: Simulator) -> set[tuple[str, str]]:
    return {(i, o["id"]) for i in sim.integration_ids for o in sim.orders(i, status="OPEN")}


def queued_orders(redis: Redis) -> list[tuple[str, str]]:
    return [(j.meta["integration_id"], j.meta["order_id"]) for j in queued_jobs(redis, QUEUE)]


# Bounded by wait_while_progressing (a stall fails it), not by the default 120 s per test.
@pytest.mark.timeout(900)
# The default worker mode on every change; threads in the slow step.
@pytest.mark.parametrize(
    "threads",
    [
        pytest.param([], id="one-at-a-time"),
        pytest.param(["--threads", "8"], id="threads", marks=pytest.mark.slow),
    ],
)
def test_poll_once_then_burst_worker_handles_every_open_order_once(
    sim: Simulator, redis: Redis, redis_url: str, threads: list[str], tmp_path: Path
) -> None:
    with sim.serve() as server:
        env = env_for(server.url, sim, redis_url, DISPATCHER_PAGE_SIZE="15")
        first = run(["poll", "--once", "--json"], env)
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report == {
            "integrations": 3,
            "pages": 9,
            "orders_seen": 120,
            "orders_new": 120,
            "interrupted": 0,
            "invalid_orders": 0,
            "errors": {},
        }
        assert sorted(queued_orders(redis)) == sorted(open_orders(sim))

        # A burst of 120 jobs (a fork each, one at a time) took 56 s on a loaded machine:
        # waited for while it makes progress, not for a fixed 120 s.
        queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
        finished_jobs = FinishedJobRegistry(queue=queue)
        with (tmp_path / "worker.log").open("w+") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "worker", "--burst", *threads],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_while_progressing(worker, lambda: finished_jobs.count, what="worker --burst")
            log.seek(0)
            assert worker.returncode == 0, log.read()
        assert queue.count == 0
        assert FailedJobRegistry(queue=queue).count == 0
        finished = FinishedJobRegistry(queue=queue)
        handled = {
            (job.meta["integration_id"], job.meta["order_id"])
            for job in queue.job_class.fetch_many(
                finished.get_job_ids(), connection=redis, serializer=JOB_SERIALIZER
            )
            if job is not None and job.return_value()["steps"]["log"]
        }
        assert handled == open_orders(sim)
        assert finished.count == 120

        second = run(["poll", "--once", "--json"], env)
        assert json.loads(second.stdout)["orders_new"] == 0
        assert queue.count == 0


def test_poll_once_exits_1_and_names_the_failing_integration(
    sim: Simulator, redis: Redis, redis_url: str
) -> None:
    broken = sim.integration_ids[2]
    sim.fail_next("server_error", 1000, integration_id=broken)
    with sim.serve() as server:
        result = run(
            ["poll", "--once", "--json"],
            env_for(server.url, sim, redis_url, KOMBO_RETRY_BUDGET="0.5"),
        )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert list(report["errors"]) == [broken]
    assert report["orders_new"] == 80
    assert f"dispatcher: error: integration {broken}: PLATFORM.UNKNOWN_ERROR" in result.stderr


@pytest.mark.slow
def test_two_concurrent_poller_processes_enqueue_each_order_once(
    sim: Simulator, redis: Redis, redis_url: str
) -> None:
    with sim.serve() as server:
        env = env_for(server.url, sim, redis_url, DISPATCHER_PAGE_SIZE="5")
        for _ in range(4):
            redis.flushdb()
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "dispatcher", "poll", "--once", "--json"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for _ in range(2)
            ]
            reports = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
            assert sum(r["orders_new"] for r in reports) == 120
            queued = queued_orders(redis)
            assert len(queued) == len(set(queued)) == 120
            assert set(queued) == open_orders(sim)


@pytest.mark.slow
def test_a_poller_killed_mid_sweep_loses_and_doubles_nothing(redis: Redis, redis_url: str) -> None:
    sim = Simulator(2, 300, seed=12, faults=Faults(latency=0.02))
    with sim.serve() as server:
        env = env_for(server.url, sim, redis_url, DISPATCHER_PAGE_SIZE="3")
        for _ in range(3):
            redis.flushdb()
            poller = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "poll", "--once"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
            deadline = time.monotonic() + 30
            while queue.count < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(poller.pid, signal.SIGKILL)
            poller.wait()
            partial = queued_orders(redis)
            assert 0 < len(partial) < 600, "the kill should land mid-sweep"
            # Seen and enqueued moved together: no order is one without the other.
            seen = {
                (i, o.decode())
                for i in sim.integration_ids
                for o in redis.hkeys(f"dispatcher:seen:{i}")
            }
            assert seen == set(partial)

            result = run(["poll", "--once", "--json"], env)
            assert result.returncode == 0, result.stderr
            queued = queued_orders(redis)
            assert len(queued) == len(set(queued)) == 600
            assert set(queued) == open_orders(sim)


def test_sigterm_finishes_the_current_page_and_exits_0(redis: Redis, redis_url: str) -> None:
    sim = Simulator(1, 400, seed=13, faults=Faults(latency=0.05))
    with sim.serve() as server:
        # A short interval: the schedule spreads first sweeps over it, so that the default
        # (60 s) would keep the test waiting seconds for its one integration to fall due.
        env = env_for(
            server.url, sim, redis_url, DISPATCHER_PAGE_SIZE="2", DISPATCHER_POLL_INTERVAL="1"
        )
        poller = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "poll"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        queue = Queue(QUEUE, connection=redis, serializer=JOB_SERIALIZER)
        deadline = time.monotonic() + 30
        while queue.count < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        poller.send_signal(signal.SIGTERM)
        _, stderr = poller.communicate(timeout=20)
    assert poller.returncode == 0, stderr
    assert "received SIGTERM" in stderr
    assert 10 <= queue.count < 400
    assert queue.count % 2 == 0  # whole pages only


def test_a_refused_api_key_is_one_error_line_for_every_integration(
    sim: Simulator, redis_url: str, redis: Redis
) -> None:
    # Issue 14, item 3: three integrations, one wrong key: one line says what is wrong (the
    # key), on stderr and in the log, instead of Kombo's header message six times.
    with sim.serve() as server:
        env = {**env_for(server.url, sim, redis_url), "KOMBO_API_KEY": "not-the-right-key"}
        result = run(["poll", "--once"], env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("dispatcher: ")]
    assert errors == [
        "dispatcher: error: PLATFORM.AUTHENTICATION_INVALID: the key in KOMBO_API_KEY was "
        f"refused (3 integrations: {', '.join(sim.integration_ids)})"
    ]
    logged = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(logged) == 1, result.stderr
    assert "the key in KOMBO_API_KEY was refused" in logged[0]
    assert "Authorization header" not in result.stderr


@pytest.mark.slow
def test_the_poll_loop_waits_for_redis_at_start_and_once_does_not(sim: Simulator) -> None:
    # Issue 14, item 5: the README says pollers ride out Redis outages; one at start too.
    from support import RedisServer, wait_until

    server = RedisServer()  # its port is chosen; nothing listens on it yet
    try:
        with sim.serve() as kombo:
            env = env_for(kombo.url, sim, server.url, DISPATCHER_POLL_INTERVAL="1")
            once = run(["poll", "--once"], env)
            assert once.returncode == 1  # --once still fails fast
            assert once.stderr.startswith("dispatcher: error: REDIS_URL: cannot reach Redis")

            poller = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "poll"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert poller.stderr is not None
                first = poller.stderr.readline()
                assert f"cannot reach Redis at 127.0.0.1:{server.port}: ConnectionError" in first
                assert "waiting for it (retrying with backoff)" in first
                assert poller.poll() is None  # still there
                server.start()
                redis = Redis.from_url(server.url)
                wait_until(
                    lambda: len(queued_orders(redis)) == len(open_orders(sim)),
                    timeout=60,
                    what="the poller to sweep once Redis is up",
                )
                redis.close()
            finally:
                poller.send_signal(signal.SIGTERM)
                _, rest = poller.communicate(timeout=30)
            assert poller.returncode == 0, rest
            assert "cannot reach Redis" not in rest  # said once
            assert "Traceback" not in rest
    finally:
        server.cleanup()
