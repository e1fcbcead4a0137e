"""How handlers are found and loaded: entry points, the name rule, the contract check.

What a handler is (the :class:`~dispatcher.handler.Handler` protocol, the optional
:class:`~dispatcher.handler.BaseHandler`, the context and the exceptions) is
:mod:`dispatcher.handler`. Handlers are published under the entry-point group
``dispatcher.handlers``; the entry point names a class (or any callable) that takes no
arguments and returns the handler, and its name is the handler's name. The built-in handlers
in ``dispatcher_handlers`` register the same way.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from dispatcher.handler import BaseHandler, Handler, HandlerConfigError
from dispatcher.kombo.models import Order

__all__ = [
    "ENTRY_POINT_GROUP",
    "Acceptor",
    "DiscoveredHandler",
    "check_handler",
    "discover_handlers",
    "find_acceptors",
    "load_acceptors",
    "load_handlers",
]

ENTRY_POINT_GROUP = "dispatcher.handlers"


@dataclass(frozen=True, slots=True)
class DiscoveredHandler:
    """One entry point of the group: where it comes from and whether it loads."""

    name: str
    value: str
    distribution: str
    factory: Callable[[], Any] | None
    error: str | None


def discover_handlers() -> dict[str, DiscoveredHandler]:
    """Every handler published under the entry-point group, loaded but not instantiated."""
    found: dict[str, DiscoveredHandler] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        distribution = f"{dist.name} {dist.version}" if dist is not None else "?"
        factory: Callable[[], Any] | None = None
        error: str | None = None
        try:
            factory = entry_point.load()
        except Exception as exc:  # any import-time failure of a plugin is reported, not fatal
            error = f"failed to import {entry_point.value}: {type(exc).__name__}: {exc}"
        found[entry_point.name] = DiscoveredHandler(
            entry_point.name, entry_point.value, distribution, factory, error
        )
    return found


def load_handlers(
    names: list[str], discovered: Mapping[str, DiscoveredHandler] | None = None
) -> list[Handler]:
    """Instantiate the configured handlers in order, checking each against the contract.

    Raises HandlerConfigError naming the handler and the problem, so that a worker fails at
    start rather than at the first order.
    """
    discovered = discover_handlers() if discovered is None else discovered
    return [_create(name, _factory(name, discovered)) for name in names]


def load_acceptors(
    names: list[str], discovered: Mapping[str, DiscoveredHandler] | None = None
) -> list[Acceptor]:
    """The ``accepts`` checks of the configured chain, for the ``web`` process.

    Every configured handler must be installed and import, as for a worker; but only those
    that may have an ``accepts`` of their own (:func:`may_accept`) are created, so the
    ``web`` process does not need the settings of the others (``PROVISION_URL``,
    ``SMTP_URL``...). Raises HandlerConfigError like :func:`load_handlers`.
    """
    discovered = discover_handlers() if discovered is None else discovered
    factories = [(name, _factory(name, discovered)) for name in names]
    return find_acceptors([_create(name, make) for name, make in factories if may_accept(make)])


def may_accept(factory: Callable[[], Any]) -> bool:
    """Whether the handler ``factory`` makes may refuse orders at the webhook: False for a
    class that has no ``accepts`` or only :class:`BaseHandler`'s no-op one. A factory that is
    not a class can only tell by being called: True."""
    if not isinstance(factory, type):
        return True
    accepts = getattr(factory, "accepts", None)
    return accepts is not None and accepts is not BaseHandler.accepts


def _factory(name: str, discovered: Mapping[str, DiscoveredHandler]) -> Callable[[], Any]:
    """The loaded entry point ``name``, or HandlerConfigError saying why there is none."""
    entry = discovered.get(name)
    if entry is None:
        known = ", ".join(sorted(discovered)) or "none"
        raise HandlerConfigError(
            f"DISPATCHER_HANDLERS: handler {name!r} is not installed (known: {known})"
        )
    if entry.error is not None or entry.factory is None:
        raise HandlerConfigError(f"handler {name!r}: {entry.error}")
    declared = getattr(entry.factory, "name", None) if isinstance(entry.factory, type) else None
    if isinstance(declared, str) and declared != name:
        raise _mismatch(name, declared)  # before creating it: no settings needed to say so
    return entry.factory


def _create(name: str, factory: Callable[[], Any]) -> Handler:
    """Call ``factory``; name the handler after its entry point unless it has a name."""
    try:
        handler = factory()
    except HandlerConfigError as exc:
        # handler_settings() names the variable (PROVISION_URL: not set): name the handler.
        if str(exc).startswith(f"handler {name!r}"):
            raise
        raise HandlerConfigError(f"handler {name!r}: {exc}") from None
    except Exception as exc:
        raise HandlerConfigError(
            f"handler {name!r}: could not be created: {type(exc).__name__}: {exc}"
        ) from None
    if getattr(handler, "name", None) is None:
        # The entry point's name is the handler's: it need not be written twice. An object
        # that refuses the attribute (__slots__, frozen) is reported by check_handler.
        with contextlib.suppress(AttributeError, TypeError):
            handler.name = name
    check_handler(name, handler)
    return handler  # type: ignore[no-any-return]


def _mismatch(name: str, declared: str) -> HandlerConfigError:
    return HandlerConfigError(
        f"handler {name!r}: its `name` is {declared!r}; it must match the entry point "
        "(or be left out)"
    )


def check_handler(name: str, handler: object) -> None:
    """Raise HandlerConfigError unless ``handler`` fulfils the contract under ``name``."""
    handler_name = getattr(handler, "name", None)
    if not isinstance(handler_name, str) or not handler_name:
        raise HandlerConfigError(f"handler {name!r}: has no `name` string attribute")
    if handler_name.startswith("_"):
        raise HandlerConfigError(f"handler {name!r}: names starting with '_' are reserved")
    if ":" in handler_name or not handler_name.isprintable():
        # The name ends Redis keys ({ns}:effects:<order>:<handler>) and counter fields
        # (<handler>:completed): a ':' would make them ambiguous.
        raise HandlerConfigError(
            f"handler {name!r}: names must not contain ':' or control characters"
        )
    if handler_name != name:
        raise _mismatch(name, handler_name)
    handle = getattr(handler, "handle", None)
    if not callable(handle):
        raise HandlerConfigError(f"handler {name!r}: has no callable `handle(order, context)`")
    try:
        inspect.signature(handle).bind(None, None)
    except TypeError:
        raise HandlerConfigError(
            f"handler {name!r}: `handle` must accept (order, context), "
            f"not {inspect.signature(handle)}"
        ) from None
    except ValueError:  # builtins without a signature: trust them
        pass


@dataclass(frozen=True, slots=True)
class Acceptor:
    """One handler's ``accepts`` check, with the handler's name for messages and logs."""

    handler: str
    check: Callable[[Order], str | None]


def find_acceptors(chain: Sequence[Handler]) -> list[Acceptor]:
    """The ``accepts`` checks of the handlers in ``chain`` that have one, in chain order.

    Raises HandlerConfigError naming the handler when its ``accepts`` is not a callable
    taking the order, so the receiver fails at start rather than at the first webhook.
    """
    found: list[Acceptor] = []
    for handler in chain:
        accepts = getattr(handler, "accepts", None)
        if accepts is None or getattr(accepts, "__func__", None) is BaseHandler.accepts:
            continue  # none, or BaseHandler's, which accepts everything
        if not callable(accepts):
            raise HandlerConfigError(f"handler {handler.name!r}: `accepts` is not callable")
        try:
            inspect.signature(accepts).bind(None)
        except TypeError:
            raise HandlerConfigError(
                f"handler {handler.name!r}: `accepts` must take (order), "
                f"not {inspect.signature(accepts)}"
            ) from None
        except ValueError:  # builtins without a signature: trust them
            pass
        found.append(Acceptor(handler.name, accepts))
    return found
