"""Why a job failed: the handler and the reason, read back from RQ's exception text."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Failure", "parse_failure"]

# dispatcher.jobs.HandlerFailed's message; the integration id may contain ":" and ")".
_HANDLER_FAILED = re.compile(
    r"handler (?P<handler>\S+) failed on order (?P<order>\S+) "
    r"\(integration (?P<integration>.+?)\): (?P<reason>.*)$"
)


@dataclass(frozen=True, slots=True)
class Failure:
    """The handler that failed (``None`` when the job failed outside any handler: a worker
    that died, RQ's job timeout, a payload that no longer validates) and the one-line reason."""

    handler: str | None
    reason: str


def parse_failure(exc_string: str | None) -> Failure:
    """Read the handler and reason from RQ's stored traceback text (or any exception line).

    The last non-blank line of a traceback is the exception that failed the job; for
    :class:`dispatcher.jobs.HandlerFailed` it names the handler. Anything else is reported as
    that line, the exception type included.
    """
    lines = [line.strip() for line in (exc_string or "").splitlines() if line.strip()]
    if not lines:
        return Failure(None, "unknown (no error was recorded)")
    last = lines[-1]
    # "dispatcher.jobs.HandlerFailed: handler ..." or a bare "handler ..." message.
    _, sep, message = last.partition("HandlerFailed: ")
    match = _HANDLER_FAILED.search(message if sep else last)
    if match is not None:
        return Failure(match["handler"], match["reason"].strip() or "(no reason given)")
    return Failure(None, last)
