"""Issue 23, item 5: fail fast where a person waits, one line per outage, first sweeps
within seconds of the start, and no false "never swept" for a fresh deployment."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from redis import Redis

from dispatcher.poller.schedule import FIRST_SWEEP_WITHIN, Schedule
from dispatcher.store.keys import Keys
from dispatcher.testing.sim import DEFAULT_API_KEY
from support import dispatcher_env, free_port, wait_until

pytestmark = pytest.mark.redis

INTEGRATIONS = [f"greenhouse:FailFast{i:02d}" for i in range(11)]


def refused_env(redis_url: str, **extra: str) -> dict[str, str]:
    # Nothing listens on the port: every connection is refused (a wrong KOMBO_BASE_URL port).
    settings = {
        "KOMBO_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": ",".join(INTEGRATIONS),
    }
    return dispatcher_env(redis_url, **{**settings, **extra})


@pytest.mark.slow
def test_poll_once_against_a_refused_port_fails_within_20s_in_at_most_5_lines(
    redis: Redis, redis_url: str
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "poll", "--once"],
        env=refused_env(redis_url), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    # Before: KOMBO_RETRY_BUDGET (120 s) per request and a WARNING per retry (~50 lines).
    assert took < 20, f"took {took:.1f}s"
    assert len(lines) <= 5, "\n".join(lines)
    assert sum("cannot connect to 127.0.0.1" in line for line in lines) == 1, lines
    assert lines[-1].startswith("dispatcher: error: network: ConnectError"), lines
    assert "11 integrations" in lines[-1]


def test_the_poll_loop_logs_an_outage_of_kombo_once(redis: Redis, redis_url: str) -> None:
    env = refused_env(
        redis_url,
        KOMBO_INTEGRATION_IDS=",".join(INTEGRATIONS[:3]),
        KOMBO_RETRY_BUDGET="1",
        DISPATCHER_POLL_INTERVAL="0.2",
        DISPATCHER_BACKOFF_CAP="0.2",
    )
    poller = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "poll"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Until every integration failed three sweeps (each with its retries)
        def failed_thrice() -> bool:
            counts = [
                redis.hget(Keys("dispatcher").sweep(i), "error_count") for i in INTEGRATIONS[:3]
            ]
            return all(c is not None and int(c) >= 3 for c in counts)

        wait_until(failed_thrice, timeout=60, what="three failed sweeps of each integration")
    finally:
        poller.send_signal(signal.SIGTERM)
        _, stderr = poller.communicate(timeout=60)
    assert poller.returncode == 0, stderr
    said = [
        line
        for line in stderr.splitlines()
        if (" WARNING " in line or " ERROR " in line) and "Redis persistence" not in line
    ]
    assert len(said) == 1, "\n".join(said)
    assert "cannot connect to 127.0.0.1" in said[0] and "(KOMBO_BASE_URL)" in said[0]


def test_first_sweeps_are_due_within_seconds_of_the_start_whatever_the_interval(
    redis: Redis,
) -> None:
    schedule = Schedule(redis, Keys("dispatcher"))
    before = time.time()
    schedule.sync(INTEGRATIONS, interval=3600.0)
    due = dict(redis.zrange(Keys("dispatcher").schedule, 0, -1, withscores=True))
    offsets = [score - before for score in due.values()]
    assert len(offsets) == len(INTEGRATIONS)
    assert FIRST_SWEEP_WITHIN <= 10
    assert all(0 <= offset <= 10 for offset in offsets), offsets
    assert len({round(offset, 2) for offset in offsets}) > len(offsets) // 2  # spread


def _never_swept_problems(redis_url: str) -> list[str]:
    env = dispatcher_env(redis_url, KOMBO_INTEGRATION_IDS=",".join(INTEGRATIONS[:3]))
    status = subprocess.run(
        [sys.executable, "-m", "dispatcher", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = json.loads(status.stdout)["problems"]
    return [p for p in problems if "never swept" in p]


def test_status_does_not_call_a_fresh_deployment_broken(redis: Redis, redis_url: str) -> None:
    # Given a poller that has just started: the first sweeps are scheduled, not yet run
    Schedule(redis, Keys("dispatcher")).sync(INTEGRATIONS[:3], interval=60.0)
    # Then status does not ask whether the poller runs
    assert _never_swept_problems(redis_url) == []
    # But once a first sweep is long overdue (the poller stopped), it does
    redis.zadd(Keys("dispatcher").schedule, {INTEGRATIONS[0]: time.time() - 120})
    (problem,) = _never_swept_problems(redis_url)
    assert problem == (f"integration {INTEGRATIONS[0]}: never swept: is `dispatcher poll` running?")


def test_web_on_a_port_in_use_says_one_line_and_exits_1(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
            env=dispatcher_env(redis_url), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"dispatcher: error: --port: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
