"""`dispatcher status`: text, JSON and --watch, against a real Redis after a real pipeline."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from redis import Redis

from dispatcher import Settings
from dispatcher.ops.status import take_snapshot
from dispatcher.store.keys import Keys
from dispatcher.testing.sim import Simulator
from support import free_port
from support.ops import FailsFor, Returns, env_for, invoke, settings_for, sweep, work

pytestmark = pytest.mark.redis

GOOD = ["greenhouse:Good1Integration", "lever:Good2Integration"]
MISSING = "workday:MissingIntegration"  # unknown to the simulator: Kombo answers 404


@pytest.fixture
def sim() -> Simulator:
    return Simulator(GOOD, 6, seed=21)


@pytest.fixture
def settings(redis_url: str, sim: Simulator, namespace: str) -> Settings:
    return settings_for(
        redis_url,
        sim,
        namespace,
        KOMBO_INTEGRATION_IDS=",".join([*GOOD, MISSING]),
        DISPATCHER_HANDLERS="log,provision",
    )


@pytest.fixture
def ran(redis: Redis, settings: Settings, sim: Simulator) -> dict[str, Any]:
    """Given a sweep (one integration failing), a worker run (one order failing in
    provision), and the step counters the handler chain keeps."""
    sweep(redis, settings, sim)
    failing_order = sim.orders(GOOD[0])[0]["id"]
    work(redis, settings, [Returns("log"), FailsFor("provision", {failing_order})])
    keys = Keys(settings.namespace)
    redis.hset(
        keys.step_stats,
        mapping={"log:completed": 12, "provision:completed": 11, "provision:failed": 1},
    )
    return {"failing_order": failing_order}


def test_status_shows_where_orders_flow_and_where_and_why_not(
    redis_url: str, settings: Settings, ran: dict[str, Any]
) -> None:
    result = invoke(["status"], env_for(redis_url, settings))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "\x1b[" not in text  # no colour off a terminal
    assert "ATTENTION: 2 problems" in text
    assert (
        f"integration {MISSING}: sweep failing: PLATFORM.INTEGRATION_NOT_FOUND: "
        f"No integration with the id '{MISSING}'" in text
    )
    assert f"1 failed job on {settings.queue}, latest " in text
    assert re.search(rf"^{settings.queue}\s+0\s+0\s+0\s+0\s+11\s+1\s+-$", text, re.MULTILINE), text
    assert "WORKERS  none running" in text
    assert "ORDERS  12 remembered · 12 dispatched" in text
    for integration in GOOD:
        assert re.search(
            rf"^{integration}\s+ok\s+\S+ ago\s+6\s+6\s+6\s+0\s+-\s+-\s+-$", text, re.MULTILINE
        ), text
    assert re.search(
        rf"^{MISSING}\s+failing\s+never\s+-\s+-\s+0\s+1\s+-\s+-\s+PLATFORM.INTEGRATION_NOT_FOUND: ",
        text,
        re.MULTILINE,
    ), text
    assert re.search(r"^log\s+12\s+0$", text, re.MULTILINE), text
    assert re.search(r"^provision\s+11\s+1$", text, re.MULTILINE), text
    assert re.search(r"^GET /assessment/orders\s+200\s+2\s+\d+ ms$", text, re.MULTILINE), text
    assert re.search(r"^GET /assessment/orders\s+404\s+1\s+\d+ ms$", text, re.MULTILINE), text


def test_status_json_has_the_documented_stable_keys(
    redis_url: str, settings: Settings, sim: Simulator, ran: dict[str, Any]
) -> None:
    result = invoke(["status", "--json"], env_for(redis_url, settings))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {
        "taken_at",
        "namespace",
        "ok",
        "problems",
        "queues",
        "workers",
        "orders",
        "integrations",
        "handlers",
        "kombo_requests",
    }
    assert data["namespace"] == settings.namespace
    assert data["ok"] is False and len(data["problems"]) == 2
    queue = data["queues"][settings.queue]
    assert {k: queue[k] for k in ("queued", "started", "scheduled", "deferred")} == dict.fromkeys(
        ("queued", "started", "scheduled", "deferred"), 0
    )
    assert (queue["finished"], queue["failed"], queue["oldest_queued_age"]) == (11, 1, None)
    assert data["workers"] == []
    assert data["orders"] == {"seen": 12, "dispatched": 12, "finished": 0}
    assert set(data["integrations"]) == {*GOOD, MISSING}
    good = data["integrations"][GOOD[0]]
    assert good["state"] == "ok" and good["orders_seen"] == 6 and good["last_error"] is None
    assert 0 <= time.time() - good["last_sweep_at"] < 3600  # swept by the fixture, however slow
    missing = data["integrations"][MISSING]
    assert missing["state"] == "failing" and missing["last_sweep_at"] is None
    assert missing["orders_seen"] is None and missing["error_count"] == 1
    assert missing["last_error"]["code"] == "PLATFORM.INTEGRATION_NOT_FOUND"
    assert missing["last_error"]["message"].startswith("No integration with the id")
    assert data["handlers"] == {
        "log": {"completed": 12, "failed": 0},
        "provision": {"completed": 11, "failed": 1},
    }
    requests = {(r["endpoint"], r["status"]): r["count"] for r in data["kombo_requests"]}
    assert requests == {("GET /assessment/orders", "200"): 2, ("GET /assessment/orders", "404"): 1}
    assert sum(requests.values()) == sim.request_count


def test_a_healthy_pipeline_says_orders_are_flowing(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim)
    work(redis, settings, [Returns("log")])
    result = invoke(["status"], env_for(redis_url, settings))
    assert result.exit_code == 0
    assert "OK: orders are flowing" in result.stdout
    assert "ATTENTION" not in result.stdout


def test_a_backlog_without_workers_and_a_stale_poller_are_problems(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_POLL_INTERVAL="60")
    sweep(redis, settings, sim)
    later = time.time() + 900  # a quarter of an hour without a worker or a sweep
    snapshot = take_snapshot(redis, settings, now=later)
    queue, results = snapshot.queues
    assert (queue.kind, results.kind, results.queued) == ("orders", "results", 0)
    age = queue.oldest_queued_age(later)
    assert age is not None and 899 <= age <= 910
    assert queue.queued == 12
    assert f"12 orders queued on {settings.queue} and no worker running" in snapshot.problems
    assert any(
        p.startswith(f"queue {settings.queue}: oldest queued order waiting 15m")
        for p in snapshot.problems
    )
    assert {i.state for i in snapshot.integrations} == {"stale"}
    assert any("no successful sweep for 15m" in p for p in snapshot.problems)
    # Now, not later: the same Redis is healthy but for the missing worker.
    now = take_snapshot(redis, settings)
    assert {i.state for i in now.integrations} == {"ok"}
    assert now.problems == (f"12 orders queued on {settings.queue} and no worker running",)


def test_status_names_an_integration_never_swept(
    redis_url: str, redis: Redis, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    result = invoke(["status", "--json"], env_for(redis_url, settings))
    data = json.loads(result.stdout)
    assert {i["state"] for i in data["integrations"].values()} == {"never swept"}
    assert f"integration {GOOD[0]}: never swept: is `dispatcher poll` running?" in data["problems"]


def test_a_busy_worker_shows_the_order_in_hand_and_forget_refuses_it(
    blocked_worker: dict[str, Any],
) -> None:
    env, order_id = blocked_worker["env"], blocked_worker["order_id"]
    data = json.loads(invoke(["status", "--json"], env).stdout)
    (worker,) = data["workers"]
    assert worker["state"] == "busy"
    assert worker["current_order_id"] == order_id
    assert worker["current_integration_id"] == GOOD[0]
    assert worker["pid"] == blocked_worker["proc"].pid
    queue = data["queues"][blocked_worker["settings"].queue]
    assert queue["started"] == 1 and queue["queued"] == 5
    text = invoke(["status"], env).stdout
    assert re.search(rf"\s+busy\s+.*{order_id} \({GOOD[0]}\)$", text, re.MULTILINE), text

    refused = invoke(["forget", order_id, "--integration", GOOD[0], "--yes"], env)
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"dispatcher: error: order {order_id} (integration {GOOD[0]}) is being worked on right "
        f"now (job {data['workers'][0]['current_job_id']}); try again when it has finished\n"
    )


def test_watch_refreshes_a_bounded_number_of_times(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    env = env_for(redis_url, settings)
    text = invoke(["status", "--watch", "--interval", "0.1", "--iterations", "3"], env)
    assert text.exit_code == 0
    assert text.stdout.count("dispatcher status · namespace") == 3
    assert "\x1b[" not in text.stdout  # not a terminal: no redraw, no colour
    lines = invoke(
        ["status", "--json", "--watch", "--interval", "0.1", "--iterations", "2"], env
    ).stdout.splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["namespace"] == namespace for line in lines)


@pytest.mark.parametrize("no_color", [False, True])
def test_watch_on_a_terminal_redraws_in_place_in_colour_and_stops_on_ctrl_c(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str, no_color: bool
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "status", "--watch", "--interval", "0.1"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**env_for(redis_url, settings), **({"NO_COLOR": "1"} if no_color else {})},
    )
    os.close(slave)
    screen = b""

    def read_screen() -> None:
        nonlocal screen
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            with contextlib.suppress(OSError):  # EIO: the terminal's other end closed
                screen += os.read(master, 65536)

    try:
        deadline = time.monotonic() + 60
        while screen.count(b"dispatcher status") < 3 and time.monotonic() < deadline:
            read_screen()
        proc.send_signal(signal.SIGINT)
        # A terminal keeps reading while the program stops: a full pty would block its
        # last write (and the stop) on a loaded machine.
        while proc.poll() is None and time.monotonic() < deadline:
            read_screen()
        assert proc.poll() is not None, "status --watch did not stop within a minute of Ctrl-C"
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert screen.count(b"dispatcher status") >= 3
    assert screen.startswith(b"\x1b[H\x1b[2J")  # clear once, then home for each frame
    assert screen.count(b"\x1b[2J") == 1 and screen.count(b"\x1b[H") >= 3
    assert b"\x1b[K" in screen  # each line erases what a longer one left
    assert (b"\x1b[32m" in screen) is not no_color  # green: colour on a terminal
    assert proc.returncode == 0
    assert b"Traceback" not in stderr and stderr == b""


def test_colour_only_on_a_terminal_and_never_with_no_color(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim)
    env = env_for(redis_url, settings)
    assert "\x1b[" not in invoke(["status"], env).stdout
    assert "\x1b[1m" in invoke(["status"], env, color=True).stdout
    assert "\x1b[" not in invoke(["status"], {**env, "NO_COLOR": "1"}, color=True).stdout


def test_two_namespaces_on_one_redis_do_not_see_each_other(redis: Redis, redis_url: str) -> None:
    sim_a = Simulator(["greenhouse:TenantA"], 5, seed=1)
    sim_b = Simulator(["greenhouse:TenantB", "lever:TenantB"], 7, seed=2)
    a = settings_for(redis_url, sim_a, "tenant-a")
    b = settings_for(redis_url, sim_b, "tenant-b")
    assert (a.queue, b.queue) == ("tenant-a-orders", "tenant-b-orders")
    sweep(redis, a, sim_a)
    sweep(redis, b, sim_b)
    work(redis, b, [Returns("log")])
    seen_a = json.loads(invoke(["status", "--json"], env_for(redis_url, a)).stdout)
    seen_b = json.loads(invoke(["status", "--json"], env_for(redis_url, b)).stdout)
    assert seen_a["orders"] == {"seen": 5, "dispatched": 5, "finished": 0}
    assert seen_b["orders"] == {"seen": 14, "dispatched": 14, "finished": 0}
    assert set(seen_a["integrations"]) == {"greenhouse:TenantA"}
    assert set(seen_b["integrations"]) == {"greenhouse:TenantB", "lever:TenantB"}
    assert list(seen_a["queues"]) == ["tenant-a-orders", "tenant-a-results"]
    assert seen_a["queues"]["tenant-a-orders"]["queued"] == 5  # B's worker took none of A's
    assert seen_b["queues"]["tenant-b-orders"]["finished"] == 14
    # Even with no integration configured, A's status lists only what A swept.
    env_a = {**env_for(redis_url, a), "KOMBO_INTEGRATION_IDS": ""}
    assert set(json.loads(invoke(["status", "--json"], env_a).stdout)["integrations"]) == {
        "greenhouse:TenantA"
    }


def test_status_says_in_one_line_when_redis_is_unreachable(
    redis_url: str, sim: Simulator, namespace: str
) -> None:
    settings = settings_for(redis_url, sim, namespace)
    env = env_for(f"redis://127.0.0.1:{free_port()}/0", settings)
    result = invoke(["status"], env)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("dispatcher: error: REDIS_URL: cannot reach Redis at ")
    assert result.stderr.count("\n") == 1


def test_durations_read_well() -> None:
    from dispatcher import _text

    assert [_text.duration(s) for s in (3.25, 42, 184, 7500, 3 * 86400 + 4 * 3600)] == [
        "3.2s",
        "42s",
        "3m 04s",
        "2h 05m",
        "3d 04h",
    ]
    assert _text.ago(100.0, 160.0) == "1m 00s ago"
    assert _text.ago(3700.0, 100.0) == "in 1h 00m"
    assert _text.ago(None, 100.0) == "never"


def test_status_shows_the_fleet_pause_lease_backoff_watermark_and_results(
    redis: Redis, redis_url: str
) -> None:
    settings = Settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE="fleetns")
    keys = Keys("fleetns")
    now = time.time()
    redis.sadd(keys.integrations, "lever:Registered", "lever:Paused")
    redis.sadd(keys.paused, "lever:Paused")
    redis.zadd(keys.schedule, {"lever:Registered": now + 120})
    redis.set(keys.lease("lever:Registered"), "host:4242:abc")
    redis.hset(
        keys.sweep("lever:Registered"),
        mapping={
            "last_attempt_at": now, "last_error": "integration lever:Registered: HTTP 500: x",
            "last_error_code": "PLATFORM.UNKNOWN_ERROR", "last_error_at": now,
            "consecutive_failures": 3, "watermark": now - 600, "last_sweep_at": now - 700,
            "last_sweep_kind": "incremental",
        },
    )  # fmt: skip
    redis.hset(keys.results("lever:Registered"), "O1", '{"status": "COMPLETED", "at": 1}')
    snapshot = take_snapshot(redis, settings, now=now).as_dict()
    registered = snapshot["integrations"]["lever:Registered"]
    assert registered["lease"] == "host:4242:abc"
    assert registered["consecutive_failures"] == 3
    assert registered["next_sweep_at"] == pytest.approx(now + 120, abs=0.01)
    assert registered["watermark"] == pytest.approx(now - 600, abs=0.01)
    assert registered["last_sweep_kind"] == "incremental"
    assert registered["results_written"] == 1
    assert snapshot["integrations"]["lever:Paused"]["state"] == "paused"
    assert snapshot["orders"]["finished"] == 1
    text = invoke(["status"], {"REDIS_URL": redis_url, "DISPATCHER_NAMESPACE": "fleetns"}).stdout
    assert re.search(
        r"^lever:Registered\s+failing.*in 1[12]\ds \(backoff, 3 failures\)\s+host:4242:abc",
        text,
        re.M,
    ), text
    assert re.search(r"^lever:Paused\s+paused", text, re.M), text


def test_a_typo_polled_once_is_no_problem_and_integrations_remove_drops_it(
    redis_url: str, redis: Redis, sim: Simulator, namespace: str
) -> None:
    # Issue 14, item 1. Given a sweep of a mistyped integration id (Kombo: 404), then the
    # right ids swept and their orders worked,
    typo = "nope:123"
    sweep(redis, settings_for(redis_url, sim, namespace, KOMBO_INTEGRATION_IDS=typo), sim)
    right = settings_for(redis_url, sim, namespace, KOMBO_INTEGRATION_IDS=",".join(GOOD))
    sweep(redis, right, sim)
    work(redis, right, [Returns("log")])

    # then status is ok: the typo is listed (not configured) but is no problem,
    status = invoke(["status", "--json"], env_for(redis_url, right))
    report = json.loads(status.stdout)
    assert report["ok"] is True, report["problems"]
    assert typo in report["integrations"]
    # and /metrics has no unhealthy series for it.
    from dispatcher.web.metrics import exposition

    metrics = exposition(lambda: take_snapshot(redis, right)).decode()
    assert f'dispatcher_integration_healthy{{integration="{typo}"}}' not in metrics
    assert f'dispatcher_integration_healthy{{integration="{GOOD[0]}"}} 1.0' in metrics

    # `integrations remove` drops its sweep record: status no longer lists it.
    removed = invoke(["integrations", "remove", typo], env_for(redis_url, right))
    assert removed.exit_code == 0, removed.output
    assert removed.stdout == f"removed 0; dropped the sweep records of {typo}\n"
    assert (
        typo
        not in json.loads(invoke(["status", "--json"], env_for(redis_url, right)).stdout)[
            "integrations"
        ]
    )
    keys = Keys(namespace)
    assert not redis.exists(keys.sweep(typo))
    assert redis.zscore(keys.schedule, typo) is None
    # A configured integration keeps its record (and stays polled), removed or not.
    kept = invoke(["integrations", "remove", GOOD[0]], env_for(redis_url, right))
    assert kept.stdout == "removed 0\n"
    assert redis.exists(keys.sweep(GOOD[0]))
