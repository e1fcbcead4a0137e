"""``dispatcher poll``: the poller process (one, or a fleet of them)."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from urllib.parse import urlsplit

import click
from redis import Redis
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from dispatcher._text import plural
from dispatcher.cli._common import (
    connect_redis,
    fail,
    make_ledger,
    or_fail,
    settings_of,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.fleet import FleetError, parse_share, run_fleet, sweep_in_processes
from dispatcher.poller.fleet_loop import FleetLoop
from dispatcher.poller.integrations import IntegrationRegistry
from dispatcher.poller.poller import Poller, SweepPolicy
from dispatcher.poller.report import SweepReport
from dispatcher.poller.schedule import Schedule
from dispatcher.poller.telemetry import RequestStats
from dispatcher.settings import Settings
from dispatcher.store.connection import UnsuitableRedisError, startup_check
from dispatcher.store.reconcile import Reconciler
from dispatcher.store.reconcile_state import PeriodicReconcile
from dispatcher.store.results import Outbox
from dispatcher.unknown_settings import CHECKED

log = logging.getLogger("dispatcher.cli")

# Seconds `poll --once` retries a Kombo it cannot connect to (the loop: KOMBO_RETRY_BUDGET).
ONCE_CONNECT_BUDGET = 10.0


@click.command()
@click.option("--once", is_flag=True, help="Sweep every integration once, then exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the report as JSON.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Poller processes: a sweep is CPU-bound in one (parsing, enqueuing), more use more "
    "cores. They share the fleet schedule; with --once each sweeps a share of the integrations.",
)
@click.option("--share", hidden=True, help="I/N: sweep the I-th of N shares (for --processes).")
@click.pass_context
def poll(ctx: click.Context, once: bool, as_json: bool, processes: int, share: str | None) -> None:
    """Poll Kombo for OPEN orders and enqueue the new ones.

    Loops every DISPATCHER_POLL_INTERVAL seconds (with jitter) until SIGTERM or SIGINT,
    which finish the current page and exit 0. With --once: one sweep, exit 1 if an
    integration still failed after retries; SIGTERM or SIGINT stop it the same way (no
    further request, retries included) and it prints the report of what it swept.
    """
    settings = settings_of(ctx)
    share_of: tuple[int, int] | None = None
    if share is not None:
        try:
            share_of = parse_share(share)
        except ValueError as exc:
            fail(str(exc))
    # Checked before Redis is: a missing key is the one line, whatever Redis is doing.
    or_fail(settings.require_kombo)
    # --once fails fast; the loop rides out Redis outages, the one at start included. A
    # one-off sweep is a command: server notices only at DEBUG (status shows them).
    redis = connect_redis(settings, role="cli") if once else _redis_when_up(settings)
    ledger = make_ledger(settings, redis)
    registry = IntegrationRegistry(redis, ledger.keys, settings.kombo_integration_ids)
    if not registry.all():
        fail(
            "KOMBO_INTEGRATION_IDS: no integrations to poll (set it, comma-separated, or "
            "register them with `dispatcher integrations add`)"
        )
    if processes > 1:  # checked the settings above: the children would fail alike
        _poll_in_processes(ctx, once=once, as_json=as_json, processes=processes)
    stop = threading.Event()
    request_stats = RequestStats()
    with (
        KomboClient.from_settings(
            settings,
            # A person waits on --once: an unreachable Kombo (a wrong KOMBO_BASE_URL port)
            # is an answer within seconds, not after each request's KOMBO_RETRY_BUDGET.
            connect_retry_budget=ONCE_CONNECT_BUDGET if once else None,
            max_connections=settings.sweep_concurrency,
            sleep=lambda seconds: _sleep_unless(stop, seconds),
            observer=request_stats.observe,
            # Once stopping, no retry: the sleep above returns at once, and retrying on
            # would send Kombo a request a millisecond.
            should_stop=stop.is_set,
        ) as client,
        _stop_on_signals(stop),
    ):
        schedule = Schedule(redis, ledger.keys, lease_ttl=settings.lease_ttl)
        poller = Poller(
            client,
            ledger,
            registry,
            endpoint=settings.orders_endpoint,
            page_size=settings.page_size,
            concurrency=settings.sweep_concurrency,
            policy=SweepPolicy(
                interval=settings.poll_interval,
                full_sweep_interval=settings.full_sweep_interval,
                incremental_overlap=settings.incremental_overlap,
                backoff_cap=settings.backoff_cap,
                seen_retention=settings.seen_retention,
                prune_after_sweeps=settings.prune_after_sweeps,
                max_pages=settings.max_pages_per_sweep,
            ),
            schedule=schedule,
            stop=stop,
            request_stats=request_stats,
            reconcile=PeriodicReconcile(
                Reconciler(ledger, Outbox.from_settings(redis, settings), settings.handlers),
                settings.reconcile_interval,
                schedule.owner,
            ),
        )
        # What was imported and built so far lives as long as the process: out of the
        # garbage collector's passes, which otherwise walk it while each new page is
        # built (~10% of a first sweep's CPU, bench/full_sweep.py).
        gc.freeze()
        if not once:
            FleetLoop(poller).run()
            return
        report = poller.sweep(share=share_of)
    _echo_report(report, as_json)
    for line in distinct_errors(report.errors):
        click.echo(f"dispatcher: error: {line}", err=True)
    sys.exit(1 if report.errors else 0)


def distinct_errors(errors: dict[str, str], shown: int = 5) -> list[str]:
    """One line per distinct error: ``integration X: E`` for one integration, ``E (3
    integrations: X, Y, Z)`` for several (a refused API key fails them all alike)."""
    by_problem: dict[str, list[str]] = {}
    for integration_id, error in errors.items():
        problem = error.removeprefix(f"integration {integration_id}: ")
        by_problem.setdefault(problem, []).append(integration_id)
    lines = []
    for problem, ids in by_problem.items():
        if len(ids) == 1:
            lines.append(f"integration {ids[0]}: {problem}")
            continue
        names = ", ".join(ids[:shown]) + (
            f" and {len(ids) - shown} more" if len(ids) > shown else ""
        )
        lines.append(f"{problem} ({plural(len(ids), 'integration')}: {names})")
    return lines


def _poll_in_processes(ctx: click.Context, *, once: bool, as_json: bool, processes: int) -> None:
    """Run ``processes`` pollers, each this command in a process of its own; exit as they
    did (:mod:`dispatcher.poller.fleet`)."""
    group = ctx.parent.params if ctx.parent is not None else {}
    command = [sys.executable, "-m", "dispatcher"]
    for name in ("log_level", "log_format"):
        if group.get(name):
            command += [f"--{name.replace('_', '-')}", str(group[name])]
    command.append("poll")
    os.environ[CHECKED] = "1"  # this command warned about unknown settings: not N times more
    if not once:
        sys.exit(run_fleet(command, processes))
    try:
        report = sweep_in_processes(command, processes)
    except FleetError as exc:
        fail(str(exc), code=1)
    _echo_report(report, as_json)
    sys.exit(1 if report.errors else 0)


def _redis_when_up(settings: Settings, cap: float = 30.0) -> Redis:
    """Loop mode: Redis, once it answers. Unreachable at start, it is waited for with
    backoff (1 s doubling to ``cap``), said once, as the loop does for a later outage;
    SIGTERM or SIGINT meanwhile exit 0. A refused password is a configuration error: exit 1."""
    redis = connect_redis(settings, ping=False)
    # The URL itself is a secret to the log filter (it may hold a password): name the host.
    # Not urlsplit's hostname/port: a Sentinel URL lists several hosts (h1:26379,h2:26379).
    raw = settings.redis_url.get_secret_value()
    url = urlsplit(raw)
    where = url.path if url.scheme == "unix" else url.netloc.rpartition("@")[2]
    stop = threading.Event()
    delay, down_since = 1.0, None
    with _stop_on_signals(stop):
        while True:
            try:
                redis.ping()
            except (AuthenticationError, AuthorizationError) as exc:
                fail(f"REDIS_URL: Redis at {where} refused us: {exc}", code=1)
            except RedisError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.error(
                        "cannot reach Redis at %s: %s: %s; waiting for it (retrying with backoff)",
                        where,
                        type(exc).__name__,
                        exc,
                    )
                if stop.wait(delay):
                    sys.exit(0)
                delay = min(delay * 2, cap)
                continue
            if down_since is not None:
                log.info(
                    "Redis at %s answers after %.0fs: polling", where, time.monotonic() - down_since
                )
            try:
                startup_check(redis, process="poller")
            except UnsuitableRedisError as exc:
                fail(str(exc), code=1)
            except RedisError:
                pass  # gone again already: the loop rides it out
            return redis


def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    # A retry backoff must not hold up a stop request.
    stop.wait(seconds)


def _echo_report(report: SweepReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
    else:
        click.echo(
            f"{plural(report.integrations, 'integration')}, {plural(report.pages, 'page')}, "
            f"{report.orders_seen} OPEN orders seen, {report.orders_new} new"
            + (f", {report.invalid_orders} invalid" if report.invalid_orders else "")
            + (f", {report.interrupted} interrupted by a stop" if report.interrupted else "")
        )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT ask for a clean stop (the current page is finished first)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping after the current page", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
