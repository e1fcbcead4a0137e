"""Why a job failed: the handler and the reason, read back from RQ's exception text.

A reason is text from a handler, often a vendor's error body: attacker-controlled and of any
size, possibly echoing a secret the handler sent. :func:`clean_reason` makes it fit to store
and print (secrets masked, one line, at most ``MAX_REASON_LENGTH`` characters);
:func:`clean_traceback` does the same for the traceback RQ stores with a failed job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.redact import scrub
from dispatcher.untrusted import untrusted_text

__all__ = [
    "MAX_REASON_LENGTH",
    "MAX_TRACEBACK_LENGTH",
    "Failure",
    "clean_reason",
    "clean_traceback",
    "job_timeout_reason",
    "parse_failure",
]

# Enough for any useful message; an error body can be megabytes.
MAX_REASON_LENGTH = 500
# RQ keeps the traceback with the job and in its results stream, once per failed attempt.
MAX_TRACEBACK_LENGTH = 20_000
_MAX_TRACEBACK_LINE = 2_000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_reason(text: str, *, personal: bool = False) -> str:
    """``text`` as :func:`dispatcher.untrusted.untrusted_text` makes it: registered secrets
    masked (then, with ``personal``, e-mail addresses and phone numbers), control characters
    escaped (one line), cut to ``MAX_REASON_LENGTH`` characters."""
    return untrusted_text(text, MAX_REASON_LENGTH, personal=personal)


def clean_traceback(text: str) -> str:
    """A traceback with registered secrets masked, long lines cut, and its middle left out
    when still over ``MAX_TRACEBACK_LENGTH``; its last line (the exception) is kept."""
    lines = [_cut(line, _MAX_TRACEBACK_LINE) for line in scrub(text).split("\n")]
    if sum(len(line) + 1 for line in lines) <= MAX_TRACEBACK_LENGTH:
        return "\n".join(lines)
    head: list[str] = []
    tail: list[str] = []
    budget = MAX_TRACEBACK_LENGTH // 4
    for line in lines:
        if budget < len(line) + 1:
            break
        head.append(line)
        budget -= len(line) + 1
    budget = MAX_TRACEBACK_LENGTH - MAX_TRACEBACK_LENGTH // 4 - 100
    for line in reversed(lines[len(head) :]):
        if budget < len(line) + 1:
            break
        tail.insert(0, line)
        budget -= len(line) + 1
    cut = len(lines) - len(head) - len(tail)
    return "\n".join([*head, f"... ({cut} lines left out) ...", *tail])


# dispatcher.worker.jobs.HandlerFailed's message, matched from its start only: the ids in it come
# from Kombo and may hold spaces, ":", ")" or a whole fake "handler ... failed" line. The
# handler name (from the operator's settings) is always right; the reason is, unless an id
# holds "): ".
_HANDLER_FAILED = re.compile(
    r"handler (?P<handler>\S+) failed on order (?P<order>.*?) "
    r"\(integration (?P<integration>.*?)\): (?P<reason>.*)$"
)
_HANDLER_FAILED_TYPE = "dispatcher.worker.jobs.HandlerFailed: "


@dataclass(frozen=True, slots=True)
class Failure:
    """The handler that failed (``None`` when the job failed outside any handler: a worker
    that died, RQ's job timeout, a payload that no longer validates) and the one-line reason
    (cleaned: see :func:`clean_reason`)."""

    handler: str | None
    reason: str

    def __post_init__(self) -> None:
        # Also for records stored before reasons were cleaned, and by a plain `rq worker`.
        object.__setattr__(self, "reason", clean_reason(self.reason))


# RQ's own line when a forked work horse runs past the job's timeout (SIGALRM).
_RQ_JOB_TIMEOUT = re.compile(
    r"^(?:rq\.timeouts\.)?JobTimeoutException: Task exceeded maximum timeout value "
    r"\((?P<seconds>\d+) seconds\)$"
)


def job_timeout_reason(seconds: float | int | None) -> str:
    """The one-line reason of a job stopped at its timeout, naming the setting."""
    limit = f" ({seconds:g}s)" if isinstance(seconds, int | float) else ""
    return f"job timed out: the chain ran past DISPATCHER_JOB_TIMEOUT{limit}"


def parse_failure(exc_string: str | None) -> Failure:
    """Read the handler and reason from RQ's stored traceback text (or any exception line).

    The last non-blank line of a traceback is the exception that failed the job; for
    :class:`dispatcher.worker.jobs.HandlerFailed` it names the handler. Anything else is reported as
    that line, the exception type included.
    """
    # Split at "\n" only: tracebacks are joined with it, and a message may hold U+2028 etc.
    lines = [line.strip() for line in (exc_string or "").split("\n") if line.strip()]
    if not lines:
        return Failure(None, "unknown (no error was recorded)")
    last = lines[-1]
    # "dispatcher.worker.jobs.HandlerFailed: handler ..." or a bare "handler ..." message.
    match = _HANDLER_FAILED.match(last.removeprefix(_HANDLER_FAILED_TYPE))
    if match is not None:
        return Failure(match["handler"], match["reason"].strip() or "(no reason given)")
    timeout = _RQ_JOB_TIMEOUT.match(last)
    if timeout is not None:
        return Failure(None, job_timeout_reason(int(timeout["seconds"])))
    return Failure(None, last)
