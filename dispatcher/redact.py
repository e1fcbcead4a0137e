"""The one registry of secret values in a process, and scrubbing them out of text.

Everything that may carry a secret out of the process goes through :func:`scrub`: every log
line (at every level), every failure reason and RQ traceback before it is stored in Redis, and
what ``dispatcher failed`` / ``show`` print. Secrets come into the registry where settings are
built, so no caller has to remember:

- the dispatcher's own settings (:func:`dispatcher.load_settings`): the Kombo API key, the
  webhook secret, the password in ``REDIS_URL``;
- every handler's settings built through :func:`dispatcher.handler_settings`: each field
  declared ``SecretStr`` (``PROVISION_TOKEN``, ``SMTP_URL``...), so a vendor's plugin gets
  this for free by declaring its tokens as ``SecretStr``;
- for a secret that is a URL, the password inside it too, as written and percent-decoded;
- the process environment (:func:`protect_environment`, by ``load_settings``): every variable
  named like a secret (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*API_KEY*``...) and the
  password of every URL, so that a process masks the secrets of handlers it does not load
  (the poller and the console never build the chain, yet show what Kombo and workers wrote).

A value shorter than :data:`MIN_SECRET_LENGTH` is not registered: masking every ``ab`` in
every line would turn logs into garbage and hide nothing a guess would not find. The settings
loaders warn about such a value, naming its setting.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "environment_secrets",
    "protect_environment",
    "protect_secrets",
    "protect_settings",
    "scrub",
    "secret_values",
]

MASK = "***"
# No real key, token or password is this short; anything shorter would mask ordinary words.
MIN_SECRET_LENGTH = 6

log = logging.getLogger("dispatcher.redact")

_lock = threading.Lock()
_secrets: set[str] = set()
# One alternation, longest first, so that a secret containing another is masked whole.
_pattern: re.Pattern[str] | None = None


def protect_secrets(values: Iterable[str]) -> None:
    """Mask these values (and their JSON-escaped forms) wherever :func:`scrub` runs.

    Values shorter than :data:`MIN_SECRET_LENGTH` are ignored (see the module docstring).
    """
    global _pattern
    added = {
        form
        for value in values
        if len(value) >= MIN_SECRET_LENGTH
        for form in (value, json.dumps(value)[1:-1])
    }
    with _lock:
        if added <= _secrets:
            return
        _secrets.update(added)
        ordered = sorted(_secrets, key=len, reverse=True)
        # Case-insensitive: some servers echo the headers they received upper-cased.
        _pattern = re.compile("|".join(re.escape(value) for value in ordered), re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` with every registered secret (in any letter case) replaced by ``***``."""
    pattern = _pattern
    if pattern is None:
        return text
    return pattern.sub(MASK, text)


# Variable names that hold a secret by convention (case-insensitive, anywhere in the name).
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """The secret values of an environment: variables named like a secret, and the password
    (as written and percent-decoded) of every value that is a URL holding one."""
    found = []
    for name, value in environ.items():
        if _SECRET_NAME.search(name):
            found.append(value)
        if "@" in value and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.extend((value, password, unquote(password)))
    return [value for value in found if value]


def protect_environment(environ: Mapping[str, str]) -> None:
    """Register :func:`environment_secrets` of ``environ`` (values too short to mask are
    skipped silently: the environment holds more than the dispatcher's settings)."""
    protect_secrets(environment_secrets(environ))


def _secrets_of(settings: BaseModel) -> Iterator[tuple[str, str]]:
    """(setting name, value) of every secret the settings hold: ``SecretStr`` fields, also
    inside lists, mappings and nested models, and the password inside a secret URL."""

    def visit(name: str, value: object) -> Iterator[tuple[str, str]]:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            yield name, secret
            try:
                password = urlsplit(secret).password
            except ValueError:
                password = None
            if password:
                # The URL holds it percent-encoded; clients send (and servers echo) it decoded.
                yield f"{name} (password)", password
                yield f"{name} (password)", unquote(password)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                yield from visit(f"{name}.{key}", item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                yield from visit(name, item)
        elif isinstance(value, BaseModel):
            for field_name, field in type(value).model_fields.items():
                yield from visit(field.alias or field_name, getattr(value, field_name))

    yield from visit(type(settings).__name__, settings)


def secret_values(settings: BaseModel) -> list[str]:
    """Every (non-empty) secret value the settings hold."""
    return [value for _, value in _secrets_of(settings) if value]


def protect_settings(settings: BaseModel) -> None:
    """Register every secret of ``settings``; warn, naming the setting, about one too short
    to be masked."""
    found = [(name, value) for name, value in _secrets_of(settings) if value]
    for name in dict.fromkeys(name for name, value in found if len(value) < MIN_SECRET_LENGTH):
        log.warning(
            "%s: shorter than %d characters, so it cannot be masked in logs and failure "
            "reasons; use a longer one",
            name,
            MIN_SECRET_LENGTH,
        )
    protect_secrets(value for _, value in found)
