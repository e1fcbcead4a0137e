"""``dispatcher reconcile``: one pass of the reconciler (dispatcher/store/reconcile.py) now,
printing what it found and did. The pollers run the same pass every
DISPATCHER_RECONCILE_INTERVAL seconds by themselves."""

from __future__ import annotations

import json

import click
from redis.exceptions import RedisError

from dispatcher import _text
from dispatcher.cli._common import connect_redis, make_ledger, redis_failed, settings_of
from dispatcher.store.reconcile import GRACE_SECONDS, Reconciler, ReconcileReport
from dispatcher.store.reconcile_state import record
from dispatcher.store.results import Outbox

__all__ = ["reconcile"]


@click.command()
@click.option("--integration", "integration_id", help="Only this integration's orders and results.")
@click.option("--dry-run", is_flag=True, help="Say what would be put back; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: README).")
@click.option("--grace", type=click.FloatRange(0), default=GRACE_SECONDS, hidden=True)
@click.pass_context
def reconcile(
    ctx: click.Context, integration_id: str | None, dry_run: bool, as_json: bool, grace: float
) -> None:
    """Put back every dispatched order (and pending result) found in no queue or registry."""
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    reconciler = Reconciler(
        make_ledger(settings, redis),
        Outbox.from_settings(redis, settings),
        settings.handlers,
        grace=grace,
    )
    try:
        report = reconciler.run(integration_id=integration_id, dry_run=dry_run)
        record(redis, reconciler.keys, report)
    except RedisError as exc:
        redis_failed(exc)
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
        return
    click.echo(_summary(report))
    for finding in report.findings:
        click.echo(f"  {finding.line()}")


def _summary(report: ReconcileReport) -> str:
    checked = (
        f"{_text.plural(report.orders_checked, 'order')} and "
        f"{_text.plural(report.results_checked, 'pending result')} checked "
        f"in {report.duration:.1f} s"
    )
    if not report.findings:
        return f"{checked}: every one is queued, running, scheduled, done or failed"
    verb = "would put back" if report.dry_run else "put back"
    return (
        f"{checked}; {verb} {len(report.findings)} (dry run: nothing changed)"
        if (report.dry_run)
        else f"{checked}; {verb} {len(report.findings)}"
    )
