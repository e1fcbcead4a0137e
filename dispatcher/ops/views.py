"""Text views of the operator commands: ``dispatcher status`` and ``show``, and the question
``forget`` asks. Styled with ANSI colours; ``click.echo`` strips them off a terminal."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from dispatcher import _text
from dispatcher.ops.order_record import OrderRecord
from dispatcher.ops.status import (
    FAILING,
    NEVER_SWEPT,
    OK,
    STALE,
    IntegrationStatus,
    QueueStatus,
    Snapshot,
    StepCounts,
    WorkerStatus,
)
from dispatcher.poller.telemetry import RequestSeries
from dispatcher.untrusted import escape_controls, untrusted_text

__all__ = ["describe_forget", "render_order", "render_status"]

_STATE_COLOURS = {OK: "green", FAILING: "red", STALE: "yellow", NEVER_SWEPT: "yellow"}


def render_status(snapshot: Snapshot, *, redis_url: str = "") -> str:
    """The one-screen text view. Styled with ANSI colours: the caller strips them off a
    non-terminal (``click.echo`` does)."""
    now = snapshot.taken_at
    where = f" · redis {redis_url}" if redis_url else ""
    lines = [
        click.style(f"dispatcher status · namespace {snapshot.namespace}{where}", bold=True)
        + f" · {_text.timestamp(now)}",
        "",
    ]
    if snapshot.problems:
        lines.append(
            click.style(
                f"ATTENTION: {_text.plural(len(snapshot.problems), 'problem')}", fg="red", bold=True
            )
        )
        lines.extend(f"  - {problem}" for problem in snapshot.problems)
    else:
        lines.append(click.style("OK: orders are flowing", fg="green", bold=True))
    lines.extend(f"  notice: {notice}" for notice in snapshot.server.notices)
    lines.append("")
    lines.extend(_queue_lines(snapshot.queues, now))
    lines.append("")
    lines.extend(_worker_lines(snapshot.workers, now))
    lines.append("")
    lines.append(
        f"ORDERS  {snapshot.orders_seen} remembered · {snapshot.orders_dispatched} dispatched"
    )
    lines.append(_reconcile_line(snapshot.reconcile, now))
    lines.append(_unconfirmed_line(snapshot))
    lines.append("")
    lines.extend(_integration_lines(snapshot.integrations, now))
    lines.append("")
    lines.extend(_handler_lines(snapshot.handlers))
    if snapshot.kombo_requests:
        lines.append("")
        lines.extend(_request_lines(snapshot.kombo_requests))
    return "\n".join(lines)


def _unconfirmed_line(snapshot: Snapshot) -> str:
    """Webhook orders waiting for Kombo's confirmation (dispatcher/web/confirm.py)."""
    waiting = snapshot.webhook_unconfirmed
    if waiting is None:
        return "WEBHOOK  orders waiting for Kombo's confirmation: unreadable (wrong key type)"
    if not waiting.count:
        return "WEBHOOK  no order waiting for Kombo's confirmation"
    oldest = "" if waiting.oldest_age is None else f", oldest {_text.duration(waiting.oldest_age)}"
    return (
        f"WEBHOOK  {_text.plural(waiting.count, 'order')} waiting for Kombo's confirmation{oldest}"
    )


def _reconcile_line(state: Mapping[str, Any] | None, now: float) -> str:
    """When the reconciler last looked, at how much, and what it put back since the start."""
    if not state or state.get("last_pass_at") is None:
        return "RECONCILE  no pass yet (the pollers run one every DISPATCHER_RECONCILE_INTERVAL)"
    last = (
        f"RECONCILE  last pass {_text.ago(state['last_pass_at'], now)}: "
        f"{_text.plural(int(state.get('last_orders_checked', 0)), 'order')}, "
        f"{_text.plural(int(state.get('last_results_checked', 0)), 'pending result')} checked "
        f"in {float(state.get('last_duration', 0.0)):.1f} s"
    )
    repaired = state.get("reconciled") or {}
    if not repaired:
        return f"{last} · nothing put back so far"
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(repaired.items()))
    return f"{last} · put back so far: {counts}"


def _queue_lines(queues: Sequence[QueueStatus], now: float) -> list[str]:
    rows = []
    for q in queues:
        age = q.oldest_queued_age(now)
        rows.append(
            [
                q.name,
                str(q.queued),
                str(q.started),
                str(q.scheduled),
                str(q.deferred),
                str(q.finished),
                click.style(str(q.failed), fg="red") if q.failed else "0",
                "-" if age is None else _text.duration(age),
            ]
        )
    header = ["QUEUE", "QUEUED", "STARTED", "SCHEDULED", "DEFERRED", "FINISHED", "FAILED"]
    return _text.table([*header, "OLDEST QUEUED"], rows, right=set(range(1, 7)))


def _worker_lines(workers: Sequence[WorkerStatus], now: float) -> list[str]:
    if not workers:
        return [f"WORKERS  {click.style('none running', fg='yellow')}"]
    rows = []
    for w in workers:
        order = "-"
        if w.current_order_id:
            order = f"{w.current_order_id} ({w.current_integration_id})"
        elif w.current_job_id:
            order = w.current_job_id
        rows.append(
            [
                w.name,
                w.state,
                ",".join(w.queues),
                f"{w.hostname or '?'}/{w.pid or '?'}",
                _text.ago(w.last_heartbeat, now),
                str(w.successful_jobs),
                str(w.failed_jobs),
                order,
            ]
        )
    header = ["WORKER", "STATE", "QUEUES", "HOST/PID", "HEARTBEAT", "DONE", "FAILED"]
    return _text.table([*header, "CURRENT ORDER"], rows, right={5, 6})


def _integration_lines(integrations: Sequence[IntegrationStatus], now: float) -> list[str]:
    if not integrations:
        return ["INTEGRATIONS  none swept yet"]
    rows = []
    for i in integrations:
        error = "-"
        if i.last_error is not None:
            error = _text.ellipsis(
                f"{i.last_error.code or 'error'}: {i.last_error.message} "
                f"({_text.ago(i.last_error.at, now)})",
                70,
            )
        state = click.style(i.state, fg=_STATE_COLOURS.get(i.state))
        if i.configured is False:
            state += " (not configured)"
        rows.append(
            [
                i.integration_id,
                state,
                _text.ago(i.last_sweep_at, now),
                "-" if i.orders_seen is None else str(i.orders_seen),
                "-" if i.orders_new is None else str(i.orders_new),
                str(i.remembered),
                str(i.error_count),
                _next_sweep(i, now),
                i.lease or "-",
                error,
            ]
        )
    header = ["INTEGRATION", "STATE", "LAST SWEEP", "SEEN", "NEW", "REMEMBERED", "ERRORS"]
    return _text.table([*header, "NEXT SWEEP", "LEASE", "LAST ERROR"], rows, right={3, 4, 5, 6})


def _next_sweep(i: IntegrationStatus, now: float) -> str:
    """When the fleet sweeps the integration next; "backoff, N failures" while it keeps failing."""
    if i.next_sweep_at is None:
        return "-"
    seconds = i.next_sweep_at - now
    when = "due" if seconds <= 0 else f"in {seconds:.0f}s"
    if i.consecutive_failures > 1:
        return f"{when} (backoff, {i.consecutive_failures} failures)"
    return when


def _handler_lines(handlers: Mapping[str, StepCounts]) -> list[str]:
    if not handlers:
        return ["HANDLERS  no steps recorded yet"]
    rows = [
        [name, str(c.completed), click.style(str(c.failed), fg="red") if c.failed else "0"]
        for name, c in handlers.items()
    ]
    return _text.table(["HANDLER", "COMPLETED", "FAILED"], rows, right={1, 2})


def _request_lines(series: Iterable[RequestSeries]) -> list[str]:
    rows = [
        [
            s.endpoint,
            s.status,
            str(s.count),
            f"{1000 * s.seconds_sum / s.count:.0f} ms" if s.count else "-",
        ]
        for s in series
    ]
    return _text.table(["KOMBO REQUEST", "STATUS", "COUNT", "MEAN"], rows, right={2, 3})


def render_order(
    record: OrderRecord, *, now: float, payload: bool = False, order: Sequence[str] = ()
) -> str:
    """The text view of ``dispatcher show``; ``order`` is the configured chain, whose steps
    are listed first (and shown as not completed when they have no record)."""
    lines = [
        click.style(f"order {record.order_id} · integration {record.integration_id}", bold=True)
    ]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<11}  {value}")

    row("seen", _when(record.seen_at, now) if record.seen_at else "no (forgotten, or never seen)")
    if record.job_status is None:
        row("job", f"{record.job_id}: gone (expired after its TTL, or forgotten)")
    else:
        colour = {"failed": "red", "finished": "green"}.get(record.job_status)
        package = f" · package {record.package_id}" if record.package_id else ""
        row("job", f"{record.job_id} · {click.style(record.job_status, fg=colour)}{package}")
        for label, when in (
            ("enqueued", record.enqueued_at),
            ("started", record.started_at),
            ("ended", record.ended_at),
            ("retry at", record.retry_at),
        ):
            if when is not None:
                row(label, _when(when, now))
        if record.attempts is not None:
            row("attempts", str(record.attempts))
        if record.worker:
            row("worker", record.worker)
    if record.trace_id:
        row("trace", record.trace_id)
    lines.extend(_step_lines(record, order, now))
    if record.last_error is not None:
        where = f"{record.last_error.handler}: " if record.last_error.handler else ""
        at = f" ({_text.ago(record.last_error_at, now)})" if record.last_error_at else ""
        row("last error", click.style(f"{where}{record.last_error.reason}", fg="red") + at)
    else:
        row("last error", "-")
    if payload:
        body = json.dumps(record.payload, indent=2, ensure_ascii=False, sort_keys=True)
        lines.append("  payload")
        # ensure_ascii=False keeps names readable, and U+2028 or a bidi override raw: escaped.
        lines.extend(f"    {escape_controls(line)}" for line in body.split("\n"))
    return "\n".join(lines)


def _step_lines(record: OrderRecord, order: Sequence[str], now: float) -> list[str]:
    done = {step.handler: step for step in record.steps}
    names = list(order)
    names += [step.handler for step in record.steps if step.handler not in order]
    if not names:
        return ["  steps        none recorded"]
    width = max(len(name) for name in names)
    lines = []
    for index, name in enumerate(names):
        label = "steps" if index == 0 else ""
        step = done.get(name)
        if step is None:
            value = f"{name:<{width}}  not completed"
        else:
            value = (
                f"{name:<{width}}  {click.style('completed', fg='green')} "
                f"{_text.ago(step.completed_at, now)}  "
                # A vendor's answer: masked (again), escaped, then cut.
                + untrusted_text(_text.compact_json(step.output, 1_000_000), 100)
            )
        lines.append(f"  {label:<11}  {value}")
    return lines


def describe_forget(record: OrderRecord, *, now: float) -> str:
    """What ``dispatcher forget`` is about to remove, asked before it does."""
    parts = [f"order {record.order_id} (integration {record.integration_id}):"]
    parts.append(f"seen {_text.ago(record.seen_at, now)}" if record.seen_at else "not seen")
    if record.job_status is not None:
        parts.append(f"job {record.job_status}")
    if record.steps:
        parts.append(f"{len(record.steps)} completed step(s)")
    return (
        " ".join(parts[:1]) + " " + ", ".join(parts[1:]) + ".\n"
        "Forgetting removes all of it (with its timeline and any result not yet written): "
        "the next sweep dispatches the order again "
        "(if it is still OPEN in Kombo) and every handler runs again."
    )


def _when(when: float, now: float) -> str:
    return f"{_text.timestamp(when)} ({_text.ago(when, now)})"
