"""The ``dispatcher`` command line: poll, worker, handlers, integrations, retry, sim, demo,
the operator's commands status, failed, show, forget and web, and the write-back commands
result and packages."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rq import Queue

from dispatcher.handler import HandlerConfigError
from dispatcher.kombo.client import KomboClient, KomboError
from dispatcher.kombo.packages import (
    InvalidPackagesError,
    Package,
    PackagesDiff,
    diff_packages,
    load_packages,
)
from dispatcher.kombo.results import (
    MAX_ATTACHMENTS,
    AssessmentResult,
    InvalidResultError,
    attachment_from_file,
    build_result,
    record_result,
)
from dispatcher.logs import configure_logging
from dispatcher.plugins import discover_handlers, load_handlers
from dispatcher.poller.integrations import IntegrationRegistry, check_integration_id
from dispatcher.poller.poller import Poller, SweepPolicy, SweepReport
from dispatcher.poller.schedule import Schedule
from dispatcher.poller.telemetry import RequestStats
from dispatcher.settings import ConfigError, Settings, load_settings
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import JobOptions, Ledger
from dispatcher.wrongtype import describe, find_wrong_types, shared_keys

__all__ = ["main"]

log = logging.getLogger("dispatcher.cli")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"dispatcher: error: {message}", err=True)
    sys.exit(code)


def redacted_url(url: str) -> str:
    """A connection URL with its password replaced, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _settings(ctx: click.Context) -> Settings:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except ConfigError as exc:
            _fail(str(exc))
    settings: Settings = obj["settings"]
    return settings


def _redis(settings: Settings, *, ping: bool = True) -> Redis:
    url = settings.redis_url.get_secret_value()
    try:
        redis = Redis.from_url(url, health_check_interval=30, socket_connect_timeout=5)
        if ping:
            redis.ping()
    except (RedisError, ValueError) as exc:
        _fail(f"REDIS_URL: cannot reach Redis at {redacted_url(url)}: {exc}", code=1)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.ensure_object(dict)["redis"] = redis  # for _Commands to diagnose a refusal
    return redis


class _Commands(click.Group):
    """The command group: a key of the wrong type met by any command is one line naming it,
    exit 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ResponseError as exc:
            _fail(f"Redis refused a command: {_refusal(ctx, exc)}", code=1)


def _refusal(ctx: click.Context, exc: ResponseError) -> str:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    settings, redis = obj.get("settings"), obj.get("redis")
    if not isinstance(settings, Settings) or not isinstance(redis, Redis):
        return describe(exc, [])
    queue_key = Queue(settings.queue, connection=redis).key
    try:
        wrong = find_wrong_types(redis, shared_keys(Keys(settings.namespace), queue_key))
    except RedisError:
        wrong = []
    # Not a shared key: redis-py's line names the pipeline's command and key, if any.
    return describe(exc, wrong)


def _ledger(settings: Settings, redis: Redis) -> Ledger:
    return Ledger(
        redis,
        Queue(settings.queue, connection=redis),
        settings.namespace,
        job_options=JobOptions.from_settings(settings),
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


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    envvar="DISPATCHER_LOG_LEVEL",
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="DISPATCHER_LOG_FORMAT",
    default="text",
    show_default=True,
)
@click.version_option(package_name="kombo-dispatcher")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Dispatch Kombo assessment orders to pluggable handlers through RQ on Redis.

    Settings come from the environment (and an optional .env file); see the README.
    """
    ctx.ensure_object(dict)
    configure_logging(log_level.upper(), "json" if log_format == "json" else "text")


@cli.command()
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
    settings = _settings(ctx)
    share_of = _parse_share(share) if share is not None else None
    api_key = _or_fail(settings.require_kombo)
    redis = _redis(settings)
    ledger = _ledger(settings, redis)
    registry = IntegrationRegistry(redis, ledger.keys, settings.kombo_integration_ids)
    if not registry.all():
        _fail(
            "KOMBO_INTEGRATION_IDS: no integrations to poll (set it, comma-separated, or "
            "register them with `dispatcher integrations add`)"
        )
    if processes > 1:  # checked the settings above: the children would fail alike
        _poll_in_processes(ctx, once=once, as_json=as_json, processes=processes)
    stop = threading.Event()
    request_stats = RequestStats()
    with (
        KomboClient(
            api_key,
            settings.kombo_base_url,
            timeout=settings.kombo_timeout,
            retry_budget=settings.kombo_retry_budget,
            max_connections=settings.sweep_concurrency,
            sleep=lambda seconds: _sleep_unless(stop, seconds),
            observer=request_stats.observe,
            # Once stopping, no retry: the sleep above returns at once, and retrying on
            # would send Kombo a request a millisecond.
            should_stop=stop.is_set,
            max_response_bytes=settings.max_response_bytes,
        ) as client,
        _stop_on_signals(stop),
    ):
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
            schedule=Schedule(redis, ledger.keys, lease_ttl=settings.lease_ttl),
            stop=stop,
            request_stats=request_stats,
        )
        # What was imported and built so far lives as long as the process: out of the
        # garbage collector's passes, which otherwise walk it while each new page is
        # built (~10% of a first sweep's CPU, bench/full_sweep.py).
        gc.freeze()
        if not once:
            poller.run_forever()
            return
        report = poller.sweep(share=share_of)
    _echo_report(report, as_json)
    for error in report.errors.values():
        click.echo(f"dispatcher: error: {error}", err=True)
    sys.exit(1 if report.errors else 0)


def _parse_share(value: str) -> tuple[int, int]:
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        _fail(f"--share: expected I/N with I < N, got {value!r}")
    return int(index), int(count)


def _poll_in_processes(
    ctx: click.Context, *, once: bool, as_json: bool, processes: int
) -> NoReturn:
    """Run ``processes`` pollers as child processes (each the one-process command, so each
    has its own connections and GIL); forward SIGTERM/SIGINT; exit as they did.

    In the fleet loop they share the schedule like pollers on several machines. With
    --once, child I sweeps share I of N of the integrations (sorted), and the reports add up.
    """
    group = ctx.parent.params if ctx.parent is not None else {}
    base = [sys.executable, "-m", "dispatcher"]
    for name in ("log_level", "log_format"):
        if group.get(name):
            base += [f"--{name.replace('_', '-')}", str(group[name])]
    base.append("poll")
    children = [
        subprocess.Popen(
            [*base, "--once", "--json", "--share", f"{index}/{processes}"] if once else base,
            stdout=subprocess.PIPE if once else None,
            text=True,
        )
        for index in range(processes)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    if once:
        _gather_reports(children, as_json)
    _supervise_fleet(children, forward)


def _gather_reports(children: list[subprocess.Popen[str]], as_json: bool) -> NoReturn:
    report = SweepReport()
    for child in children:
        output = child.communicate()[0]
        try:
            part = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            _fail(f"poll: a poller process failed (exit {child.returncode})", code=1)
        report.integrations += part["integrations"]
        report.pages += part["pages"]
        report.orders_seen += part["orders_seen"]
        report.orders_new += part["orders_new"]
        report.interrupted += part["interrupted"]
        report.invalid_orders += part["invalid_orders"]
        report.errors.update(part["errors"])  # each child printed its own error lines
    _echo_report(report, as_json)
    sys.exit(1 if report.errors else 0)


def _supervise_fleet(
    children: list[subprocess.Popen[str]], forward: Callable[[int, FrameType | None], None]
) -> NoReturn:
    # When one poller exits (a crash, or a signal), stop the others and exit as it did, so
    # that a process manager restarts the set.
    first_exit: int | None = None
    while first_exit is None:
        for child in children:
            if child.poll() is not None:
                first_exit = child.returncode
                break
        else:
            time.sleep(0.2)
    forward(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    sys.exit(max([first_exit, *codes], key=abs))


def _echo_report(report: SweepReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
    else:
        click.echo(
            f"{report.integrations} integrations, {report.pages} pages, "
            f"{report.orders_seen} OPEN orders seen, {report.orders_new} new"
            + (f", {report.invalid_orders} invalid" if report.invalid_orders else "")
            + (f", {report.interrupted} interrupted by a stop" if report.interrupted else "")
        )


def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    # A retry backoff must not hold up a stop request.
    stop.wait(seconds)


def _or_fail(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except ConfigError as exc:
        _fail(str(exc))


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes (RQ's worker pool).",
)
@click.pass_context
def worker(ctx: click.Context, burst: bool, processes: int) -> None:
    """Run the handler chain on queued orders (RQ workers with the scheduler)."""
    from dispatcher.worker.jobs import Runtime
    from dispatcher.worker.worker import run_worker

    settings = _settings(ctx)
    try:
        runtime = Runtime.from_settings(settings)
    except HandlerConfigError as exc:
        _fail(str(exc))
    redis = _redis(settings)
    run_worker(settings, redis, burst=burst, processes=processes, runtime=runtime)


@cli.group()
def integrations() -> None:
    """Register, pause and list the integrations to poll (beside KOMBO_INTEGRATION_IDS)."""


def _registry(ctx: click.Context) -> IntegrationRegistry:
    settings = _settings(ctx)
    redis = _redis(settings)
    return IntegrationRegistry(redis, Keys(settings.namespace), settings.kombo_integration_ids)


def _valid_ids(ids: tuple[str, ...]) -> list[str]:
    try:
        return [check_integration_id(i) for i in ids]
    except ValueError as exc:
        _fail(str(exc))


@integrations.command("add")
@click.argument("integration_ids", nargs=-1, required=True)
@click.pass_context
def integrations_add(ctx: click.Context, integration_ids: tuple[str, ...]) -> None:
    """Register integrations in Redis (swept by every poller of the namespace)."""
    added = _registry(ctx).add(_valid_ids(integration_ids))
    click.echo(f"added {added}, {len(integration_ids) - added} already registered")


@integrations.command("remove")
@click.argument("integration_ids", nargs=-1, required=True)
@click.pass_context
def integrations_remove(ctx: click.Context, integration_ids: tuple[str, ...]) -> None:
    """Unregister integrations (their remembered orders are kept)."""
    registry = _registry(ctx)
    from_env = [i for i in integration_ids if i in registry.configured]
    removed = registry.remove(list(integration_ids))
    click.echo(f"removed {removed}")
    for integration_id in from_env:
        click.echo(
            f"dispatcher: warning: {integration_id} is also in KOMBO_INTEGRATION_IDS "
            "and stays polled; pause it or edit the variable",
            err=True,
        )


@integrations.command("pause")
@click.argument("integration_ids", nargs=-1, required=True)
@click.pass_context
def integrations_pause(ctx: click.Context, integration_ids: tuple[str, ...]) -> None:
    """Stop sweeping integrations until resumed."""
    _registry(ctx).pause(_valid_ids(integration_ids))
    click.echo(f"paused {len(integration_ids)}")


@integrations.command("resume")
@click.argument("integration_ids", nargs=-1, required=True)
@click.pass_context
def integrations_resume(ctx: click.Context, integration_ids: tuple[str, ...]) -> None:
    """Sweep paused integrations again."""
    _registry(ctx).resume(_valid_ids(integration_ids))
    click.echo(f"resumed {len(integration_ids)}")


@integrations.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def integrations_list(ctx: click.Context, as_json: bool) -> None:
    """Every integration: source, paused, next sweep, backoff, lease, watermark."""
    registry = _registry(ctx)
    keys = registry.keys
    redis = registry.redis
    rows: list[dict[str, Any]] = []
    now = time.time()
    for entry in registry.all():
        with redis.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.schedule, entry.integration_id)
            pipe.get(keys.lease(entry.integration_id))
            pipe.hgetall(keys.sweep(entry.integration_id))
            due, lease, raw_state = pipe.execute()
        state = {_text(k): _text(v) for k, v in raw_state.items()}
        rows.append(
            {
                "integration_id": entry.integration_id,
                "source": entry.source,
                "paused": entry.paused,
                "next_sweep_in": round(float(due) - now, 1) if due is not None else None,
                "lease": _text(lease) if lease else None,
                "consecutive_failures": int(state.get("consecutive_failures", 0)),
                "watermark": float(state["watermark"]) if "watermark" in state else None,
                "last_sweep_at": float(state["last_sweep_at"])
                if "last_sweep_at" in state
                else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    width = max([len(r["integration_id"]) for r in rows] + [11])
    click.echo(f"{'INTEGRATION':<{width}}  SOURCE     STATE    NEXT SWEEP  FAILURES  LEASE")
    for r in rows:
        state_text = (
            "paused" if r["paused"] else ("backoff" if r["consecutive_failures"] else "active")
        )
        due_text = f"{r['next_sweep_in']:.0f}s" if r["next_sweep_in"] is not None else "-"
        click.echo(
            f"{r['integration_id']:<{width}}  {r['source']:<9}  {state_text:<7}  {due_text:>10}  "
            f"{r['consecutive_failures']:>8}  {r['lease'] or '-'}"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value is not None else None


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Re-queue every failed job of the queue.")
@click.pass_context
def retry(ctx: click.Context, job_ids: tuple[str, ...], all_failed: bool) -> None:
    """Re-queue failed jobs; their completed steps are skipped when they run again.

    Each job gets a fresh set of DISPATCHER_MAX_RETRIES retries.
    """
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    if bool(job_ids) == all_failed:
        _fail("name failed job ids, or give --all-failed (not both)")
    settings = _settings(ctx)
    redis = _redis(settings)
    registry = FailedJobRegistry(queue=Queue(settings.queue, connection=redis))
    targets = list(job_ids) if job_ids else registry.get_job_ids()
    missing: list[str] = []
    for job_id in targets:
        try:
            job = Job.fetch(job_id, connection=redis)
            job.retries_left = settings.max_retries
            job.save(include_meta=False)
            registry.requeue(job)
        except (NoSuchJobError, InvalidJobOperation):
            missing.append(job_id)
            continue
        click.echo(f"re-queued {job_id} ({job.description})")
    if not targets:
        click.echo("no failed jobs")
    for job_id in missing:
        click.echo(f"dispatcher: error: job {job_id} is not in the failed registry", err=True)
    sys.exit(1 if missing else 0)


@cli.command()
@click.pass_context
def handlers(ctx: click.Context) -> None:
    """List every installed handler, and check the configured chain."""
    settings = _settings(ctx)
    discovered = discover_handlers()
    width = max([len(name) for name in discovered] + [7])
    click.echo(f"{'HANDLER':<{width}}  {'CONFIGURED':<10}  DISTRIBUTION / PROBLEM")
    for name in sorted(discovered):
        entry = discovered[name]
        position = str(settings.handlers.index(name) + 1) if name in settings.handlers else "-"
        detail = entry.distribution if entry.error is None else f"BROKEN: {entry.error}"
        click.echo(f"{name:<{width}}  {position:<10}  {detail}")
    try:
        load_handlers(settings.handlers, discovered)
    except HandlerConfigError as exc:
        _fail(str(exc))
    click.echo(f"chain: {' -> '.join(settings.handlers)}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--integrations", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--orders",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="OPEN orders per integration.",
)
@click.option(
    "--closed", type=click.IntRange(0), default=None, help="Closed orders per integration."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--api-key", default="sim-api-key", show_default=True, envvar="SIM_API_KEY")
@click.option("--latency", type=click.FloatRange(0), default=0.0, help="Seconds per request.")
@click.option("--rate-limit", type=click.FloatRange(0, 1), default=0.0, help="P(429).")
@click.option("--retry-after", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--server-error", type=click.FloatRange(0, 1), default=0.0, help="P(500).")
@click.option("--malformed", type=click.FloatRange(0, 1), default=0.0, help="P(bad JSON).")
def sim(
    host: str,
    port: int,
    integrations: int,
    orders: int,
    closed: int | None,
    seed: int,
    api_key: str,
    latency: float,
    rate_limit: float,
    retry_after: float,
    server_error: float,
    malformed: float,
) -> None:
    """Serve a simulated Kombo assessment API (for the demo, tests and benchmarks)."""
    from dispatcher.testing.simulator import Faults, Simulator

    simulator = Simulator(
        integrations,
        orders,
        closed=closed,
        api_key=api_key,
        seed=seed,
        faults=Faults(
            rate_limit=rate_limit,
            retry_after=retry_after,
            server_error=server_error,
            malformed=malformed,
            latency=latency,
        ),
    )
    click.echo(f"KOMBO_BASE_URL=http://{host}:{port}/v1", err=True)
    click.echo(f"KOMBO_API_KEY={api_key}", err=True)
    click.echo(f"KOMBO_INTEGRATION_IDS={','.join(simulator.integration_ids)}", err=True)
    simulator.serve_forever(host, port)


@cli.command()
@click.option("--integrations", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--orders", type=click.IntRange(1, 500), default=12, show_default=True)
def demo(integrations: int, orders: int) -> None:
    """Run the whole pipeline in process: no Redis server, no Kombo key needed."""
    from dispatcher.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(run_demo(integrations=integrations, orders=orders, echo=click.echo))


# -- operating it ---------------------------------------------------------------------------


def _colour() -> bool | None:
    # None lets click decide (styles only on a terminal); NO_COLOR (no-color.org) turns them off.
    return False if os.environ.get("NO_COLOR") else None


def _redis_failed(exc: RedisError) -> NoReturn:
    _fail(f"cannot read Redis: {type(exc).__name__}: {exc}", code=1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: README).")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--iterations", type=click.IntRange(1), default=None, hidden=True)
@click.pass_context
def status(
    ctx: click.Context, as_json: bool, watch: bool, interval: float, iterations: int | None
) -> None:
    """Are orders flowing? Queues, workers, integrations, handler steps, on one screen."""
    from dispatcher.ops.status import take_snapshot
    from dispatcher.ops.views import render_status

    settings = _settings(ctx)
    redis = _redis(settings)
    url = redacted_url(settings.redis_url.get_secret_value())
    in_place = watch and not as_json and sys.stdout.isatty()
    shown = 0
    try:
        while True:
            try:
                snapshot = take_snapshot(redis, settings)
            except RedisError as exc:
                _redis_failed(exc)
            if as_json:
                click.echo(json.dumps(snapshot.as_dict(), sort_keys=True))
            else:
                text = render_status(snapshot, redis_url=url)
                if in_place:
                    # Home, then each line erases its rest: no flicker, no leftovers. Written
                    # directly: click would strip these codes along with the colours.
                    body = text if _colour() is None else click.unstyle(text)
                    sys.stdout.write(
                        ("\x1b[H\x1b[2J" if shown == 0 else "\x1b[H")
                        + body.replace("\n", "\x1b[K\n")
                        + "\x1b[K\n\x1b[J"
                    )
                    sys.stdout.flush()
                else:
                    if watch and shown:
                        click.echo("")
                    click.echo(text, color=_colour())
            shown += 1
            if not watch or (iterations is not None and shown >= iterations):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if in_place:
            click.echo("")
        return


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Show the newest N (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line.")
@click.pass_context
def failed(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List failed jobs: order, integration, handler, reason, attempts, when."""
    from dispatcher import _text
    from dispatcher.ops.admin import failed_jobs

    settings = _settings(ctx)
    redis = _redis(settings)
    try:
        jobs, total = failed_jobs(redis, settings.queue, limit=limit or None)
    except RedisError as exc:
        _redis_failed(exc)
    if as_json:
        for job in jobs:
            click.echo(json.dumps(job.as_dict(), sort_keys=True))
        return
    if not jobs:
        click.echo(f"no failed jobs on {settings.queue}")
        return
    now = time.time()
    rows = [
        [
            _text.ago(job.failed_at, now),
            job.order_id or "?",
            job.integration_id or "?",
            job.handler or "-",
            str(job.attempts),
            job.reason,
        ]
        for job in jobs
    ]
    header = ["FAILED", "ORDER", "INTEGRATION", "HANDLER", "ATTEMPTS", "REASON"]
    for line in _text.table(header, rows, right={4}):
        click.echo(line)
    shown = f"showing the newest {len(jobs)}, --limit 0 for all" if len(jobs) < total else "all"
    click.echo(
        f"\n{_text.plural(total, 'failed job')} on {settings.queue} ({shown}); "
        "details: dispatcher show ORDER_ID --integration ID"
    )


@cli.command()
@click.argument("order_id")
@click.option("--integration", "integration_id", help="Only this integration.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a match.")
@click.option(
    "--payload",
    is_flag=True,
    help="Also print the order as Kombo sent it (holds candidate personal data).",
)
@click.pass_context
def show(
    ctx: click.Context, order_id: str, integration_id: str | None, as_json: bool, payload: bool
) -> None:
    """Everything the dispatcher knows about one order: seen, job, steps, last error.

    Without --integration every integration that knows the order id is shown.
    """
    from dispatcher.ops.admin import describe_order, known_integrations
    from dispatcher.ops.views import render_order
    from dispatcher.store.keys import Keys

    settings = _settings(ctx)
    redis = _redis(settings)
    try:
        integrations = (
            [integration_id]
            if integration_id
            else known_integrations(redis, Keys(settings.namespace), settings.kombo_integration_ids)
        )
        records = describe_order(redis, settings.namespace, settings.queue, order_id, integrations)
    except RedisError as exc:
        _redis_failed(exc)
    if not records:
        where = f"integration {integration_id}" if integration_id else "any integration"
        _fail(f"order {order_id} is not known in {where}", code=1)
    for index, record in enumerate(records):
        if as_json:
            data = record.as_dict()
            if payload:
                data["payload"] = record.payload
            click.echo(json.dumps(data, sort_keys=True, default=str))
            continue
        if index:
            click.echo("")
        click.echo(
            render_order(record, now=time.time(), payload=payload, order=settings.handlers),
            color=_colour(),
        )


@cli.command()
@click.argument("order_id")
@click.option("--integration", "integration_id", required=True, help="The order's integration.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, order_id: str, integration_id: str, yes: bool) -> None:
    """Forget an order, so that the next sweep dispatches it again (if still OPEN).

    Removes it from the seen store together with its RQ job and its step records: its
    handlers all run again. Refused while a worker is running its job.
    """
    from dispatcher.ops.admin import ForgetRefused, describe_order, forget_order
    from dispatcher.ops.views import describe_forget

    settings = _settings(ctx)
    redis = _redis(settings)
    try:
        records = describe_order(
            redis, settings.namespace, settings.queue, order_id, [integration_id]
        )
        if not records:
            _fail(f"order {order_id} is not known in integration {integration_id}", code=1)
        if not yes:
            click.echo(describe_forget(records[0], now=time.time()))
            try:
                confirmed = click.confirm("Forget it?", default=False)
            except click.Abort:
                confirmed = False
            if not confirmed:
                _fail("not confirmed: nothing was changed", code=1)
        result = forget_order(
            redis,
            settings.namespace,
            settings.queue,
            integration_id,
            order_id,
            handlers=settings.handlers,
        )
    except ForgetRefused as exc:
        _fail(str(exc), code=1)
    except RedisError as exc:
        _redis_failed(exc)
    removed = ["seen mark" if result.was_seen else "no seen mark"]
    if result.job_status is not None:
        removed.append(f"{result.job_status} job")
    if result.steps:
        removed.append(f"{result.steps} step record(s)")
    if result.effects:
        removed.append(f"{result.effects} effect record(s)")
    click.echo(
        f"forgot order {order_id} (integration {integration_id}): removed {', '.join(removed)}; "
        "the next sweep dispatches it again if it is still OPEN"
    )


@cli.command()
@click.option("--host", envvar="DISPATCHER_WEB_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port", envvar="PORT", type=click.IntRange(0, 65535), default=8000, show_default=True
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, access_log: bool) -> None:
    """Serve /metrics (Prometheus) and /healthz over HTTP (needs the web extra)."""
    try:
        import uvicorn

        from dispatcher.web.app import create_app, server_config
    except ImportError as exc:
        _fail(
            "dispatcher web needs the web extra: pip install 'kombo-dispatcher[web]' "
            f"({exc.name or 'a dependency'} is not installed)"
        )
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    settings = _settings(ctx)
    # Start even when Redis is down: /healthz then says 503, which is what it is for; and
    # say it fast (probes time out after a second or so): one quick retry, not redis-py's
    # default backoff of several seconds.
    try:
        redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            health_check_interval=30,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
    except ValueError as exc:
        _fail(f"REDIS_URL: {exc}")
    routes = []
    if settings.kombo_webhook_secret is not None:
        from dispatcher.web.webhook import webhook_routes

        try:
            routes = webhook_routes(settings, _ledger(settings, redis))
        except (ConfigError, HandlerConfigError) as exc:
            _fail(str(exc))
    else:
        log.warning("KOMBO_WEBHOOK_SECRET is not set: the webhook receiver is off")
    app = create_app(settings, redis, extra_routes=routes)
    # The app's objects live as long as the process: keep them out of the garbage collector's
    # full passes, which otherwise stall every request in flight for ~30 ms.
    gc.freeze()
    log.info(
        "serving /metrics, /healthz%s on http://%s:%d",
        " and /webhooks/kombo" if routes else "",
        host,
        port,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the
    # handlers it found; these make that a clean exit 0, like the other commands.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    server = uvicorn.Server(
        server_config(app, settings, host=host, port=port, access_log=access_log)
    )
    server.run()
    if not server.started:
        _fail(f"dispatcher web: could not serve on {host}:{port} (see the error above)", 1)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    log.info("received %s, stopped", signal.Signals(signum).name)


# -- write-back: results and packages --------------------------------------------------------

# The CLI option behind each field of a result, for error messages.
_RESULT_OPTIONS = {
    "status": "--status",
    "result_url": "--result-url",
    "completed_at": "--completed-at",
    "score": "--score",
    "max_score": "--max-score",
    "attributes": "--attribute",
    "attachments": "--attachment",
}


def _kombo_client(settings: Settings) -> KomboClient:
    return KomboClient(
        _or_fail(settings.require_kombo),
        settings.kombo_base_url,
        timeout=settings.kombo_timeout,
        retry_budget=settings.kombo_retry_budget,
        max_response_bytes=settings.max_response_bytes,
    )


def _kombo_failure(exc: KomboError) -> str:
    return f"{exc} (log: {exc.log_url})" if exc.log_url else str(exc)


def _number(option: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        _fail(f"{option}: not a number: {value!r}")
    if not math.isfinite(number):
        _fail(f"{option}: must be a finite number, got {value!r}")
    return number


def _result_from_options(
    status: str | None,
    result_url: str | None,
    completed_at: str | None,
    score: str | None,
    max_score: str | None,
    attributes: tuple[str, ...],
    attachments: tuple[str, ...],
) -> AssessmentResult:
    """Validate every option (one-line error naming the option) and build the result."""
    if not status or status.upper() not in ("COMPLETED", "CANCELLED"):
        _fail(f"--status: required, COMPLETED or CANCELLED (got {status!r})")
    if not result_url:
        _fail("--result-url: required (where the customer sees the full result)")
    when: datetime | None = None
    if completed_at is not None:
        try:
            when = datetime.fromisoformat(completed_at)
        except ValueError:
            _fail(f"--completed-at: not an ISO 8601 date-time: {completed_at!r}")
    numbers = {"score": _number("--score", score), "max_score": _number("--max-score", max_score)}
    if (numbers["score"] is None) != (numbers["max_score"] is None):
        _fail("--score and --max-score go together: give both or neither")
    text_attributes: list[dict[str, str]] = []
    for item in attributes:
        label, sep, value = item.partition("=")
        if not sep or not label.strip():
            _fail(f"--attribute: expected LABEL=VALUE, got {item!r}")
        text_attributes.append({"type": "TEXT", "label": label.strip(), "value": value})
    if len(attachments) > MAX_ATTACHMENTS:
        _fail(f"--attachment: at most {MAX_ATTACHMENTS} attachments, got {len(attachments)}")
    files = []
    for path in attachments:
        try:
            files.append(attachment_from_file(path))
        except InvalidResultError as exc:
            _fail(f"--attachment {path}: {exc.problem}")
    try:
        return build_result(
            status=status.upper(),
            result_url=result_url,
            completed_at=when,
            attributes=text_attributes,
            attachments=files,
            **numbers,
        )
    except InvalidResultError as exc:
        head, _, rest = exc.field.partition("[")
        option = _RESULT_OPTIONS.get(head.split(".")[0], exc.field)
        where = f"{option} #{int(rest.split(']')[0]) + 1}" if rest[:1].isdigit() else option
        _fail(f"{where}: {exc.problem}")


@cli.command()
@click.argument("order_id", required=False)
@click.option("--integration", "integration_id", metavar="ID", help="The order's integration.")
@click.option("--status", metavar="COMPLETED|CANCELLED", help="The order's final status.")
@click.option("--result-url", metavar="URL", help="Where the customer sees the full result.")
@click.option("--completed-at", metavar="TIME", help="ISO 8601 date-time; default: now.")
@click.option("--score", metavar="S", help="Overall score (with --max-score).")
@click.option("--max-score", metavar="M", help="Highest possible score (with --score).")
@click.option(
    "--attribute", "attributes", multiple=True, metavar="LABEL=VALUE", help="A text attribute."
)
@click.option(
    "--attachment",
    "attachments",
    multiple=True,
    metavar="FILE",
    help=f"A file to attach (at most {MAX_ATTACHMENTS}).",
)
@click.pass_context
def result(
    ctx: click.Context,
    order_id: str | None,
    integration_id: str | None,
    status: str | None,
    result_url: str | None,
    completed_at: str | None,
    score: str | None,
    max_score: str | None,
    attributes: tuple[str, ...],
    attachments: tuple[str, ...],
) -> None:
    """Write an order's result back to Kombo, and mark the order finished.

    Everything is checked before anything is sent; Kombo's warnings are printed.
    """
    if not order_id:
        _fail("ORDER_ID: required (the Kombo assessment order id)")
    if not integration_id:
        _fail("--integration: required (the integration the order belongs to)")
    body = _result_from_options(
        status, result_url, completed_at, score, max_score, attributes, attachments
    )
    settings = _settings(ctx)
    client = _kombo_client(settings)
    redis = _redis(settings)  # reachable before anything is written to Kombo
    with client:
        try:
            warnings = client.put_result(integration_id, order_id, body)
        except KomboError as exc:
            _fail(f"order {order_id}: {_kombo_failure(exc)}", code=1)
    for warning in warnings:
        click.echo(f"dispatcher: kombo warning: {warning}", err=True)
    try:
        record_result(redis, Keys(settings.namespace), integration_id, order_id, body.status)
    except RedisError as exc:
        _fail(
            f"order {order_id}: result written to Kombo, but not recorded in Redis: {exc}", code=1
        )
    click.echo(f"order {order_id} ({integration_id}): result {body.status} written")


def _package_targets(settings: Settings, integration_id: str | None, all_: bool) -> list[str]:
    if integration_id and all_:
        _fail("--integration and --all: give one, not both")
    if integration_id:
        return [integration_id]
    if not all_:
        _fail("--integration ID or --all: required (which integrations to address)")
    if not settings.kombo_integration_ids:
        _fail("KOMBO_INTEGRATION_IDS: not set (--all addresses every configured integration)")
    return list(settings.kombo_integration_ids)


@cli.group()
def packages() -> None:
    """Publish the vendor's assessment packages to Kombo, or show them."""


@packages.command("get")
@click.option("--integration", "integration_id", metavar="ID", help="One integration.")
@click.option("--all", "all_", is_flag=True, help="Every integration in KOMBO_INTEGRATION_IDS.")
@click.pass_context
def packages_get(ctx: click.Context, integration_id: str | None, all_: bool) -> None:
    """Print the packages Kombo holds, as JSON (the format `packages set` reads).

    With --all: one object keyed by integration id.
    """
    settings = _settings(ctx)
    targets = _package_targets(settings, integration_id, all_)
    found: dict[str, Any] = {}
    failed = False
    with _kombo_client(settings) as client:
        for target in targets:
            try:
                listed = client.get_packages(target)
            except KomboError as exc:
                click.echo(f"dispatcher: error: {_kombo_failure(exc)}", err=True)
                failed = True
                continue
            found[target] = {"packages": [package.model_dump(mode="json") for package in listed]}
    if found:
        out = found if all_ else found[targets[0]]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    sys.exit(1 if failed else 0)


@packages.command("set")
@click.argument("file", required=False)
@click.option("--integration", "integration_id", metavar="ID", help="One integration.")
@click.option("--all", "all_", is_flag=True, help="Every integration in KOMBO_INTEGRATION_IDS.")
@click.option("--yes", is_flag=True, help="Replace without asking.")
@click.pass_context
def packages_set(
    ctx: click.Context, file: str | None, integration_id: str | None, all_: bool, yes: bool
) -> None:
    """Replace the package list with FILE (JSON, or TOML with a .toml name).

    Shows what is added, changed and marked deleted in each integration, then asks (unless
    --yes). Packages left out of FILE are marked deleted by Kombo.
    """
    if not file:
        _fail("FILE: required (a JSON or TOML package list)")
    settings = _settings(ctx)
    targets = _package_targets(settings, integration_id, all_)
    try:
        wanted = load_packages(file)
    except InvalidPackagesError as exc:
        _fail(str(exc))
    with _kombo_client(settings) as client:
        changing = _show_package_diffs(_current_diffs(client, targets, wanted))
        if not changing:
            click.echo("nothing to change")
            return
        if not yes and not _confirm(f"Replace the package list of {len(changing)} integration(s)?"):
            _fail("aborted: nothing changed", code=1)
        failed = _replace_packages(client, changing, wanted)
    if failed:
        _fail(f"{failed} of {len(changing)} integration(s) not updated", code=1)


def _confirm(question: str) -> bool:
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input, or Ctrl-C, at the prompt
        click.echo(err=True)
        return False


def _current_diffs(
    client: KomboClient, targets: list[str], wanted: list[Package]
) -> dict[str, PackagesDiff]:
    """Each integration's diff against Kombo's list; exit 1 if any list cannot be read."""
    diffs: dict[str, PackagesDiff] = {}
    errors: list[str] = []
    for target in targets:
        try:
            diffs[target] = diff_packages(client.get_packages(target), wanted)
        except KomboError as exc:
            errors.append(_kombo_failure(exc))
    if errors:
        for error in errors:
            click.echo(f"dispatcher: error: {error}", err=True)
        _fail("could not read the current packages: nothing changed", code=1)
    return diffs


def _replace_packages(client: KomboClient, targets: list[str], wanted: list[Package]) -> int:
    """PUT the list to each integration; return how many failed (each reported)."""
    failed = 0
    for target in targets:
        try:
            warnings = client.set_packages(target, wanted)
        except KomboError as exc:
            click.echo(f"dispatcher: error: {_kombo_failure(exc)}", err=True)
            failed += 1
            continue
        for warning in warnings:
            click.echo(f"dispatcher: kombo warning: integration {target}: {warning}", err=True)
        click.echo(f"integration {target}: packages replaced")
    return failed


def _show_package_diffs(diffs: dict[str, PackagesDiff]) -> list[str]:
    """Print each integration's diff; return the integrations that change."""
    changing: list[str] = []
    for target, diff in diffs.items():
        click.echo(
            f"integration {target}: {len(diff.added)} added, {len(diff.changed)} changed, "
            f"{len(diff.deleted)} marked deleted, {len(diff.unchanged)} unchanged"
        )
        for line in diff.lines():
            click.echo(line)
        if not diff.empty:
            changing.append(target)
    return changing


def main() -> None:
    """Console entry point."""
    cli(prog_name="dispatcher")
