"""Logging setup: readable lines for people, one JSON object a line for log shippers.

Log calls about an order pass ``extra={"order_id": ..., "integration_id": ...}``; both
formats show those fields. With tracing on (:mod:`dispatcher.tracing`) a JSON record made
inside a span also carries its ``trace_id`` and ``span_id``. Inside :func:`order_context`
(the worker is in one from taking a job off the queue until it is done with it) records
that lack them get them, so RQ's own lines about a job are tagged too.

Two filters guard every line, as defence in depth behind code that should not log such
things in the first place:

- secret values (the API key, passwords, tokens, the webhook secret: every ``SecretStr`` of
  the dispatcher's and the handlers' settings, and a password inside a URL; see
  :mod:`dispatcher.redact`) are replaced by ``***`` at every level;
- the contact data of the candidate of the order at hand (email, phone, names), and any
  email address, are replaced by ``<redacted>`` above DEBUG: they may appear at DEBUG only.

In the text format every record is one line: control characters anywhere in it (CR, LF and
the rest of C0, DEL, C1, the Unicode line and paragraph separators, bidi overrides, and every
other character ``str.isprintable`` refuses) are written as backslash escapes, so that an
order id, name or vendor message holding a newline cannot forge a line of its own. A
traceback becomes part of its record's line the same way (``\n`` between its lines).
Backslashes are not doubled: the text format is for reading; the JSON format is the exact one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from dispatcher import tracing
from dispatcher.redact import protect_secrets, scrub, secret_values
from dispatcher.untrusted import escape_controls, mask_personal

__all__ = [
    "OrderLogContext",
    "configure_logging",
    "contact_values",
    "escape_controls",
    "order_context",
    "protect_secrets",
    "secret_values",
    "set_order_context",
]

_CONTEXT_FIELDS = ("integration_id", "order_id", "handler", "job_id")
# A record's text is cut to this many characters after it is scrubbed (a cut through a secret
# would leave its beginning behind): error bodies come from vendors and can be megabytes.
MAX_RECORD_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class OrderLogContext:
    """The order a process is working on: tagged onto its log lines, its contact data masked."""

    order_id: str
    integration_id: str
    job_id: str | None = None
    contact: tuple[str, ...] = ()


_current_order: contextvars.ContextVar[OrderLogContext | None] = contextvars.ContextVar(
    "dispatcher_order_log_context", default=None
)


def set_order_context(context: OrderLogContext | None) -> None:
    """Make ``context`` the order at hand (``None``: no order) until set again.

    For code whose start and end of an order are in different places (RQ's worker takes a
    job in one method and runs it in another); elsewhere use :func:`order_context`.
    """
    _current_order.set(context)


@contextmanager
def order_context(context: OrderLogContext) -> Iterator[None]:
    """Tag every log record inside the block with the order, and mask its contact data."""
    token = _current_order.set(context)
    try:
        yield
    finally:
        _current_order.reset(token)


def contact_values(order: Mapping[str, Any]) -> tuple[str, ...]:
    """The candidate's email, phone and names from an order payload (as Kombo sends it)."""
    candidate = order.get("candidate")
    if not isinstance(candidate, Mapping):
        return ()
    values = (candidate.get(name) for name in ("email", "phone", "first_name", "last_name"))
    return tuple(v for v in values if isinstance(v, str) and len(v.strip()) >= 2)


class _Guard(logging.Filter):
    """Adds the order context, then masks secrets and (above DEBUG) personal data."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._guard(record)
        except Exception:
            # A record whose message cannot even be built: let the handler report it as
            # logging always does, rather than raise into the code that logged.
            return True
        return True

    def _guard(self, record: logging.LogRecord) -> None:
        context = _current_order.get()
        message = record.getMessage()
        if context is not None:
            for name in ("order_id", "integration_id", "job_id"):
                if getattr(record, name, None) is None:
                    setattr(record, name, getattr(context, name))
        personal = record.levelno > logging.DEBUG
        contact = context.contact if context is not None and personal else ()
        cleaned = self._scrub(message, contact, personal)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text, contact, personal)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info, contact, personal)

    def _scrub(self, text: str, contact: tuple[str, ...], personal: bool) -> str:
        text = scrub(text)
        if len(text) > MAX_RECORD_CHARS:
            cut = len(text) - MAX_RECORD_CHARS
            text = (
                f"{text[: MAX_RECORD_CHARS // 2]} [... {cut} characters cut ...] "
                + (text[-MAX_RECORD_CHARS // 2 :])
            )
        if personal:
            text = mask_personal(text, contact, phones=False)
        return text


_FORMATTER = logging.Formatter()
_guard = _Guard()


_JSON_BREAKS = re.compile("[\x7f-\x9f\u2028\u2029]")


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, with the context before the traceback and the whole
        # record escaped onto one line (the message, the context values and the traceback
        # all carry text from Kombo, the ATSs and vendors).
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in _CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        if context:
            line = f"{line} [{context}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return escape_controls(line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        ids = tracing.current_ids()  # None unless tracing is on and a span is active
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        line = json.dumps(entry, ensure_ascii=False, default=str)
        # json.dumps escapes C0 controls only; these are line breaks to str.splitlines() and
        # to some log shippers. They can only occur inside JSON strings: \u escapes there
        # decode to the same value.
        return _JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    *,
    stream: TextIO | None = None,
) -> None:
    """Send every log record of the process to stderr (or ``stream``) in the chosen format,
    through the guard that tags order context and masks secrets and personal data."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_guard)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO; that is our DEBUG.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
