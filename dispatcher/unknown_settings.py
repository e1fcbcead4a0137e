"""Settings that nothing reads: a ``DISPATCHER_*`` or ``KOMBO_*`` environment variable or
``.env`` key that is no setting is a typo (``DISPATCHER_HANDLER=log,crm``,
``DISPATCHER_POLL_INTERVL``, ``KOMBO_APIKEY``), silently ignored by pydantic-settings.

The command line warns once per such name, naming the closest valid one. Known are the
dispatcher's settings, the variables of its options (``DISPATCHER_LOG_FORMAT``...), and the
settings of the installed handlers: every pydantic-settings class of a handler's module
(the built-ins' ``PROVISION_*``, ``SMTP_*``, ``NOTIFY_*``) and every model a handler built
with :func:`dispatcher.handler_settings`. Handlers are imported only when a name is not
otherwise known, so a clean environment costs nothing.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from dispatcher.handler import settings_models
from dispatcher.plugins import discover_handlers
from dispatcher.settings import Settings

__all__ = ["CHECKED", "PREFIXES", "model_names", "unknown_settings", "warn_unknown_settings"]

log = logging.getLogger("dispatcher.settings")

PREFIXES = ("DISPATCHER_", "KOMBO_")

# Set in the environment of the processes a command starts as copies of itself (poll
# --processes): they leave the warning to it. Not DISPATCHER_-prefixed: no setting, no typo.
CHECKED = "_DISPATCHER_SETTINGS_CHECKED"

# `KEY=value`, `export KEY=value` (python-dotenv's syntax, as pydantic-settings reads .env).
_DOTENV_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def model_names(model: type[BaseModel]) -> set[str]:
    """The environment variables a settings model reads (upper case: they match any case)."""
    prefix = str(model.model_config.get("env_prefix", "") or "")
    names = set()
    for name, field in model.model_fields.items():
        names.add((field.alias or f"{prefix}{name}").upper())
    return names


def dotenv_keys(path: Path) -> list[str]:
    """The keys of a ``.env`` file, in order (none when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    keys = []
    for line in text.splitlines():
        found = _DOTENV_KEY.match(line)
        if found is not None:
            keys.append(found[1])
    return keys


def _handler_names() -> set[str]:
    """The settings of every installed handler: the pydantic-settings classes of the modules
    their entry points name, and the models handlers built so far."""
    names: set[str] = set()
    for model in settings_models():
        names |= model_names(model)
    for found in discover_handlers().values():
        module = sys.modules.get(getattr(found.factory, "__module__", "") or "")
        if module is None:
            continue
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseSettings):
                names |= model_names(value)
    return names


def unknown_settings(
    given: Iterable[str], known: Iterable[str], *, handlers: bool = True
) -> dict[str, str | None]:
    """Each name of ``given`` with a dispatcher prefix that is no setting, mapped to the
    closest known name (or None)."""
    known_upper = {name.upper() for name in known} | model_names(Settings)
    candidates = [
        name
        for name in dict.fromkeys(given)
        if name.upper().startswith(PREFIXES) and name.upper() not in known_upper
    ]
    if candidates and handlers:
        known_upper |= _handler_names()
        candidates = [name for name in candidates if name.upper() not in known_upper]
    ours = sorted(name for name in known_upper if name.startswith(PREFIXES))
    unknown: dict[str, str | None] = {}
    for name in candidates:
        close = difflib.get_close_matches(name.upper(), ours, n=1, cutoff=0.6)
        unknown[name] = close[0] if close else None
    return unknown


def warn_unknown_settings(
    environ: Mapping[str, str], env_file: Path, known: Iterable[str] = ()
) -> dict[str, str | None]:
    """Log one WARNING per unknown setting of ``environ`` and ``env_file``; return them."""
    from_file = dotenv_keys(env_file)
    unknown = unknown_settings([*environ, *from_file], known)
    for name, close in unknown.items():
        where = "environment variable" if name in environ else f"key in {env_file}"
        hint = f"did you mean {close}?" if close else "no setting has a similar name"
        log.warning("unknown setting %s (%s), ignored: %s", name, where, hint)
    return unknown
