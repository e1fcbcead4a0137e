"""The chaos run: thousands of orders through several pollers and workers while processes
are SIGKILLed, Redis restarts and Kombo and the vendor API misbehave; then, with the faults
stopped, everything must settle with every order provisioned and every recruiter mailed,
once in effect. Meanwhile results are submitted for dispatched orders (``submit_result``,
final ``COMPLETED`` results) and written back by results workers that are killed too, under
Kombo's faults (dropped answers included): each must end written, with exactly one write
applied by Kombo, none failed (an order "no longer OPEN" is the lost-answer case).

    python tests/e2e/chaos/harness.py --integrations 8 --orders 1500 --fault-seconds 120

prints the figures (the README quotes a long run). ``tests/e2e/chaos/test_chaos.py`` runs a
short version in the default suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from redis import Redis
from rq import Queue
from rq.registry import (
    FailedJobRegistry,
)

from dispatcher._text import as_str
from dispatcher.settings import load_settings
from dispatcher.store.keys import Keys, job_id_for, order_ref
from dispatcher.store.reconcile_state import read_state
from dispatcher.store.results import Outbox, submit_result
from dispatcher.store.rq_internals import (
    canceled_key,
    deferred_key,
    failed_key,
    finished_key,
    intermediate_key,
    queue_key,
    scheduled_key,
    started_key,
)
from dispatcher.store.seen import REJECTED_PREFIX
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.steps import step_key
from support import RedisServer, dispatcher_env, kill_tree

ROLES = {"RECRUITER", "HIRING_MANAGER"}


@dataclass
class ChaosConfig:
    integrations: int = 4
    orders: int = 400  # OPEN orders per integration at the start
    added_per_second: float = 10.0  # new orders while the faults run
    pollers: int = 2
    workers: int = 3
    fault_seconds: float = 40.0
    min_kills: int = 20
    # Jobs per worker process (DISPATCHER_WORKER_THREADS): above 1, threaded workers.
    worker_threads: int = 1
    # Results workers (dispatcher worker --results --threads N) and results submitted per
    # second, for orders already dispatched, while the faults run.
    results_workers: int = 2
    results_threads: int = 4
    results_per_second: float = 8.0
    # Settling goes on while orders, mails or results still move: a loaded machine drains
    # slower, not wrongly. It ends when nothing moved for stall_seconds (longer than the
    # recovery of a killed job and the run's retry delays), or at settle_timeout.
    settle_timeout: float = 600.0
    stall_seconds: float = 90.0
    reconcile_interval: float = 10.0
    seed: int = 1


@dataclass
class ChaosReport:
    orders: int = 0
    expected_emails: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    redis_restarts: int = 0
    kombo_faults: dict[str, float] = field(default_factory=dict)
    vendor_calls: int = 0
    orders_lost: int = 0
    emails_missing: int = 0
    provisioned_twice_after_dedup: int = 0
    emails_twice_after_dedup: int = 0
    raw_repeat_provisionings: int = 0
    raw_repeat_emails: int = 0
    longest_recovery_seconds: float = 0.0
    settle_seconds: float = 0.0
    left_queued: int = 0
    left_started: int = 0
    left_scheduled: int = 0
    left_failed: int = 0
    results_submitted: int = 0
    results_written: int = 0
    results_lost_answer: int = 0
    results_not_written: int = 0
    results_failed: int = 0
    results_applied_twice: int = 0
    results_never_applied: int = 0
    # The invariant: every order the ledger dispatched is provisioned or visibly failed.
    dispatched: int = 0
    dispatched_not_done: int = 0
    # What the reconciler put back during the run, by kind (store/reconcile_state.py).
    reconciled: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # What Redis knows of each lost order (seen mark, job status, steps, the queues and
    # registries holding its job): where to start.
    lost_orders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class _Fleet:
    def __init__(self, env: dict[str, str], redis: Redis, rng: random.Random) -> None:
        self.env = env
        self.redis = redis
        self.rng = rng
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {
            "poller": [],
            "worker": [],
            "results": [],
        }
        self.results_threads = 1
        self.kills: Counter[str] = Counter()
        # (job id, name of the dead worker, killed at)
        self.pending_recoveries: list[tuple[str, str, float]] = []
        self.recoveries: list[float] = []

    def start(self, kind: str) -> None:
        command = {
            "poller": ["poll"],
            "worker": ["worker"],
            "results": ["worker", "--results", "--threads", str(self.results_threads)],
        }[kind]
        self.procs[kind].append(
            subprocess.Popen(
                [sys.executable, "-m", "dispatcher", *command],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def kill_one(self) -> None:
        kinds = ["poller", "worker", "worker"] + (["results"] if self.procs["results"] else [])
        kind = self.rng.choice(kinds)
        victim = self.rng.choice(self.procs[kind])
        if kind != "poller":
            self._remember_jobs_of(victim.pid)
            # Half the time the work horse dies too (a lost machine); half the time it is
            # orphaned and finishes on its own (the OOM killer took only the worker).
            if self.rng.random() < 0.5:
                kill_tree(victim.pid)
            else:
                os.kill(victim.pid, signal.SIGKILL)
        else:
            os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        self.procs[kind].remove(victim)
        self.kills[kind] += 1
        self.start(kind)

    def _remember_jobs_of(self, pid: int) -> None:
        now = time.monotonic()
        try:
            for key in self.redis.smembers("rq:workers"):
                if self.redis.hget(key, "pid") != str(pid).encode():
                    continue
                # RQ 3 tracks a worker's running jobs as "<job id>:<execution id>" entries.
                name = key.decode().removeprefix("rq:worker:")
                for execution in self.redis.smembers(key.decode() + ":executions"):
                    job_id = execution.decode().split(":")[0]
                    self.pending_recoveries.append((job_id, name, now))
        except Exception:
            pass  # Redis may be restarting

    def check_recoveries(self) -> None:
        # Recovered: the job is no longer "started" by the dead worker (requeued, or already
        # taken, run or finished by another, or finished by its orphaned work horse).
        still = []
        for job_id, worker, killed_at in self.pending_recoveries:
            try:
                status, owner = self.redis.hmget(f"rq:job:{job_id}", "status", "worker_name")
            except Exception:
                still.append((job_id, worker, killed_at))
                continue
            if status == b"started" and owner == worker.encode():
                still.append((job_id, worker, killed_at))
            else:
                self.recoveries.append(time.monotonic() - killed_at)
        self.pending_recoveries = still

    def stop(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
        for procs in self.procs.values():
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    kill_tree(proc.pid)


def run_chaos(config: ChaosConfig, log: Any = print) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport()
    server = RedisServer(appendonly=True)
    server.start()
    sim = Simulator(config.integrations, config.orders, closed=0, seed=config.seed)
    vendor = VendorAPI(error_rate=0.1, timeout_rate=0.02, seed=config.seed)
    mailbox = Mailbox()
    redis = Redis.from_url(server.url)
    fleet: _Fleet | None = None
    try:
        with sim.serve() as kombo:
            env = dispatcher_env(
                server.url,
                KOMBO_BASE_URL=kombo.url,
                KOMBO_API_KEY=DEFAULT_API_KEY,
                KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids),
                KOMBO_RETRY_BUDGET="5",
                KOMBO_TIMEOUT="5",
                DISPATCHER_POLL_INTERVAL="2",
                DISPATCHER_LEASE_TTL="4",
                DISPATCHER_BACKOFF_CAP="4",
                DISPATCHER_PAGE_SIZE="100",
                DISPATCHER_HANDLERS="provision_http,notify_email",
                DISPATCHER_RETRY_BACKOFF="1",
                DISPATCHER_MAX_RETRIES="10",
                DISPATCHER_LOG_LEVEL="WARNING",
                DISPATCHER_WORKER_THREADS=str(config.worker_threads),
                # The reconciler's pass, as often as the run's scale allows (300 s by default).
                DISPATCHER_RECONCILE_INTERVAL=str(config.reconcile_interval),
                PROVISION_URL=vendor.url,
                PROVISION_TIMEOUT="1",
                SMTP_URL=mailbox.url,
                NOTIFY_FROM="Acme Tests <tests@acme.example>",
            )
            fleet = _Fleet(env, redis, rng)
            fleet.results_threads = config.results_threads
            for _ in range(config.pollers):
                fleet.start("poller")
            for _ in range(config.workers):
                fleet.start("worker")
            for _ in range(config.results_workers):
                fleet.start("results")
            results = _Results(redis, server.url, rng)

            faults = Faults(
                rate_limit=0.05,
                retry_after=0.2,
                server_error=0.05,
                malformed=0.02,
                latency=0.01,
                drop_answer=0.05,
            )
            report.kombo_faults = asdict(faults)
            sim.faults = faults
            started = time.monotonic()
            kill_every = config.fault_seconds / (config.min_kills + 2)
            next_kill = started + kill_every
            restart_at = started + config.fault_seconds / 2
            added = 0.0
            submitted = 0.0
            while time.monotonic() - started < config.fault_seconds:
                now = time.monotonic()
                while added < (now - started) * config.added_per_second:
                    sim.add_order(rng.choice(sim.integration_ids))
                    added += 1
                while submitted < (now - started) * config.results_per_second:
                    submitted += 1
                    results.submit_one(sim.integration_ids)
                if now >= next_kill:
                    fleet.kill_one()
                    next_kill = now + kill_every * rng.uniform(0.5, 1.5)
                if report.redis_restarts == 0 and now >= restart_at:
                    server.restart()  # AOF: nothing acknowledged is lost
                    report.redis_restarts = 1
                fleet.check_recoveries()
                time.sleep(0.05)
            while sum(fleet.kills.values()) < config.min_kills:
                fleet.kill_one()
                time.sleep(0.2)
            sim.faults = Faults()
            vendor.error_rate = vendor.timeout_rate = 0.0
            log(f"faults stopped after {time.monotonic() - started:.0f}s; settling")

            expected_keys, expected_mail = _expectations(sim)
            settle_start = moved_at = time.monotonic()
            moved: tuple[int, ...] = ()
            while time.monotonic() - settle_start < config.settle_timeout:
                fleet.check_recoveries()
                if _settled(redis, vendor, mailbox, expected_keys, expected_mail) and (
                    results.settled()
                ):
                    break
                now_moved = _moved(vendor, mailbox, results)
                if now_moved != moved:
                    moved, moved_at = now_moved, time.monotonic()
                elif time.monotonic() - moved_at > config.stall_seconds:
                    log(f"nothing moved for {config.stall_seconds:g}s: settling stopped")
                    break
                time.sleep(0.5)
            report.settle_seconds = round(time.monotonic() - settle_start, 1)
            fleet.check_recoveries()
            _assess(report, redis, vendor, mailbox, expected_keys, expected_mail)
            if report.orders_lost:
                report.lost_orders = _describe_lost(redis, sim, set(vendor.succeeded_per_key()))
            not_done = _dispatched_not_done(redis, report)
            report.lost_orders.extend(not_done)
            report.reconciled = dict(read_state(redis, _KEYS).get("reconciled") or {})
            results.assess(report, sim)
            report.kills = dict(fleet.kills)
            report.longest_recovery_seconds = round(max(fleet.recoveries, default=0.0), 1)
            if fleet.pending_recoveries:
                report.failures.append(
                    f"{len(fleet.pending_recoveries)} killed jobs never finished"
                )
    finally:
        if fleet is not None:
            fleet.stop()
        mailbox.close()
        vendor.close()
        server.cleanup()
    return report


class _Results:
    """Final results submitted during the run, for orders the dispatcher has dispatched."""

    def __init__(self, redis: Redis, redis_url: str, rng: random.Random) -> None:
        self.redis = redis
        self.rng = rng
        self.settings = load_settings(REDIS_URL=redis_url)
        self.submitted: set[tuple[str, str]] = set()

    def submit_one(self, integrations: list[str]) -> None:
        integration = self.rng.choice(integrations)
        try:
            raw = self.redis.hkeys(f"dispatcher:seen:{integration}")
            seen = [o.decode() if isinstance(o, bytes) else str(o) for o in raw]
            candidates = [o for o in seen if (integration, o) not in self.submitted]
            if not candidates:
                return
            order = self.rng.choice(candidates)
            submit_result(
                integration,
                order,
                {"status": "COMPLETED", "result_url": f"https://vendor.example/r/{order}"},
                redis=self.redis,
                settings=self.settings,
            )
        except Exception:
            return  # Redis restarting: not submitted, nothing to expect
        self.submitted.add((integration, order))

    def _outbox(self) -> Outbox:
        return Outbox.from_settings(self.redis, self.settings)

    def settled(self) -> bool:
        return self.pending() == 0

    def pending(self) -> int:
        """Results not written yet (-1 while Redis cannot say)."""
        try:
            return int(self._outbox().counts()["pending"])
        except Exception:
            return -1

    def assess(self, report: ChaosReport, sim: Simulator) -> None:
        outbox = self._outbox()
        report.results_submitted = len(self.submitted)
        for integration, order in sorted(self.submitted):
            record = outbox.get(integration, order)
            applied = sim.applied_writes[(integration, order)]
            if applied > 1:
                report.results_applied_twice += 1
            elif applied == 0:
                report.results_never_applied += 1
            if record is None or record.state == "pending":
                report.results_not_written += 1
            elif record.state == "failed":
                report.results_failed += 1
                report.failures.append(f"result of {order} failed: {record.reason}")
            else:
                report.results_written += 1
                report.results_lost_answer += int(record.lost_answer)
        for name in (
            "results_not_written", "results_applied_twice", "results_never_applied",
        ):  # fmt: skip
            if getattr(report, name):
                report.failures.append(f"{name} = {getattr(report, name)}")
        if not self.submitted:
            report.failures.append("no result submitted")


def _expectations(sim: Simulator) -> tuple[set[str], set[tuple[str, str]]]:
    keys: set[str] = set()
    mail: set[tuple[str, str]] = set()
    for integration in sim.integration_ids:
        # OPEN, or COMPLETED by a result written during the run (all started OPEN)
        for order in sim.orders(integration):
            keys.add(step_key("dispatcher", integration, order["id"], "provision_http"))
            for member in order["job"]["hiring_team"]:
                if member["email"] and ROLES.intersection(member["hiring_team_roles"]):
                    mail.add((order["id"], member["email"].strip().lower()))
    return keys, mail


def _describe_lost(redis: Redis, sim: Simulator, succeeded: set[str]) -> list[str]:
    """One line per order never provisioned: what the seen store, its job and its step
    records say (a loss is rare: this is what its investigation starts from)."""
    from dispatcher.ops.order_record import describe_order

    lines = []
    for integration in sim.integration_ids:
        for order in sim.orders(integration):
            if step_key("dispatcher", integration, order["id"], "provision_http") in succeeded:
                continue
            try:
                records = describe_order(
                    redis, "dispatcher", "dispatcher-orders", order["id"], [integration]
                )
                what = (
                    "; ".join(
                        f"seen_at={r.seen_at} job={r.job_id} status={r.job_status} "
                        f"attempts={r.attempts} steps={[s.handler for s in r.steps]} "
                        f"last_error={r.last_error} in={_places(redis, r.job_id)}"
                        for r in records
                    )
                    or "unknown to Redis (never dispatched)"
                )
            except Exception as exc:  # a diagnostic must not hide the failure it explains
                what = f"could not describe: {type(exc).__name__}: {exc}"
            lines.append(f"{integration} {order['id']}: {what}")
    return lines


_KEYS = Keys("dispatcher")
_QUEUE = "dispatcher-orders"
_CHAIN = ("provision_http", "notify_email")


def _waiting_lists(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter(f"{queue_key(_QUEUE)}@*"))


def _waiting(redis: Redis) -> int:
    return sum(int(redis.llen(key)) for key in _waiting_lists(redis))


def _places(redis: Redis, job_id: str) -> list[str]:
    """The queues and registries holding a job, by ZSCORE/LPOS/ZSCAN: never RQ's ``count``,
    which cleans up as it counts."""
    places = [
        name
        for name, key in (("queue", queue_key(_QUEUE)), ("intermediate", intermediate_key(_QUEUE)))
        if redis.lpos(key, job_id) is not None
    ]
    # Waiting for its turn on its integration's list (dispatcher.store.fair).
    if any(redis.lpos(key, job_id) is not None for key in _waiting_lists(redis)):
        places.append("waiting")
    if any(True for _ in redis.zscan_iter(started_key(_QUEUE), match=f"{job_id}:*")):
        places.append("started")
    for name, registry in (
        ("scheduled", scheduled_key), ("deferred", deferred_key), ("failed", failed_key),
        ("finished", finished_key), ("canceled", canceled_key),
    ):  # fmt: skip
        if redis.zscore(registry(_QUEUE), job_id) is not None:
            places.append(name)
    return places


def _dispatched_not_done(redis: Redis, report: ChaosReport) -> list[str]:
    """The invariant, from the ledger's side: every order marked seen is provisioned (its
    chain finished, or every step recorded) or failed where ``dispatcher failed`` shows it.
    One line per order that is neither, saying where its job is."""
    lines: list[str] = []
    for raw in sorted(redis.smembers(_KEYS.seen_integrations)):
        integration = as_str(raw)
        for raw_order, value in redis.hscan_iter(_KEYS.seen(integration), count=1000):
            if as_str(value).startswith(REJECTED_PREFIX):
                continue
            order = as_str(raw_order)
            job_id = job_id_for("dispatcher", integration, order)
            with redis.pipeline(transaction=False) as pipe:
                pipe.zscore(_KEYS.provisioned, order_ref(integration, order))
                pipe.hexists(_KEYS.results(integration), order)
                pipe.hmget(_KEYS.steps(integration, order), list(_CHAIN))
                pipe.zscore(failed_key(_QUEUE), job_id)
                pipe.hget(f"rq:job:{job_id}", "status")
                chain_done, result, steps, failed, status = pipe.execute()
            report.dispatched += 1
            if chain_done is not None or result or all(steps) or failed is not None:
                continue
            report.dispatched_not_done += 1
            lines.append(
                f"{integration} {order}: dispatched, neither provisioned nor visibly failed: "
                f"seen={as_str(value)} job={job_id} status={status and as_str(status)} "
                f"steps={[h for h, s in zip(_CHAIN, steps, strict=True) if s]} "
                f"in={_places(redis, job_id)}"
            )
    if report.dispatched_not_done:
        report.failures.append(
            f"dispatched but neither provisioned nor visibly failed = {report.dispatched_not_done}"
        )
    return lines


def _received_mail(mailbox: Mailbox) -> Counter[tuple[str, str]]:
    with mailbox.lock:
        return Counter(
            (str(message["X-Kombo-Order-Id"]), rcpt.lower())
            for rcpts, message in mailbox.messages
            for rcpt in rcpts
        )


def _moved(vendor: VendorAPI, mailbox: Mailbox, results: _Results) -> tuple[int, ...]:
    """What changes while the run still settles: the vendor's calls, the mails, the
    results left to write."""
    return (len(vendor.calls), len(mailbox.messages), results.pending())


def _settled(
    redis: Redis,
    vendor: VendorAPI,
    mailbox: Mailbox,
    expected_keys: set[str],
    expected_mail: set[tuple[str, str]],
) -> bool:
    try:
        queue = Queue("dispatcher-orders", connection=redis)
        # ZCARD, not the registries' count: that cleans up as it counts (an abandoned job's
        # entry would vanish from the figure before any worker requeued it).
        busy = (
            queue.count
            + _waiting(redis)
            + redis.llen(queue.intermediate_queue.key)
            + redis.zcard(started_key(_QUEUE))
            + redis.zcard(scheduled_key(_QUEUE))
        )
    except Exception:
        return False
    provisioned = set(vendor.succeeded_per_key())
    return (
        busy == 0 and expected_keys <= provisioned and expected_mail <= set(_received_mail(mailbox))
    )


def _assess(
    report: ChaosReport,
    redis: Redis,
    vendor: VendorAPI,
    mailbox: Mailbox,
    expected_keys: set[str],
    expected_mail: set[tuple[str, str]],
) -> None:
    succeeded = vendor.succeeded_per_key()
    received = _received_mail(mailbox)
    message_ids = mailbox.message_ids()
    report.orders = len(expected_keys)
    report.expected_emails = len(expected_mail)
    report.vendor_calls = len(vendor.calls)
    report.orders_lost = len(expected_keys - set(succeeded))
    report.emails_missing = len(expected_mail - set(received))
    # After deduplication: one provisioning per idempotency key, one mail per Message-ID.
    report.provisioned_twice_after_dedup = len(set(succeeded) - expected_keys)
    report.emails_twice_after_dedup = len(message_ids) - len(set(received))
    report.raw_repeat_provisionings = sum(succeeded.values()) - len(succeeded)
    report.raw_repeat_emails = sum(received.values()) - len(received)
    queue = Queue("dispatcher-orders", connection=redis)
    # Popped by a worker (RQ's intermediate list) but never started counts as queued.
    report.left_queued = queue.count + _waiting(redis) + redis.llen(queue.intermediate_queue.key)
    report.left_started = int(redis.zcard(started_key(_QUEUE)))
    report.left_scheduled = int(redis.zcard(scheduled_key(_QUEUE)))
    report.left_failed = FailedJobRegistry(queue=queue).count
    for name in (
        "orders_lost", "emails_missing", "provisioned_twice_after_dedup",
        "emails_twice_after_dedup", "left_queued", "left_started", "left_scheduled",
        "left_failed",
    ):  # fmt: skip
        if getattr(report, name):
            report.failures.append(f"{name} = {getattr(report, name)}")
    if sum(report.kills.values()) < 0:
        report.failures.append("no kills")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the chaos suite by hand, longer.")
    for name, value in asdict(ChaosConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    config = ChaosConfig(**vars(parser.parse_args()))
    report = run_chaos(config)
    figures = {k: v for k, v in asdict(report).items() if k != "failures"}
    print(json.dumps(figures, indent=2))
    print("OK" if report.ok else "FAILED: " + "; ".join(report.failures))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
