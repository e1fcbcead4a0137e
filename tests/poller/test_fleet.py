"""Scale-out: registry, schedule and leases, incremental sweeps, pruning, fleets of pollers."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue

from dispatcher.kombo.client import KomboClient
from dispatcher.poller.fleet_loop import FleetLoop
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.poller.poller import Poller, SweepPolicy
from dispatcher.poller.schedule import FIRST_SWEEP_WITHIN, Schedule
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import Ledger
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator
from support import dispatcher_env, queued_job_ids, queued_jobs, wait_until

pytestmark = pytest.mark.redis
KEYS = Keys("dispatcher")


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = now if now is not None else time.time()

    def __call__(self) -> float:
        return self.now


def make_poller(sim: Simulator, redis: Redis, *, clock: Any = None, **kw: Any) -> Poller:
    client = KomboClient(
        DEFAULT_API_KEY, sim.base_url, transport=kw.pop("transport", None) or sim.transport(),
        retry_budget=0, sleep=lambda s: None,
    )  # fmt: skip
    clock = clock or Clock()
    ledger = Ledger(redis, Queue("dispatcher-orders", connection=redis), "dispatcher", clock=clock)
    return Poller(client, ledger, kw.pop("ids", sim.integration_ids), clock=clock, **kw)


def queued_pairs(redis: Redis) -> list[tuple[str, str]]:
    jobs = queued_jobs(redis)
    return [(j.meta["integration_id"], j.meta["order_id"]) for j in jobs]


def open_pairs(sim: Simulator) -> set[tuple[str, str]]:
    return {(i, o["id"]) for i in sim.integration_ids for o in sim.orders(i, status="OPEN")}


# -- registry -------------------------------------------------------------------------------


def test_registry_merges_environment_and_redis_and_honours_pauses(redis: Redis) -> None:
    registry = IntegrationRegistry(redis, KEYS, ["env:a", "both:b"])
    assert registry.add(["both:b", "redis:c"]) == 2
    registry.pause(["env:a"])
    assert [(i.integration_id, i.source, i.paused) for i in registry.all()] == [
        ("env:a", "env", True),
        ("both:b", "env+redis", False),
        ("redis:c", "redis", False),
    ]
    assert registry.active() == ["both:b", "redis:c"]
    registry.resume(["env:a"])
    registry.remove(["redis:c"])
    assert registry.active() == ["env:a", "both:b"]
    with pytest.raises(ValueError, match="is not an integration id"):
        registry.add(["has space"])


@pytest.mark.slow
def test_integrations_cli(redis: Redis, redis_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher", "integrations", *args],
            env=dispatcher_env(redis_url, KOMBO_INTEGRATION_IDS="greenhouse:ENV1"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert run("add", "lever:R1", "lever:R2").stdout.strip() == "added 2, 0 already registered"
    assert run("pause", "lever:R2").returncode == 0
    listing = run("list", "--json")
    rows = {r["integration_id"]: r for r in json.loads(listing.stdout)}
    assert rows["greenhouse:ENV1"]["source"] == "env"
    assert rows["lever:R1"]["paused"] is False and rows["lever:R2"]["paused"] is True
    table = run("list").stdout
    assert "lever:R2" in table and "paused" in table
    bad = run("add", "bad id")
    assert bad.returncode == 2
    assert bad.stderr.startswith("dispatcher: error: 'bad id' is not an integration id")
    removed = run("remove", "greenhouse:ENV1")
    assert "stays polled" in removed.stderr


def test_poll_without_any_integration_is_a_one_line_error(redis: Redis, redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "poll", "--once"],
        env=dispatcher_env(redis_url, KOMBO_API_KEY="sim-api-key"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("dispatcher: error: KOMBO_INTEGRATION_IDS: no integrations")


# -- schedule and leases ----------------------------------------------------------------------


def test_claiming_needs_the_integration_due_and_unleased(redis: Redis) -> None:
    clock = Clock(1000.0)
    first = Schedule(redis, KEYS, lease_ttl=0.3, owner="p1", clock=clock)
    second = Schedule(redis, KEYS, lease_ttl=0.3, owner="p2", clock=clock)
    first.sync(["a:1"], interval=60)
    assert first.due(10) == []  # spread over the interval: not due yet
    redis.zadd(KEYS.schedule, {"a:1": 999})
    assert first.claim("a:1")
    assert not second.claim("a:1")  # leased
    assert first.renew("a:1") and not second.renew("a:1")
    first.reschedule("a:1", 1060)
    first.release("a:1")
    assert not second.claim("a:1")  # released but no longer due: no second sweep this interval
    clock.now = 1061
    assert second.claim("a:1")
    # p2 dies holding the lease; it expires (Redis's own TTL: the clock above is the
    # schedule's), and the integration is due again when the lease would have expired.
    wait_until(lambda: not redis.exists(KEYS.lease("a:1")), timeout=5, what="the lease to expire")
    assert not first.claim("a:1")
    clock.now = 1061.3
    assert first.claim("a:1")
    assert first.holder("a:1") == "p1"


def test_a_lease_left_by_our_own_sweep_is_claimed_again_when_due(redis: Redis) -> None:
    # A lease of ours that outlived its sweep (Redis lost mid-way, a failover kept the lease):
    # once the integration is due, its poller claims it again; another poller still cannot.
    clock = Clock(1000.0)
    mine = Schedule(redis, KEYS, lease_ttl=30, owner="p1", clock=clock)
    other = Schedule(redis, KEYS, lease_ttl=30, owner="p2", clock=clock)
    mine.sync(["a:1"], interval=60)
    redis.zadd(KEYS.schedule, {"a:1": 999})
    assert mine.claim("a:1")
    redis.pexpire(KEYS.lease("a:1"), 5000)  # the lease as the unreleased sweep left it
    clock.now = 1030  # due again: when the lease would have expired unrenewed
    assert not other.claim("a:1")
    assert mine.claim("a:1")
    assert mine.holder("a:1") == "p1"
    assert redis.pttl(KEYS.lease("a:1")) > 20_000  # taken for a whole TTL again


class _ScheduleLosingRedisOnce(Schedule):
    """A schedule whose first reschedule fails as during a failover (the lease stays)."""

    failed = False

    def reschedule(self, integration_id: str, at: float) -> None:
        if not self.failed:
            self.failed = True
            raise RedisConnectionError("Connection reset by peer")
        super().reschedule(integration_id, at)


def test_a_sweep_ended_during_an_outage_is_rescheduled_and_released_once_redis_answers(
    redis: Redis,
) -> None:
    sim = Simulator(1, 5, seed=39)
    stop = threading.Event()
    schedule = _ScheduleLosingRedisOnce(redis, KEYS, lease_ttl=30)
    poller = make_poller(
        sim, redis, clock=time.time, policy=SweepPolicy(interval=60.0), schedule=schedule,
        stop=stop,
    )  # fmt: skip
    integration_id = sim.integration_ids[0]
    thread = threading.Thread(target=FleetLoop(poller).run)
    started = time.time()
    thread.start()
    try:
        wait_until(lambda: schedule.failed, timeout=20, what="the first sweep to end")
        # Not left leased and due only in 30 s: rescheduled an interval on, and released.
        wait_until(lambda: not redis.exists(KEYS.lease(integration_id)), timeout=5,
                   what="the lease to be released")  # fmt: skip
        assert (redis.zscore(KEYS.schedule, integration_id) or 0) >= started + 60
    finally:
        stop.set()
        thread.join(30)
    assert len(queued_jobs(redis)) == 5


def test_a_leased_integration_is_not_due_until_its_lease_could_have_expired(redis: Redis) -> None:
    # Held integrations ahead in the schedule hid a free, due one from a poller with one free
    # slot (it asked for the most overdue first and got only held ones), and made every
    # poller's loop spin on Redis while anyone swept (the next due time was in the past).
    clock = Clock(1000.0)
    busy = Schedule(redis, KEYS, lease_ttl=30, owner="p1", clock=clock)
    idle = Schedule(redis, KEYS, lease_ttl=30, owner="p2", clock=clock)
    redis.zadd(KEYS.schedule, {"a:1": 990, "a:2": 995})
    assert busy.claim("a:1")
    assert idle.due(1) == ["a:2"]
    assert idle.next_due_in() == 0.0
    assert idle.claim("a:2")
    assert idle.due(10) == []
    assert idle.next_due_in() == pytest.approx(30.0)  # when p1's lease, unrenewed, expires
    clock.now = 1010
    assert busy.renew("a:1")
    assert redis.zscore(KEYS.schedule, "a:1") == pytest.approx(1040.0)
    assert not idle.renew("a:1")  # and p2's failed renewal moves nothing
    assert redis.zscore(KEYS.schedule, "a:1") == pytest.approx(1040.0)
    busy.reschedule("a:1", 1060)
    busy.release("a:1")
    assert redis.zscore(KEYS.schedule, "a:1") == 1060


def test_a_poller_waits_instead_of_spinning_while_sweeps_run(redis: Redis) -> None:
    sim = Simulator(2, 30, seed=38)
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        release.wait(10)  # every page of both integrations hangs until the window is over
        return sim.handle(request)

    stop = threading.Event()
    # one poller saturated, one with free slots
    pollers = _fleet(sim, redis, slow, stop, interval=60.0, concurrencies=(1, 4))
    threads = [threading.Thread(target=FleetLoop(p).run) for p in pollers]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(list(redis.scan_iter(KEYS.lease("*")))) == 2, timeout=20,
                   what="both integrations to be claimed")  # fmt: skip
        before = _commands(redis)
        time.sleep(2.0)
        calls = _commands(redis) - before
    finally:
        release.set()
        stop.set()
        for t in threads:
            t.join(30)
    # A loop round is a few commands, at most a few rounds a second per poller; the spin
    # made thousands.
    assert calls < 60, calls


def _commands(redis: Redis) -> int:
    return sum(int(stat["calls"]) for stat in redis.info("commandstats").values())


def test_due_times_are_spread_over_the_interval(redis: Redis) -> None:
    clock = Clock(0.0)
    schedule = Schedule(redis, KEYS, clock=clock)
    ids = [f"lever:{i:04d}" for i in range(1000)]
    schedule.sync(ids, interval=60)
    due = [score for _, score in redis.zrange(KEYS.schedule, 0, -1, withscores=True)]
    # First sweeps: spread within FIRST_SWEEP_WITHIN (8 s) of the start, not the interval
    # (issue 23: an operator waited up to a minute for the first orders).
    assert all(0 <= d < FIRST_SWEEP_WITHIN for d in due), max(due)
    per_two_seconds = [sum(1 for d in due if k * 2 <= d < (k + 1) * 2) for k in range(4)]
    assert all(200 <= n <= 300 for n in per_two_seconds), per_two_seconds


# -- incremental sweeps -----------------------------------------------------------------------


def counting(sim: Simulator) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return sim.handle(request)

    return httpx.MockTransport(handle), requests


def test_incremental_sweeps_cost_one_request_when_nothing_is_new(redis: Redis) -> None:
    sim = Simulator(3, 600, seed=31)  # 3 pages of 250 per integration
    transport, requests = counting(sim)
    poller = make_poller(sim, redis, transport=transport)
    first = poller.sweep()
    assert first.orders_new == 1800 and len(requests) == 9
    requests.clear()
    for integration_id in sim.integration_ids:
        result = poller.sweep_integration(integration_id, full=None)
        assert not result.full and result.orders_new == 0
    assert len(requests) == 3  # one small page each, whatever the integration's size
    assert all("created_after" in r.url.params for r in requests)


def test_a_late_order_is_caught_by_the_next_full_sweep(redis: Redis) -> None:
    """Given an order that becomes visible only after the watermark passed its creation time,
    when incremental sweeps run, they miss it, and the next full sweep dispatches it."""
    sim = Simulator(1, 5, seed=32)
    integration = sim.integration_ids[0]
    clock = Clock()
    poller = make_poller(
        sim,
        redis,
        clock=clock,
        policy=SweepPolicy(full_sweep_interval=3600, incremental_overlap=600),
    )
    poller.sweep_integration(integration, full=None)
    late = sim.add_order(integration, created_at=datetime.now(UTC) - timedelta(hours=2))
    clock.now += 60
    incremental = poller.sweep_integration(integration, full=None)
    assert not incremental.full and incremental.orders_new == 0
    clock.now += 3600
    full = poller.sweep_integration(integration, full=None)
    assert full.full and full.orders_new == 1
    assert (integration, late["id"]) in queued_pairs(redis)


def test_the_first_sweep_by_a_new_poller_process_is_full(redis: Redis) -> None:
    sim = Simulator(1, 5, seed=33)
    integration = sim.integration_ids[0]
    make_poller(sim, redis).sweep_integration(integration, full=None)
    assert make_poller(sim, redis).sweep_integration(integration, full=None).full


# -- bounded seen store -----------------------------------------------------------------------


def test_pruning_forgets_closed_old_orders_and_never_open_ones(redis: Redis) -> None:
    sim = Simulator(1, 6, seed=34)
    integration = sim.integration_ids[0]
    clock = Clock()
    poller = make_poller(
        sim, redis, clock=clock,
        policy=SweepPolicy(seen_retention=30 * 86400, prune_after_sweeps=3),
    )  # fmt: skip
    poller.sweep_integration(integration, full=True)
    orders = sim.orders(integration, status="OPEN")
    closed = [o["id"] for o in orders[:3]]
    for order_id in closed:
        sim.set_status(integration, order_id, "COMPLETED")
    seen_key = KEYS.seen(integration)

    for _ in range(3):  # three full sweeps without them: not yet older than the retention
        clock.now += 3600
        assert poller.sweep_integration(integration, full=True).pruned == 0
    clock.now += 31 * 86400
    # Their marks are of the first sweep, the freshest an order can carry: they go once they
    # were missing from 3 + (3 - 1) full sweeps (the slack of lazily renewed marks).
    assert poller.sweep_integration(integration, full=True).pruned == 0
    result = poller.sweep_integration(integration, full=True)
    assert result.pruned == 3
    remaining = {f.decode() for f in redis.hkeys(seen_key)}
    assert remaining == {o["id"] for o in orders[3:]}  # the still-OPEN ones, old as they are
    assert len(queued_pairs(redis)) == 6  # and nothing was dispatched twice
    clock.now += 3600
    assert poller.sweep_integration(integration, full=True).orders_new == 0


# -- backoff ----------------------------------------------------------------------------------


def test_a_failing_integration_backs_off_exponentially_up_to_the_cap(redis: Redis) -> None:
    sim = Simulator(2, 3, seed=35)
    broken, healthy = sim.integration_ids
    sim.fail_next("server_error", 1000, integration_id=broken)
    clock = Clock(10_000.0)
    poller = make_poller(sim, redis, clock=clock, policy=SweepPolicy(interval=60, backoff_cap=300))
    loop = FleetLoop(poller)
    delays = []
    for _ in range(5):
        redis.zadd(KEYS.schedule, {broken: clock.now, healthy: clock.now})
        for integration_id in (broken, healthy):
            assert poller.schedule.claim(integration_id)
            loop._sweep_claimed(integration_id)
        delays.append(redis.zscore(KEYS.schedule, broken) - clock.now)
        healthy_delay = redis.zscore(KEYS.schedule, healthy) - clock.now
        assert 60 <= healthy_delay <= 66
    assert delays == [60, 120, 240, 300, 300]
    state = redis.hgetall(KEYS.sweep(broken))
    assert state[b"consecutive_failures"] == b"5"
    assert len(queued_pairs(redis)) == 3


def test_an_integration_failing_for_weeks_still_waits_the_cap(redis: Redis) -> None:
    # Given an integration that failed 2,000 sweeps in a row (three weeks at a 15 min cap),
    # where interval * 2.0 ** 1999 would overflow a float
    sim = Simulator(1, 3, seed=35)
    (broken,) = sim.integration_ids
    sim.fail_next("server_error", 10, integration_id=broken)
    clock = Clock(10_000.0)
    poller = make_poller(sim, redis, clock=clock, policy=SweepPolicy(interval=60, backoff_cap=900))
    redis.hset(KEYS.sweep(broken), "consecutive_failures", 2000)
    redis.zadd(KEYS.schedule, {broken: clock.now})
    assert poller.schedule.claim(broken)
    # When it fails once more
    FleetLoop(poller)._sweep_claimed(broken)
    # Then it is due again after the cap, as after the fifth failure
    assert redis.zscore(KEYS.schedule, broken) - clock.now == 900
    assert redis.hget(KEYS.sweep(broken), "consecutive_failures") == b"2001"


# -- a fleet of pollers -----------------------------------------------------------------------


def test_three_pollers_share_the_work_without_doubling_it(redis: Redis) -> None:
    sim = Simulator(12, 40, seed=36)
    sweeps: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def handle(request: httpx.Request) -> httpx.Response:
        if "cursor" not in request.url.params:
            with lock:
                sweeps[request.headers["X-Integration-Id"]].append(time.monotonic())
        return sim.handle(request)

    stop = threading.Event()
    pollers = _fleet(sim, redis, handle, stop, interval=1.0, concurrencies=(3, 3, 3))
    threads = [
        threading.Thread(target=FleetLoop(p).run, kwargs={"sync_every": 0.2}) for p in pollers
    ]
    for t in threads:
        t.start()

    expected = len(open_pairs(sim))

    def swept_twice_and_all_queued() -> bool:
        with lock:
            counts = [len(starts) for starts in sweeps.values()]
        return (
            len(counts) == len(sim.integration_ids)
            and min(counts) >= 2
            and len(queued_job_ids(redis)) >= expected
        )

    try:
        wait_until(
            swept_twice_and_all_queued,
            timeout=30,
            what="two sweeps of each integration, every order queued",
        )
    finally:
        stop.set()
    for t in threads:
        t.join(10)
    queued = queued_pairs(redis)
    assert len(queued) == len(set(queued))
    assert set(queued) == open_pairs(sim)
    for integration_id, starts in sweeps.items():
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= 0.95 for gap in gaps), (integration_id, gaps)  # once per interval
        assert 2 <= len(starts) <= 5


def poll_env(redis_url: str, sim: Simulator, kombo_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `dispatcher poll` of every integration of ``sim``, 5 per page."""
    return dispatcher_env(
        redis_url,
        KOMBO_BASE_URL=kombo_url,
        KOMBO_API_KEY=DEFAULT_API_KEY,
        KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
        DISPATCHER_PAGE_SIZE="5",
        **extra,
    )


def _fleet(
    sim: Simulator,
    redis: Redis,
    answer: Any,
    stop: threading.Event,
    *,
    interval: float,
    concurrencies: tuple[int, ...],
) -> list[Poller]:
    """In-process pollers of one fleet (each its own Redis client, the wall clock), one per
    sweep concurrency given, whose Kombo answers with ``answer(request)``."""
    return [
        make_poller(
            sim,
            Redis.from_url(_url(redis)),
            clock=time.time,
            transport=httpx.MockTransport(answer),
            policy=SweepPolicy(interval=interval),
            stop=stop,
            concurrency=concurrency,
            page_size=10,
        )
        for concurrency in concurrencies
    ]


def _url(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.mark.slow  # scale: three poller processes, 1800 orders, a lease TTL to wait out
def test_a_killed_poller_is_taken_over_within_the_lease_ttl(redis: Redis, redis_url: str) -> None:
    sim = Simulator(6, 300, seed=37, faults=Faults(latency=0.03))
    with sim.serve() as server:
        env = poll_env(
            redis_url,
            sim,
            server.url,
            DISPATCHER_POLL_INTERVAL="2",
            DISPATCHER_LEASE_TTL="2",
            # Free slots beside the victim's integrations: the bound below is the lease's,
            # not a wait for another poller's sweep to end.
            DISPATCHER_SWEEP_CONCURRENCY="4",
        )
        pollers = [
            subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "poll"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(3)
        ]
        try:
            victim = pollers[0]
            held: list[str] = []
            deadline = time.monotonic() + 30
            while not held and time.monotonic() < deadline:
                held = [
                    key.decode().split(":lease:")[1]
                    for key in redis.scan_iter("dispatcher:lease:*")
                    if (redis.get(key) or b"").decode().split(":")[1] == str(victim.pid)
                ]
                time.sleep(0.02)
            assert held, "the victim never held a lease"
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = time.monotonic()
            taken_over: dict[str, float] = {}
            while len(taken_over) < len(held) and time.monotonic() - killed_at < 10:
                for integration_id in held:
                    owner = (redis.get(KEYS.lease(integration_id)) or b"").decode()
                    if owner and owner.split(":")[1] != str(victim.pid):
                        taken_over.setdefault(integration_id, time.monotonic() - killed_at)
                time.sleep(0.02)
            assert set(taken_over) == set(held)
            # The lease TTL, then the next loop round (at most 1 s, _CLAIM_RETRY when due).
            assert max(taken_over.values()) < 2 + 1.5
            deadline = time.monotonic() + 60
            while len(queued_pairs(redis)) < 1800 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            for p in pollers:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in pollers:
                p.wait(30)
    queued = queued_pairs(redis)
    assert len(queued) == len(set(queued)) == 1800
    assert set(queued) == open_pairs(sim)
    assert all(p.returncode in (0, -signal.SIGKILL) for p in pollers)


@pytest.mark.slow
def test_pollers_ride_out_a_redis_restart(tmp_path: Any) -> None:
    from support import RedisServer

    server = RedisServer()
    server.start()
    sim = Simulator(2, 20, seed=38)
    try:
        with sim.serve() as kombo:
            env = dispatcher_env(
                server.url,
                KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY,
                KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
                DISPATCHER_POLL_INTERVAL="0.5",
            )  # fmt: skip
            log = tmp_path / "poller.log"
            with log.open("w") as sink:
                poller = subprocess.Popen(
                    [sys.executable, "-m", "dispatcher", "poll"], env=env,
                    stdout=subprocess.DEVNULL, stderr=sink, text=True,
                )  # fmt: skip
            redis = Redis.from_url(server.url)
            deadline = time.monotonic() + 20
            while len(queued_pairs(redis)) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.stop(kill=True)  # Redis dies (and, without persistence, forgets everything)
            wait_until(
                lambda: "Redis unavailable" in log.read_text() or poller.poll() is not None,
                what="the poller to notice the outage",
            )
            # The outage outlasts the poller's first backoff (1 s): a second failed attempt,
            # which must not log the outage again. A scenario's length, not a synchronisation.
            time.sleep(1.5)
            assert poller.poll() is None, "the poller must not crash"
            server.start()
            deadline = time.monotonic() + 30
            while len(queued_pairs(redis)) < 40 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(queued_pairs(redis)) == sorted(open_pairs(sim))
            poller.send_signal(signal.SIGTERM)
            poller.wait(30)
            stderr = log.read_text()
    finally:
        server.cleanup()
    assert poller.returncode == 0
    outage_lines = [line for line in stderr.splitlines() if "Redis unavailable" in line]
    assert len(outage_lines) == 1, stderr
    assert "Redis available again" in stderr
    assert "Traceback" not in stderr


def test_poll_once_in_processes_sweeps_each_integration_once_between_them(
    redis: Redis, redis_url: str
) -> None:
    sim = Simulator(5, 12, seed=61)
    with sim.serve() as server:
        env = poll_env(redis_url, sim, server.url)
        result = subprocess.run(
            [sys.executable, "-m", "dispatcher", "poll", "--once", "--json", "--processes", "2"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "integrations": 5, "pages": 15, "orders_seen": 60, "orders_new": 60, "errors": {},
        "interrupted": 0, "invalid_orders": 0,
    }  # fmt: skip
    queued = queued_pairs(redis)
    assert len(queued) == len(set(queued)) == 60
    assert set(queued) == open_pairs(sim)
    # Two processes swept: each integration once, by one of them (3 pages each, no more).
    assert sum(sim.requests_by_path.values()) == 15


@pytest.mark.slow
def test_poll_in_processes_forwards_sigterm_and_exits_zero(redis: Redis, redis_url: str) -> None:
    sim = Simulator(4, 30, seed=62, faults=Faults(latency=0.01))
    with sim.serve() as server:
        env = poll_env(
            redis_url,
            sim,
            server.url,
            DISPATCHER_POLL_INTERVAL="1",
        )
        parent = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "poll", "--processes", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(queued_pairs(redis)) < 120 and time.monotonic() < deadline:
                time.sleep(0.1)
            pollers = {
                (redis.get(key) or b"").decode().split(":")[1]
                for key in redis.scan_iter("dispatcher:lease:*")
            }
            parent.send_signal(signal.SIGTERM)
            _, stderr = parent.communicate(timeout=30)
        finally:
            if parent.poll() is None:
                parent.kill()
    assert parent.returncode == 0, stderr
    assert str(parent.pid) not in pollers  # the children poll, the parent supervises
    queued = queued_pairs(redis)
    assert len(queued) == len(set(queued)) == 120
    assert stderr.count("stopping after the current page") == 2
