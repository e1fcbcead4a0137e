"""Text the built-in handlers put in mails, chat messages and failure reasons: one line,
nothing hidden."""

from __future__ import annotations

import unicodedata

# Characters that end or hide a line (str.splitlines() splits on Zl/Zp and some Cc too),
# invisible formatting, lone surrogates (unencodable) and unassigned code points.
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def unprintable(char: str) -> bool:
    """True for a character that ends or hides a line, or cannot be encoded."""
    return unicodedata.category(char) in _UNPRINTABLE


def one_line(text: str, limit: int) -> str:
    """``text`` with every unprintable character or line break made a space, whitespace runs
    collapsed, cut to ``limit`` characters (the last an ellipsis when cut)."""
    line = " ".join("".join(" " if unprintable(char) else char for char in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
