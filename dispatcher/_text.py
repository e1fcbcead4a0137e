"""Small text helpers shared by the command-line views (durations, tables)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click


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
