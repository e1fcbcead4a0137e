"""The write-back commands: ``dispatcher result`` and ``dispatcher packages get|set``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
from redis.exceptions import RedisError

from dispatcher.cli._common import (
    confirm,
    connect_redis,
    fail,
    kombo_client,
    kombo_failure,
    settings_of,
)
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
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys


class IsoDateTime(click.ParamType[datetime]):
    """An ISO 8601 date-time, as :meth:`datetime.fromisoformat` reads it (offsets, ``Z``,
    fractions of a second). ``click.DateTime`` takes a list of strptime formats instead, and
    would refuse some of what this option has always accepted."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except (TypeError, ValueError):
            self.fail(f"not an ISO 8601 date-time: {value!r}", param, ctx)


# The CLI option behind each field of a result, for Kombo's and the model's error messages.
_RESULT_OPTIONS = {
    "status": "--status",
    "result_url": "--result-url",
    "completed_at": "--completed-at",
    "score": "--score",
    "max_score": "--max-score",
    "attributes": "--attribute",
    "attachments": "--attachment",
}


def _result_from_options(
    status: str,
    result_url: str,
    completed_at: datetime | None,
    score: float | None,
    max_score: float | None,
    attributes: tuple[str, ...],
    attachments: tuple[str, ...],
) -> AssessmentResult:
    """Build the result from options click has typed; what click cannot check (options that
    go together, LABEL=VALUE, the files) is one line naming the option."""
    if (score is None) != (max_score is None):
        fail("--score and --max-score go together: give both or neither")
    text_attributes: list[dict[str, str]] = []
    for item in attributes:
        label, sep, value = item.partition("=")
        if not sep or not label.strip():
            fail(f"--attribute: expected LABEL=VALUE, got {item!r}")
        text_attributes.append({"type": "TEXT", "label": label.strip(), "value": value})
    if len(attachments) > MAX_ATTACHMENTS:
        fail(f"--attachment: at most {MAX_ATTACHMENTS} attachments, got {len(attachments)}")
    files = []
    for path in attachments:
        try:
            files.append(attachment_from_file(path))
        except InvalidResultError as exc:
            fail(f"--attachment {path}: {exc.problem}")
    try:
        return build_result(
            status=status,
            result_url=result_url,
            completed_at=completed_at,
            attributes=text_attributes,
            attachments=files,
            score=score,
            max_score=max_score,
        )
    except InvalidResultError as exc:
        head, _, rest = exc.field.partition("[")
        option = _RESULT_OPTIONS.get(head.split(".")[0], exc.field)
        where = f"{option} #{int(rest.split(']')[0]) + 1}" if rest[:1].isdigit() else option
        fail(f"{where}: {exc.problem}")


@click.command()
@click.argument("order_id", required=True)
@click.option(
    "--integration", "integration_id", metavar="ID", required=True, help="The order's integration."
)
@click.option(
    "--status",
    type=click.Choice(["COMPLETED", "CANCELLED"], case_sensitive=False),
    required=True,
    help="The order's final status.",
)
@click.option(
    "--result-url", metavar="URL", required=True, help="Where the customer sees the full result."
)
@click.option("--completed-at", type=IsoDateTime(), help="ISO 8601 date-time; default: now.")
@click.option("--score", type=float, metavar="S", help="Overall score (with --max-score).")
@click.option("--max-score", type=float, metavar="M", help="Highest possible score (with --score).")
@click.option(
    "--attribute", "attributes", multiple=True, metavar="LABEL=VALUE", help="A text attribute."
)
@click.option(
    "--attachment",
    "attachments",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help=f"A file to attach (at most {MAX_ATTACHMENTS}).",
)
@click.pass_context
def result(
    ctx: click.Context,
    order_id: str,
    integration_id: str,
    status: str,
    result_url: str,
    completed_at: datetime | None,
    score: float | None,
    max_score: float | None,
    attributes: tuple[str, ...],
    attachments: tuple[str, ...],
) -> None:
    """Write an order's result back to Kombo, and mark the order finished.

    Everything is checked before anything is sent; Kombo's warnings are printed.
    """
    body = _result_from_options(
        status, result_url, completed_at, score, max_score, attributes, attachments
    )
    settings = settings_of(ctx)
    client = kombo_client(settings)
    redis = connect_redis(settings)  # reachable before anything is written to Kombo
    with client:
        try:
            warnings = client.put_result(integration_id, order_id, body)
        except KomboError as exc:
            fail(f"order {order_id}: {kombo_failure(exc)}", code=1)
    for warning in warnings:
        click.echo(f"dispatcher: kombo warning: {warning}", err=True)
    try:
        record_result(redis, Keys(settings.namespace), integration_id, order_id, body.status)
    except RedisError as exc:
        fail(f"order {order_id}: result written to Kombo, but not recorded in Redis: {exc}", code=1)
    click.echo(f"order {order_id} ({integration_id}): result {body.status} written")


def _package_targets(settings: Settings, integration_id: str | None, all_: bool) -> list[str]:
    if integration_id and all_:
        fail("--integration and --all: give one, not both")
    if integration_id:
        return [integration_id]
    if not all_:
        fail("--integration ID or --all: required (which integrations to address)")
    if not settings.kombo_integration_ids:
        fail("KOMBO_INTEGRATION_IDS: not set (--all addresses every configured integration)")
    return list(settings.kombo_integration_ids)


@click.group()
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
    settings = settings_of(ctx)
    targets = _package_targets(settings, integration_id, all_)
    found: dict[str, Any] = {}
    failed = False
    with kombo_client(settings) as client:
        for target in targets:
            try:
                listed = client.get_packages(target)
            except KomboError as exc:
                click.echo(f"dispatcher: error: {kombo_failure(exc)}", err=True)
                failed = True
                continue
            found[target] = {"packages": [package.model_dump(mode="json") for package in listed]}
    if found:
        out = found if all_ else found[targets[0]]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    sys.exit(1 if failed else 0)


@packages.command("set")
@click.argument("file", required=True, type=click.Path(dir_okay=False))
@click.option("--integration", "integration_id", metavar="ID", help="One integration.")
@click.option("--all", "all_", is_flag=True, help="Every integration in KOMBO_INTEGRATION_IDS.")
@click.option("--yes", is_flag=True, help="Replace without asking.")
@click.pass_context
def packages_set(
    ctx: click.Context, file: str, integration_id: str | None, all_: bool, yes: bool
) -> None:
    """Replace the package list with FILE (JSON, or TOML with a .toml name).

    Shows what is added, changed and marked deleted in each integration, then asks (unless
    --yes). Packages left out of FILE are marked deleted by Kombo.
    """
    settings = settings_of(ctx)
    targets = _package_targets(settings, integration_id, all_)
    try:
        wanted = load_packages(file)
    except InvalidPackagesError as exc:
        fail(str(exc))
    with kombo_client(settings) as client:
        changing = _show_package_diffs(_current_diffs(client, targets, wanted))
        if not changing:
            click.echo("nothing to change")
            return
        if not yes and not confirm(f"Replace the package list of {len(changing)} integration(s)?"):
            fail("aborted: nothing changed", code=1)
        failed = _replace_packages(client, changing, wanted)
    if failed:
        fail(f"{failed} of {len(changing)} integration(s) not updated", code=1)


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
            errors.append(kombo_failure(exc))
    if errors:
        for error in errors:
            click.echo(f"dispatcher: error: {error}", err=True)
        fail("could not read the current packages: nothing changed", code=1)
    return diffs


def _replace_packages(client: KomboClient, targets: list[str], wanted: list[Package]) -> int:
    """PUT the list to each integration; return how many failed (each reported)."""
    failed = 0
    for target in targets:
        try:
            warnings = client.set_packages(target, wanted)
        except KomboError as exc:
            click.echo(f"dispatcher: error: {kombo_failure(exc)}", err=True)
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
