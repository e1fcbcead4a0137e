"""What is wrong in a status snapshot, and the lines (and console links) that say so.

Each problem is one line: :class:`Problem` carries the CLI's wording, the console's and the
console page that explains it. :func:`with_problems` fills :attr:`Snapshot.problems`.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlencode

from dispatcher import _text
from dispatcher.logs import escape_controls
from dispatcher.ops.status.model import (
    FAILING,
    NEVER_SWEPT,
    STALE,
    IntegrationStatus,
    Snapshot,
    Unconfirmed,
)
from dispatcher.store.connection import ServerCheck

__all__ = ["BACKLOG_AGE", "FIRST_SWEEP_GRACE", "Problem", "with_problems"]

BACKLOG_AGE = 300.0
"""Seconds the oldest queued order may wait before ``status`` calls it a problem."""


class Problem(str):
    """One problem line. As a string it is the CLI's line, with the command that looks
    further (``text: cli``); the console shows ``console`` (``text`` and words for a person
    at a browser) linked to ``page``, the console page that explains it ("" for none)."""

    text: str
    cli: str
    console: str
    page: str

    def __new__(cls, text: str, *, cli: str = "", console: str = "", page: str = "") -> Problem:
        line = super().__new__(cls, f"{text}: {cli}" if cli else text)
        line.text, line.cli, line.page = text, cli, page
        line.console = f"{text}: {console}" if console else text
        return line

    @classmethod
    def linked(cls, line: str, page: str) -> Problem:
        """``line`` (a plain string or a Problem) linked to the console's ``page``."""
        if not isinstance(line, Problem):
            return cls(line, page=page)
        console = line.console.removeprefix(line.text).removeprefix(": ")
        return cls(line.text, cli=line.cli, console=console, page=page)


def _integration_page(integration_id: str) -> str:
    return f"/console/integrations?{urlencode({'q': integration_id})}"


def _unconfirmed_problem(unconfirmed: Unconfirmed) -> Problem | None:
    count, oldest_age = unconfirmed.count, unconfirmed.oldest_age
    if not count or oldest_age is None or oldest_age <= BACKLOG_AGE:
        return None
    return Problem(
        f"{_text.plural(count, 'webhook order')} waiting for Kombo to confirm "
        f"{'it' if count == 1 else 'them'} OPEN, the oldest for "
        f"{_text.duration(oldest_age)}",
        cli="is Kombo answering? see `dispatcher web`'s log",
        console="is Kombo answering? see the web process's log",
        page="/#webhooks",
    )


def _result_problems(snapshot: Snapshot, stale_after: float) -> list[str]:
    problems: list[str] = []
    stale = snapshot.stale.problem(stale_after) if snapshot.stale else None
    if stale:
        problems.append(Problem(stale, page="/console/results#stale"))
    if snapshot.results and snapshot.results.get("failed"):
        failed = _text.plural(snapshot.results["failed"], "result")
        problems.append(
            Problem(
                f"{failed} failed to be written to Kombo",
                cli="see `dispatcher results --state failed`",
                page="/console/results",
            )
        )
    return problems


def _integration_problems(snapshot: Snapshot, integration: IntegrationStatus) -> list[str]:
    now = snapshot.taken_at
    problems: list[str] = []
    # Ids come from Kombo and webhooks: a problem stays one line whatever they hold.
    name = f"integration {escape_controls(integration.integration_id)}"
    if integration.configured is False and not integration.broken_keys:
        # Neither configured nor registered (a typo polled once, a retired customer):
        # nobody polls it, so its last sweep is history, not a problem. Listed still;
        # `dispatcher integrations remove` drops its sweep record.
        return problems
    error = integration.last_error
    if integration.broken_keys:
        # The broken key is the news; a recorded error or "never swept" only echoes it.
        problems.extend(
            f"{name}: {b.problem}"
            for b in snapshot.broken_keys
            if b.integration_id == integration.integration_id
        )
    elif integration.state == FAILING and error is not None:
        errors = _text.plural(integration.error_count, "error")
        problems.append(
            f"{name}: sweep failing: {error.code or 'error'}: {error.message} "
            f"({_text.ago(error.at, now)}, {errors} so far)"
        )
    if integration.invalid_orders and integration.last_invalid_order is not None:
        invalid = integration.last_invalid_order
        problems.append(
            f"{name}: {_text.plural(integration.invalid_orders, 'invalid order')} not "
            f"dispatched: {invalid.message} ({_text.ago(invalid.at, now)})"
        )
    if integration.state == NEVER_SWEPT and not _first_sweep_pending(integration, now):
        problems.append(
            Problem(
                f"{name}: never swept",
                cli="is `dispatcher poll` running?",
                console="is the poller running?",
            )
        )
    elif integration.state == STALE:
        problems.append(
            Problem(
                f"{name}: no successful sweep for {_text.ago(integration.last_sweep_at, now)}",
                cli="is `dispatcher poll` running?",
                console="is the poller running?",
            )
        )
    # Each line of this integration links to its row on the integrations page.
    page = _integration_page(integration.integration_id)
    linked: list[str] = [Problem.linked(p, page) for p in problems]
    return linked


# A poller that has just started has scheduled every integration's first sweep within
# seconds (poller/schedule.py): until this long past that due time, or while a poller holds
# the integration's lease, "never swept" is a fresh deployment, not a stopped poller.
FIRST_SWEEP_GRACE = 60.0


def _first_sweep_pending(integration: IntegrationStatus, now: float) -> bool:
    if integration.lease is not None:
        return True
    due = integration.next_sweep_at
    return due is not None and now - due < FIRST_SWEEP_GRACE


def _server_problems(server: ServerCheck) -> list[str]:
    refusal = [server.refusal] if server.refusal is not None else []
    return [*refusal, *server.problems]


def with_problems(snapshot: Snapshot, stale_after: float = 14 * 86400.0) -> Snapshot:
    now = snapshot.taken_at
    problems: list[str] = [b.problem for b in snapshot.broken_keys if b.integration_id is None]
    problems.extend(_server_problems(snapshot.server))
    for integration in snapshot.integrations:
        problems.extend(_integration_problems(snapshot, integration))
    problems.extend(_result_problems(snapshot, stale_after))
    waiting = (
        _unconfirmed_problem(snapshot.webhook_unconfirmed) if snapshot.webhook_unconfirmed else None
    )
    if waiting is not None:
        problems.append(waiting)
    if snapshot.reconcile and snapshot.reconcile.get("last_error"):
        problems.append(f"the last reconcile pass failed: {snapshot.reconcile['last_error']}")
    if not snapshot.integrations:
        problems.append(
            Problem(
                "no integration swept yet: set KOMBO_INTEGRATION_IDS and run the poller",
                page="/console/integrations",
            )
        )
    for queue in snapshot.queues:
        listening = [w for w in snapshot.workers if queue.name in w.queues]
        noun = "order" if queue.kind == "orders" else "result"
        if queue.queued and not listening:
            problems.append(
                Problem(
                    f"{_text.plural(queue.queued, noun)} queued on {queue.name} "
                    f"and no {'' if queue.kind == 'orders' else 'results '}worker running",
                    page="/#workers",
                )
            )
        age = queue.oldest_queued_age(now)
        if age is not None and age > BACKLOG_AGE:
            problems.append(
                Problem(
                    f"queue {queue.name}: oldest queued {noun} waiting {_text.duration(age)}",
                    page="/#workers",
                )
            )
        if queue.failed:
            latest = (
                f", latest {_text.ago(queue.last_failed_at, now)}" if queue.last_failed_at else ""
            )
            problems.append(
                Problem(
                    f"{_text.plural(queue.failed, 'failed job')} on {queue.name}{latest}",
                    cli="see `dispatcher failed`",
                    page="/console/failures" if queue.kind == "orders" else "",
                )
            )
    return dataclasses.replace(snapshot, problems=tuple(problems))
