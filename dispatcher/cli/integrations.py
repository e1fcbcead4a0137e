"""``dispatcher integrations add|remove|pause|resume|list``: the registry of integrations."""

from __future__ import annotations

import json
import time

import click

from dispatcher import _text
from dispatcher.cli._common import connect_redis, fail, settings_of
from dispatcher.poller.integrations import IntegrationRegistry, check_integration_id
from dispatcher.store.keys import Keys


@click.group()
def integrations() -> None:
    """Register, pause and list the integrations to poll (beside KOMBO_INTEGRATION_IDS)."""


def _registry(ctx: click.Context) -> IntegrationRegistry:
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    return IntegrationRegistry(redis, Keys(settings.namespace), settings.kombo_integration_ids)


def _valid_ids(ids: tuple[str, ...]) -> list[str]:
    try:
        return [check_integration_id(i) for i in ids]
    except ValueError as exc:
        fail(str(exc))


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
    """Unregister integrations (their remembered orders are kept).

    An integration that is then neither registered nor in KOMBO_INTEGRATION_IDS (such as a
    typo polled once) also loses its sweep record, so that `status` stops listing it.
    """
    registry = _registry(ctx)
    from_env = [i for i in integration_ids if i in registry.configured]
    removed = registry.remove(list(integration_ids))
    gone = [i for i in dict.fromkeys(integration_ids) if i not in registry.configured]
    dropped = registry.drop_sweep_records(gone)
    click.echo(
        f"removed {removed}"
        + (f"; dropped the sweep records of {', '.join(dropped)}" if dropped else "")
    )
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
    rows = _registry(ctx).overview(time.time())
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    table = [
        [
            r["integration_id"],
            r["source"],
            "paused" if r["paused"] else ("backoff" if r["consecutive_failures"] else "active"),
            f"{r['next_sweep_in']:.0f}s" if r["next_sweep_in"] is not None else "-",
            str(r["consecutive_failures"]),
            r["lease"] or "-",
        ]
        for r in rows
    ]
    header = ["INTEGRATION", "SOURCE", "STATE", "NEXT SWEEP", "FAILURES", "LEASE"]
    for line in _text.table(header, table, right={3, 4}):
        click.echo(line)
