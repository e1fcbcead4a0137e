"""The write-back commands: ``dispatcher result``, ``results`` and ``packages get|set``."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from typing import Any

import click
from redis import Redis
from redis.exceptions import RedisError

from dispatcher import _text
from dispatcher.cli._common import (
    confirm,
    connect_redis,
    fail,
    kombo_client,
    kombo_failure,
    or_fail,
    redis_failed,
    settings_of,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError
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
)
from dispatcher.logs import escape_controls
from dispatcher.ops.results import list_results, submit_and_wait
from dispatcher.settings import Settings
from dispatcher.store.results import STATES, FinalResultError, OutboxRecord, ResultState
from dispatcher.worker.results import WriterRuntime, results_workers_running, write_claimed


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
        # Every bad option, not the first one only: "--score: ...; --result-url: ...".
        fail("; ".join(f"{_option_of(field)}: {problem}" for field, problem in exc.problems))


def _option_of(field: str) -> str:
    """The option a result's field came from: ``--attribute #2`` for ``attributes[1]...``."""
    head, _, rest = field.partition("[")
    option = _RESULT_OPTIONS.get(head.split(".")[0], field)
    return f"{option} #{int(rest.split(']')[0]) + 1}" if rest[:1].isdigit() else option


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
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for the write to end (--no-wait: return once it is stored and queued).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait: how long to wait; the write goes on after it.",
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
    wait: bool,
    timeout: float,
) -> None:
    """Write an order's result back to Kombo, through the results outbox.

    Everything is checked before anything is stored. The result is stored in Redis and its
    write queued in one step (the same as PUT /orders/.../result); with --wait (the default)
    the command waits for the write and prints Kombo's warnings. When no results worker takes
    the write within a second, the command writes it itself, so that it works with Redis and
    Kombo alone.
    """
    body = _result_from_options(
        status, result_url, completed_at, score, max_score, attributes, attachments
    )
    settings = settings_of(ctx)
    if wait:
        or_fail(settings.require_kombo)  # the write may be done here
    redis = connect_redis(settings)
    started = time.monotonic()
    try:
        # Results workers running: leave the write to them for a moment (they take it at
        # once); none: the command writes it itself without waiting.
        grace = _WORKER_GRACE if wait and results_workers_running(settings, redis) else 0.0
        receipt, record = submit_and_wait(
            redis,
            settings,
            integration_id,
            order_id,
            body,
            completed_at_defaulted=(completed_at is None),
            wait=wait,
            timeout=min(timeout, grace),
        )
        if wait and _still_ours(record, receipt.submission_id):
            record = _write_or_wait(
                redis, settings, integration_id, order_id, started + timeout, record
            )
    except FinalResultError as exc:
        fail(str(exc), code=1)
    except InvalidResultError as exc:  # the integration id cannot be sent as its header
        fail(f"--integration: {exc.problem}")
    except RedisError as exc:
        redis_failed(exc)
    where = f"order {order_id} ({integration_id}): result {body.status}"
    if receipt.written:  # the written body again: nothing was stored, nothing to wait for
        click.echo(f"{where} already written (submission {receipt.submission_id})")
        return
    if not wait:
        done = "already submitted" if receipt.outcome == "duplicate" else "submitted"
        click.echo(f"{where} {done} ({receipt.state}, submission {receipt.submission_id})")
        return
    if record is None:
        fail(f"order {order_id}: the result vanished from Redis while waiting", code=1)
    _report(where, order_id, receipt.submission_id, record, timeout, settings, redis)


def _report(
    where: str,
    order_id: str,
    submission_id: str,
    record: OutboxRecord,
    timeout: float,
    settings: Settings,
    redis: Redis,
) -> None:
    """What ``dispatcher result --wait`` prints of the write it waited for."""
    if submission_id not in (record.submission_id, record.next_submission_id):
        click.echo(
            f"{where} replaced by a later submission ({record.status}, {record.state}, "
            f"submission {record.submission_id})"
        )
        return
    if record.state == "written":
        for warning in record.warnings:
            click.echo(f"dispatcher: kombo warning: {warning}", err=True)
        lost = " (Kombo's answer was lost; read back)" if record.lost_answer else ""
        click.echo(f"{where} written{lost}")
    elif record.state == "failed":
        fail(f"order {order_id}: result write failed: {record.reason}", code=1)
    else:
        # The write keeps its job (queued or scheduled): whoever runs the results queue next
        # takes it. Say who that is.
        who = (
            "the results workers keep trying"
            if results_workers_running(settings, redis)
            else "no results worker is running: `dispatcher worker --results` will write it"
        )
        behind = record.submission_id != submission_id
        waiting = " (waiting behind a partial result)" if behind else ""
        click.echo(
            f"{where} still pending after {timeout:g}s{waiting} (attempts {record.attempts}, "
            f"last error {record.last_error or 'none'}); {who}"
        )


# How long ``dispatcher result --wait`` leaves a queued write to the results workers before
# it writes it itself.
_WORKER_GRACE = 1.0


def _still_ours(record: OutboxRecord | None, submission_id: str) -> bool:
    # Pending, as the body on its way or the one waiting behind a partial result.
    return (
        record is not None
        and record.state == "pending"
        and submission_id in (record.submission_id, record.next_submission_id)
    )


def _write_or_wait(
    redis: Redis,
    settings: Settings,
    integration_id: str,
    order_id: str,
    deadline: float,
    record: OutboxRecord | None,
) -> OutboxRecord | None:
    """Until the write ends or the deadline: claim its job and write it here when no results
    worker took it (retries too, when no results worker runs), else watch the outbox."""
    runtime = WriterRuntime.from_settings(settings, redis)
    submission_id = record.submission_id if record is not None else ""
    # The command prints the outcome itself: the writer's log lines would say it twice.
    writer_log = logging.getLogger("dispatcher.results")
    was_disabled, writer_log.disabled = writer_log.disabled, True
    try:
        return _work(runtime, integration_id, order_id, submission_id, deadline, record)
    finally:
        writer_log.disabled = was_disabled


def _work(
    runtime: WriterRuntime,
    integration_id: str,
    order_id: str,
    submission_id: str,
    deadline: float,
    record: OutboxRecord | None,
) -> OutboxRecord | None:
    settings, redis = runtime.settings, runtime.redis
    with runtime.writer.client:
        while _still_ours(record, submission_id) and time.monotonic() < deadline:
            alone = not results_workers_running(settings, redis)
            if write_claimed(runtime, integration_id, order_id, scheduled=alone) is None:
                time.sleep(0.05 if alone else 0.2)
            record = runtime.writer.outbox.get(integration_id, order_id)
    return record


@click.command()
@click.option(
    "--state",
    type=click.Choice(["pending", "failed", "written"]),
    default=None,
    help="Only results in this state (default: all three).",
)
@click.option("--integration", "integration_id", metavar="ID", help="Only this integration.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line.")
@click.option(
    "--limit", type=click.IntRange(1), default=1000, show_default=True, help="At most N results."
)
@click.pass_context
def results(
    ctx: click.Context, state: str | None, integration_id: str | None, as_json: bool, limit: int
) -> None:
    """List the results of the outbox: pending, failed, written (oldest first)."""
    settings = settings_of(ctx)
    redis = connect_redis(settings)
    chosen: ResultState | None = None
    for one in STATES:
        if one == state:
            chosen = one
    try:
        records = list_results(
            redis, settings, state=chosen, integration_id=integration_id, limit=limit
        )
    except RedisError as exc:
        redis_failed(exc)
    if as_json:
        for record in records:
            click.echo(json.dumps(record.as_dict(), sort_keys=True))
        return
    if not records:
        click.echo("no results")
        return
    now = time.time()
    rows = [
        [
            record.state,
            escape_controls(record.integration_id),
            escape_controls(record.order_id),
            escape_controls(record.status),
            _text.ago(record.submitted_at, now),
            str(record.attempts),
            _result_detail(record),
        ]
        for record in records
    ]
    header = ["STATE", "INTEGRATION", "ORDER", "STATUS", "SUBMITTED", "ATTEMPTS", "DETAIL"]
    for line in _text.table(header, rows, right={5}):
        click.echo(line)


def _result_detail(record: OutboxRecord) -> str:
    if record.state == "failed":
        return escape_controls(record.reason or "")
    if record.state == "written":
        parts = [f"{len(record.warnings)} warning(s)"] if record.warnings else []
        if record.lost_answer:
            parts.append("answer lost, read back")
        return ", ".join(parts)
    return escape_controls(f"last error: {record.last_error}") if record.last_error else ""


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
