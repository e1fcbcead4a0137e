"""Small text helpers shared across the package: Redis replies as text, URLs checked,
one-line problems, and the command-line views (durations, tables)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


def as_str(value: bytes | str) -> str:
    """A Redis reply as text (a client without ``decode_responses`` answers bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def as_float(value: object) -> float | None:
    """A number read back from Redis (or a stored JSON record), or None when it is missing or
    not a number."""
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str | int | float):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def is_http_url(text: str) -> bool:
    """True for an ``http://`` or ``https://`` address (the only schemes we call out to)."""
    return text.startswith(("http://", "https://"))


# The Redis URL schemes store/connection.py builds a client for (settings checks them too).
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


def url_problem(url: str) -> str | None:
    """What makes a Redis connection URL unparsable (an unclosed ``[`` of an IPv6 address, a
    port that is no number or out of range), in words that never hold the URL: it may hold a
    password. ``None`` when it parses; a Sentinel URL's every ``host:port`` is checked.

    Here, not in :mod:`dispatcher.store.connection` (which checks every URL it connects to
    with it), because the settings check ``REDIS_URL`` with it too, and ``store`` reads the
    settings."""
    try:
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2]
        if "+sentinel" not in parts.scheme.lower():
            parts.port  # noqa: B018 (parsing the port is the check)
            return None
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host:
                host, port = port, "26379"
            if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                return f"sentinel address {item[:60]!r} is not host:port"
    except ValueError as exc:
        return " ".join(str(exc).split()) or "malformed URL"
    return None


def dotted(location: Sequence[int | str]) -> str:
    """Where a pydantic error is, as ``hiring_team.0.email``."""
    return ".".join(str(part) for part in location)


def error_message(error: ErrorDetails) -> str:
    """pydantic's message for one error, without the ``Value error,`` of our own validators."""
    return error["msg"].removeprefix("Value error, ")


def first_problem(
    exc: ValidationError,
    *,
    field: Callable[[Sequence[int | str]], str] = dotted,
    default: str = "(value)",
    describe: Callable[[ErrorDetails], str] | None = None,
) -> tuple[str, str]:
    """The field and the problem of ``exc``'s first error, for a one-line message.

    ``field`` names the location (``default`` when it is empty); the problem is pydantic's
    message without its ``Value error,`` prefix (or what ``describe`` says), with
    ``(and N more)`` when there are other errors.
    """
    errors = exc.errors()
    first = errors[0]
    problem = (describe or error_message)(first)
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more)"
    return field(first["loc"]) or default, problem


def validation_line(
    exc: ValidationError,
    prefix: str = "",
    *,
    field: Callable[[Sequence[int | str]], str] = dotted,
    default: str = "(value)",
    describe: Callable[[ErrorDetails], str] | None = None,
) -> str:
    """``{prefix}{field}: {problem}`` for ``exc``'s first error (see :func:`first_problem`)."""
    name, problem = first_problem(exc, field=field, default=default, describe=describe)
    return f"{prefix}{name}: {problem}"


def duration(seconds: float) -> str:
    """``42s``, ``3m 04s``, ``2h 05m``, ``3d 04h``: two units at most."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def ago(when: float | None, now: float) -> str:
    """``3m 04s ago``, ``in 59m 58s`` (a time to come, such as a retry), or ``never``."""
    if when is None:
        return "never"
    if when > now + 1:
        return f"in {duration(when - now)}"
    return f"{duration(now - when)} ago"


def timestamp(when: float | None) -> str:
    """A unix time as ``2024-05-01 12:00:03 UTC``, or ``-``."""
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int]) -> list[str]:
    """Left-aligned columns (right-aligned for the indexes in ``right``), two spaces apart.

    Cells may hold ANSI styles: widths are measured without them.
    """
    widths = [len(title) for title in header]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(click.unstyle(cell)))
    lines = []
    for row in [list(header), *rows]:
        cells = []
        for index, cell in enumerate(row):
            pad = " " * (widths[index] - len(click.unstyle(cell)))
            cells.append(pad + cell if index in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def ellipsis(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact_json(value: object, limit: int = 100) -> str:
    """A value as one line of JSON, cut with an ellipsis past ``limit`` characters."""
    return ellipsis(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str), limit)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN's ``MATCH``): ids may hold
    ``*``, ``?``, ``[``, ``]`` and backslashes."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
