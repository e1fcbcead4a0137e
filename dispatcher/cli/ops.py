"""The operator's commands: ``status``, ``failed``, ``show``, ``forget``, ``retry`` (of jobs
or of result writes), ``replay`` and ``handlers`` (the work is done in :mod:`dispatcher.ops` and
:mod:`dispatcher.plugins`)."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import click
from redis.exceptions import RedisError

from dispatcher import _text
from dispatcher.cli._common import (
    colour,
    connect_redis,
    fail,
    kombo_client,
    kombo_failure,
    make_ledger,
    redis_failed,
    settings_of,
)
from dispatcher.handler import HandlerConfigError
from dispatcher.kombo.errors import KomboError
from dispatcher.logs import escape_controls
from dispatcher.ops.failed import failed_jobs, retry_failed
from dispatcher.ops.forget import ForgetRefused, forget_order
from dispatcher.ops.order_record import describe_order, known_integrations, timeline_integrations
from dispatcher.ops.replay import replay as replay_orders
from dispatcher.ops.results import retry_failed_writes
from dispatcher.ops.status import take_snapshot
from dispatcher.ops.timeline import order_timeline, timeline_lines
from dispatcher.ops.views import describe_forget, render_order, render_status
from dispatcher.plugins import discover_handlers, load_handlers
from dispatcher.store.connection import redacted_url
from dispatcher.store.keys import Keys


@click.command()
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
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    url = redacted_url(settings.redis_url.get_secret_value())
    in_place = watch and not as_json and sys.stdout.isatty()
    shown = 0
    try:
        while True:
            try:
                snapshot = take_snapshot(redis, settings)
            except RedisError as exc:
                redis_failed(exc)
            if as_json:
                click.echo(json.dumps(snapshot.as_dict(), sort_keys=True))
            else:
                text = render_status(snapshot, redis_url=url)
                if in_place:
                    # Home, then each line erases its rest: no flicker, no leftovers. Written
                    # directly: click would strip these codes along with the colours.
                    body = text if colour() is None else click.unstyle(text)
                    sys.stdout.write(
                        ("\x1b[H\x1b[2J" if shown == 0 else "\x1b[H")
                        + body.replace("\n", "\x1b[K\n")
                        + "\x1b[K\n\x1b[J"
                    )
                    sys.stdout.flush()
                else:
                    if watch and shown:
                        click.echo("")
                    click.echo(text, color=colour())
            shown += 1
            if not watch or (iterations is not None and shown >= iterations):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if in_place:
            click.echo("")
        return


@click.command()
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
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    try:
        jobs, total = failed_jobs(redis, settings.queue, limit=limit or None)
    except RedisError as exc:
        redis_failed(exc)
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


@click.command()
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
    """Everything the dispatcher knows about one order: seen, job, steps, last error, and
    its timeline (handler steps, results submitted, written or failed).

    Without --integration every integration that knows the order id is shown.
    """
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    try:
        integrations = (
            [integration_id]
            if integration_id
            else known_integrations(redis, Keys(settings.namespace), settings.kombo_integration_ids)
        )
        records = describe_order(redis, settings.namespace, settings.queue, order_id, integrations)
        if not records and not integration_id:  # known by a timeline alone (the console too)
            others = timeline_integrations(redis, Keys(settings.namespace), order_id)
            records = describe_order(redis, settings.namespace, settings.queue, order_id, others)
    except RedisError as exc:
        redis_failed(exc)
    if not records:
        where = f"integration {integration_id}" if integration_id else "any integration"
        fail(f"order {order_id} is not known in {where}", code=1)
    for index, record in enumerate(records):
        try:
            timeline = order_timeline(
                redis, settings, record.integration_id, order_id, record=record
            )
        except RedisError as exc:
            redis_failed(exc)
        if as_json:
            data = record.as_dict()
            if payload:
                data["payload"] = record.payload
            data["timeline"] = timeline
            click.echo(json.dumps(data, sort_keys=True, default=str))
            continue
        if index:
            click.echo("")
        click.echo(
            render_order(record, now=time.time(), payload=payload, order=settings.handlers),
            color=colour(),
        )
        click.echo("timeline:")
        for line in timeline_lines(timeline):
            click.echo(f"  {line}")


@click.command()
@click.argument("order_id")
@click.option("--integration", "integration_id", required=True, help="The order's integration.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, order_id: str, integration_id: str, yes: bool) -> None:
    """Forget an order, so that the next sweep dispatches it again (if still OPEN).

    Removes it from the seen store together with its RQ job and its step records: its
    handlers all run again. Refused while a worker is running its job.
    """
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    try:
        records = describe_order(
            redis, settings.namespace, settings.queue, order_id, [integration_id]
        )
        if not records:
            fail(f"order {order_id} is not known in integration {integration_id}", code=1)
        if not yes:
            click.echo(describe_forget(records[0], now=time.time()))
            try:
                confirmed = click.confirm("Forget it?", default=False)
            except click.Abort:
                confirmed = False
            if not confirmed:
                fail("not confirmed: nothing was changed", code=1)
        result = forget_order(
            redis,
            settings.namespace,
            settings.queue,
            integration_id,
            order_id,
            handlers=settings.handlers,
        )
    except ForgetRefused as exc:
        fail(str(exc), code=1)
    except RedisError as exc:
        redis_failed(exc)
    removed = ["seen mark" if result.was_seen else "no seen mark"]
    if result.job_status is not None:
        removed.append(f"{result.job_status} job")
    if result.steps:
        removed.append(f"{result.steps} step record(s)")
    if result.effects:
        removed.append(f"{result.effects} effect record(s)")
    if result.result is not None:
        removed.append(f"its {result.result} result")
    if result.unconfirmed:
        removed.append("its webhook delivery waiting for Kombo's confirmation")
    click.echo(
        f"forgot order {order_id} (integration {integration_id}): removed {', '.join(removed)}; "
        "the next sweep dispatches it again if it is still OPEN"
    )


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID|ORDER_ID]...")
@click.option("--all-failed", is_flag=True, help="Re-queue every failed job of the queue.")
@click.option(
    "--results",
    "results_",
    is_flag=True,
    help="Retry failed result writes instead (all, or the ORDER_IDs named; same body).",
)
@click.option(
    "--integration", "integration_id", metavar="ID", help="With --results: only this integration."
)
@click.pass_context
def retry(
    ctx: click.Context,
    job_ids: tuple[str, ...],
    all_failed: bool,
    results_: bool,
    integration_id: str | None,
) -> None:
    """Re-queue failed jobs; their completed steps are skipped when they run again.

    Each job gets a fresh set of DISPATCHER_MAX_RETRIES retries. With --results: queue the
    failed result writes again (every one, or those of the ORDER_IDs named).
    """
    if results_:
        if all_failed:
            fail("--results and --all-failed: give one, not both")
        _retry_results(ctx, integration_id, list(job_ids) or None)
        return
    if integration_id is not None:
        fail("--integration: only with --results")
    if bool(job_ids) == all_failed:
        fail("name failed job ids, or give --all-failed (not both)")
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    result = retry_failed(redis, settings.queue, job_ids or None, max_retries=settings.max_retries)
    for job_id, description in result.requeued:
        click.echo(f"re-queued {job_id} ({description})")
    if not result.requeued and not result.missing:
        click.echo("no failed jobs")
    for job_id in result.missing:
        click.echo(f"dispatcher: error: job {job_id} is not in the failed registry", err=True)
    sys.exit(1 if result.missing else 0)


def _retry_results(
    ctx: click.Context, integration_id: str | None, order_ids: list[str] | None
) -> None:
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    try:
        receipts = retry_failed_writes(
            redis, settings, integration_id=integration_id, order_ids=order_ids
        )
    except RedisError as exc:
        redis_failed(exc)
    click.echo(f"requeued {_text.plural(len(receipts), 'failed result write')}")
    for receipt in receipts:
        click.echo(
            f"order {escape_controls(receipt.order_id)} "
            f"({escape_controls(receipt.integration_id)}): submission {receipt.submission_id}"
        )


@click.command()
@click.pass_context
def handlers(ctx: click.Context) -> None:
    """List every installed handler, and check the configured chain."""
    settings = settings_of(ctx)
    discovered = discover_handlers()
    # Each configured handler is created on its own, so that its setup error (a setting of
    # its own missing) shows in its row, not only as one line about the chain.
    problems: dict[str, str] = {}
    for name in settings.handlers:
        if name in discovered:
            try:
                load_handlers([name], discovered)
            except HandlerConfigError as exc:
                problems[name] = str(exc)
    rows = []
    for name in sorted(discovered):
        entry = discovered[name]
        position = str(settings.handlers.index(name) + 1) if name in settings.handlers else "-"
        problem = entry.error or problems.get(name, "").removeprefix(f"handler {name!r}: ")
        detail = f"BROKEN: {problem}" if problem else entry.distribution
        rows.append([name, position, detail])
    for line in _text.table(["HANDLER", "CONFIGURED", "DISTRIBUTION / PROBLEM"], rows, right=set()):
        click.echo(line)
    missing = [name for name in settings.handlers if name not in discovered]
    try:
        load_handlers(missing, discovered)  # not installed: raises before creating anything
    except HandlerConfigError as exc:
        fail(str(exc))
    if problems:
        first, *rest = problems.values()
        fail(first + (f" (and {_text.plural(len(rest), 'more broken handler')})" if rest else ""))
    click.echo(f"chain: {' -> '.join(settings.handlers)}")


@click.command()
@click.option("--integration", "integration_id", required=True, help="The integration id.")
@click.option(
    "--handlers",
    "handler_names",
    required=True,
    metavar="NAME,…",
    help="The steps to run, comma-separated (each in DISPATCHER_HANDLERS).",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]),
    default=None,
    help="Only orders created after this (UTC), e.g. 2026-11-01.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Also orders whose named steps are completed: run those steps again.",
)
@click.pass_context
def replay(
    ctx: click.Context,
    integration_id: str,
    handler_names: str,
    since: datetime | None,
    force: bool,
) -> None:
    """Run only the named steps on the dispatched orders of an integration still OPEN.

    The OPEN orders are read from Kombo; each one the dispatcher dispatched gets a job that
    runs only those steps, with the usual step records and idempotency keys (a step already
    completed for an order is skipped). Orders never dispatched are left to the poller.
    """
    settings = settings_of(ctx)
    names = list(dict.fromkeys(name.strip() for name in handler_names.split(",") if name.strip()))
    if not names:
        fail("--handlers: give at least one handler name")
    unknown = [name for name in names if name not in settings.handlers]
    if unknown:
        fail(
            f"--handlers: {', '.join(unknown)} not in DISPATCHER_HANDLERS "
            f"({', '.join(settings.handlers)}): the workers would refuse the jobs"
        )
    redis = connect_redis(settings)
    ledger = make_ledger(settings, redis)
    try:
        with kombo_client(settings) as client:
            result = replay_orders(
                ledger,
                client,
                integration_id,
                names,
                since=since.replace(tzinfo=UTC) if since is not None else None,
                page_size=settings.page_size,
                max_pages=settings.max_pages_per_sweep,
                force=force,
            )
    except KomboError as exc:
        fail(f"integration {integration_id}: {kombo_failure(exc)}", code=1)
    except RedisError as exc:
        redis_failed(exc)
    steps = ", ".join(names)
    click.echo(
        f"{_text.plural(len(result.queued), 'order')} of {integration_id} queued for "
        f"{steps} on {settings.queue} ({result.open_orders} OPEN)"
    )
    for label, ids in (
        (f"with {steps} completed, skipped (--force runs it again)", result.already_done),
        ("never dispatched, left to the poller (it runs the whole chain)", result.not_dispatched),
        ("job still in progress, skipped (it runs the chain itself)", result.in_progress),
        ("rejected at the webhook, skipped", result.rejected),
        ("listed more than once by Kombo, queued once", result.duplicates),
    ):
        if ids:
            click.echo(f"  {len(ids)} {label}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}")
    for problem in result.invalid:
        click.echo(f"  invalid, skipped: {problem}")
