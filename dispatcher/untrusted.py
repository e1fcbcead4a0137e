"""The one rule for text the dispatcher did not write: what Kombo, an ATS, a vendor's API or an
HTTP client sent, and what a handler built from it (error bodies, messages, ids, names).

Such text is attacker-controlled: it may echo a secret the dispatcher sent (Kombo echoing the
``Authorization`` header with the API key, a vendor's debug page echoing a handler's token),
hold line breaks that forge a log or CLI line, hold a candidate's contact data, or be megabytes
long. Before it is stored in Redis, printed by a command or rendered by the console, it passes
:func:`untrusted_text`, which does, in this order:

1. mask every registered secret (:func:`dispatcher.redact.scrub`, case-insensitively: some
   servers echo headers upper-cased);
2. mask personal data (e-mail addresses, phone numbers) when the text is shown where personal
   data does not belong (the Failures page, ``dispatcher failed``, log lines above DEBUG);
3. escape control characters (one line, shown as it is: :func:`escape_controls`);
4. cut to a bound.

The order matters: text cut before masking can keep the first characters of a secret that
straddled the cut (a token starting 280 characters into a 300-character cut left its first
12 characters behind).

HTML escaping is the templates' job (Jinja's autoescape): the text stays readable for the
terminal and the JSON outputs.
"""

from __future__ import annotations

import http.cookiejar
import re

from dispatcher.redact import scrub

__all__ = [
    "PERSONAL_MASK",
    "escape_controls",
    "mask_personal",
    "untrusted_text",
]

PERSONAL_MASK = "<redacted>"

# The lookbehind makes a match start only where a run of address characters starts: without
# it a long run with no "@" (a vendor's megabyte error page) costs quadratic time.
EMAIL = re.compile(r"(?<![\w.+\-])[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
# A phone number as people write one: 8 to 15 digits, an optional "+" or "00" in front, single
# spaces, dots, dashes, slashes or parentheses between them. Shorter runs are ids, counts,
# status codes; an ISO date (8 digits) is told apart below.
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d(?:[ ./\-()]{0,2}\d){7,14}(?![\w])")
_DATE = re.compile(r"\d{4}-\d\d-\d\d(?:[ T]\d\d)?$")


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    return text if _DATE.match(text) else PERSONAL_MASK


def mask_personal(text: str, contact: tuple[str, ...] = (), *, phones: bool = True) -> str:
    """``text`` with the given contact values (a candidate's e-mail, phone, names), every
    e-mail address and (with ``phones``) everything shaped like a phone number replaced by
    ``<redacted>``.

    Log lines pass ``phones=False``: they carry unix times and counters that look like phone
    numbers, and the order's own phone is among ``contact`` there."""
    for value in sorted(contact, key=len, reverse=True):
        # The pattern is the order's own: compiled per call (re's cache holds 512, a worker
        # sees thousands of orders), so only for a line that holds the value at all.
        if value in text:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", PERSONAL_MASK, text)
    text = EMAIL.sub(PERSONAL_MASK, text)
    return _PHONE.sub(_phone, text) if phones else text


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """``text`` on one line, shown as it is: every character ``str.isprintable`` refuses as a
    backslash escape (``\\n``, ``\\x1b``, ``\\u2028``).

    That is C0 controls, DEL and C1 (U+0085 NEL among them), the Unicode line and paragraph
    separators (every character ``str.splitlines`` breaks at), the bidi embeddings, overrides
    and isolates (they reorder how a line is shown), other invisible format characters and
    lone surrogates. Ids, names and vendor messages are attacker-controlled: a log line, a
    failure reason or a problem in ``dispatcher status`` must stay one honest line.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_one(char) for char in text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def untrusted_text(text: str, limit: int, *, personal: bool = False) -> str:
    """``text`` fit to store, print or render: registered secrets masked first, then (with
    ``personal``) e-mail addresses and phone numbers, then control characters escaped onto
    one line, then cut to ``limit`` characters (the last an ellipsis when cut).

    Every surface that keeps or shows text from Kombo, a vendor or a client uses this; a
    handler putting a vendor's answer into its failure should too.
    """
    text = scrub(text)
    if personal:
        text = mask_personal(text)
    return _cut(escape_controls(text), limit)


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing, for an HTTP client whose requests serve many orders
    or integrations: an httpx.Client keeps the cookies a server sets and sends them on every
    later request to that host, so a cookie set answering one customer's request went with
    every other customer's after it (``httpx.Client(cookies=no_cookies())``)."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
