"""The handler plugin contract: what a vendor implements, and how handlers are found.

A handler is any object with a ``name`` and a ``handle(order, context)`` method. Handlers are
published under the entry-point group ``dispatcher.handlers``; the entry point names a class
(or any callable) that takes no arguments and returns the handler. The built-in handlers in
``dispatcher_handlers`` register the same way.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from dispatcher._text import dotted, error_message, validation_line
from dispatcher.kombo.models import Order
from dispatcher.redact import protect_settings
from dispatcher.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "Acceptor",
    "DiscoveredHandler",
    "Effects",
    "Handler",
    "HandlerConfigError",
    "HandlerContext",
    "OrderAcceptor",
    "PermanentFailure",
    "RetryLater",
    "discover_handlers",
    "find_acceptors",
    "handler_settings",
    "load_handlers",
]

ENTRY_POINT_GROUP = "dispatcher.handlers"


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler gets besides the order.

    ``outputs`` maps the name of every handler that already ran on this order to what it
    returned, so a later step can use an earlier one's result (a test link, say).
    ``idempotency_key`` is the same for every attempt of this step on this order and differs
    for every other (step, order): send it along with a side effect so that a repeat after a
    crash can be dropped downstream.
    """

    integration_id: str
    order_id: str
    job_id: str
    handler_name: str
    idempotency_key: str
    attempt: int
    outputs: Mapping[str, Mapping[str, Any]]
    settings: Settings
    logger: logging.LoggerAdapter[logging.Logger]
    effects: Effects


class Effects(Protocol):
    """Sub-effects a step has already performed on this order, remembered across retries.

    A step with several side effects (one email per recipient, say) records each as it
    completes and skips the recorded ones when it is retried, so a retry repeats only what
    had not happened.
    """

    def done(self, name: str) -> bool:
        """Whether the sub-effect ``name`` was recorded on an earlier attempt."""
        ...

    def record(self, name: str) -> None:
        """Remember that the sub-effect ``name`` has happened."""
        ...


@runtime_checkable
class Handler(Protocol):
    """One step of the chain run on every order.

    ``handle`` returns a JSON-serialisable mapping (the step's output, passed to later steps)
    or ``None``. Raise :class:`RetryLater` for a failure that may pass (the job is retried
    with backoff), :class:`PermanentFailure` for one that will not. Any other exception is
    treated as retryable.
    """

    name: str

    def handle(self, order: Order, context: HandlerContext) -> Mapping[str, Any] | None: ...


class RetryLater(Exception):
    """The step failed but may succeed later: retry the job with backoff."""


class PermanentFailure(Exception):
    """The step can never succeed for this order: fail the job without retrying."""


class HandlerConfigError(Exception):
    """A configured handler is missing, fails to import, or breaks the contract."""


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
    chain: list[Handler] = []
    for name in names:
        entry = discovered.get(name)
        if entry is None:
            known = ", ".join(sorted(discovered)) or "none"
            raise HandlerConfigError(
                f"DISPATCHER_HANDLERS: handler {name!r} is not installed (known: {known})"
            )
        if entry.error is not None or entry.factory is None:
            raise HandlerConfigError(f"handler {name!r}: {entry.error}")
        try:
            handler = entry.factory()
        except HandlerConfigError as exc:
            # handler_settings() names the variable (PROVISION_URL: not set): name the handler.
            if str(exc).startswith(f"handler {name!r}"):
                raise
            raise HandlerConfigError(f"handler {name!r}: {exc}") from None
        except Exception as exc:
            raise HandlerConfigError(
                f"handler {name!r}: could not be created: {type(exc).__name__}: {exc}"
            ) from None
        check_handler(name, handler)
        chain.append(handler)
    return chain


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
        raise HandlerConfigError(
            f"handler {name!r}: its `name` is {handler_name!r}; it must match the entry point"
        )
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


_SettingsT = TypeVar("_SettingsT", bound=BaseModel)


def handler_settings(model: type[_SettingsT]) -> _SettingsT:
    """Build a handler's own settings (a pydantic-settings class), or raise HandlerConfigError.

    The error names the environment variable and never echoes its value, so a handler whose
    configuration is missing stops the worker at start with one clear line. Every field
    declared ``SecretStr`` (and the password of a secret URL) is registered to be masked in
    logs and in failure reasons before they are stored (:mod:`dispatcher.redact`).
    """
    try:
        settings = model()
    except ValidationError as exc:

        def variable(location: Sequence[int | str]) -> str:
            field = model.model_fields.get(str(location[0])) if location else None
            return field.alias if field is not None and field.alias else dotted(location[:1])

        def problem(error: ErrorDetails) -> str:
            return "not set" if error["type"] == "missing" else error_message(error)

        line = validation_line(exc, field=variable, default=model.__name__, describe=problem)
        raise HandlerConfigError(line) from None
    protect_settings(settings)
    return settings


# -- an optional capability: refusing orders at the door -------------------------------------


class OrderAcceptor(Protocol):
    """What a handler may add to refuse, at the webhook, orders it can never serve.

    ``accepts(order)`` returns ``None`` to accept the order, or a human message (shown to the
    customer in their ATS) to reject it. It runs in the webhook request, before Kombo gets
    its answer: keep it fast and free of I/O. Orders reaching the dispatcher by polling are
    not checked (the poller cannot answer Kombo with a rejection).
    """

    def accepts(self, order: Order) -> str | None: ...


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
        if accepts is None:
            continue
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
