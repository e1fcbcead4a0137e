"""The handler contract: everything a vendor's handler meets, in one file.

Import it from :mod:`dispatcher` (``from dispatcher import BaseHandler, HandlerContext, ...``);
this module is where it is written down. How handlers are found and loaded is
:mod:`dispatcher.plugins`; ``docs/handlers.md`` is the longer guide with examples.

**What a handler is.** One step of the chain the worker runs on every order: an object with a
``name`` and ``handle(order, context)`` (the :class:`Handler` protocol). Subclassing
:class:`BaseHandler` is optional; it declares the two optional hooks, ``accepts(order)`` and
``close()``, with no-op defaults, and makes a missing ``handle`` an error at start.

**Where it comes from.** A package publishes it under the entry-point group
``dispatcher.handlers``: ``crm = "my_pkg.crm:CrmHandler"``. The entry point names a class (or
any callable) taking no arguments. The entry-point name *is* the handler's name: leave
``name`` unset and the loader sets it; set it and it must be the same (a worker refuses to
start on a mismatch, naming both). Names must not start with ``_`` or contain ``:``.
``DISPATCHER_HANDLERS=provision_http,crm`` chooses the chain and its order.

**What is called when.**

- ``__init__()``: once per worker process, at start, before any job (``dispatcher handlers``
  runs it too, to check the chain). Read settings here (:func:`handler_settings`) and build
  clients: an exception stops the worker at start with one line naming the handler, instead
  of failing every order.
- ``handle(order, context)``: once per order and step, in chain order, after the earlier
  steps completed. Return a JSON-serialisable mapping (or ``None``): it is stored in Redis and
  later steps read it in ``context.outputs[name]``. A completed step is recorded before the
  next one starts and is never run again for that order; a retried job starts at the step
  that failed.
- ``accepts(order)`` (optional): in the ``web`` process, in the webhook request, before Kombo
  gets its answer. ``None`` accepts the order; a message rejects it (HTTP 422, shown in the
  ATS). Keep it fast and free of I/O; an exception accepts the order (logged). Orders that
  arrive by polling are not checked. The ``web`` process creates only the handlers whose
  class defines ``accepts`` (overriding :class:`BaseHandler`'s), so it never needs the other
  handlers' settings.
- ``close()`` (optional): once, when the worker shuts down. Release connections here.

**What an exception means.** :class:`RetryLater`: may pass, the job is retried with backoff
(``DISPATCHER_RETRY_BACKOFF``, doubling, at most ``DISPATCHER_MAX_RETRIES`` times).
:class:`PermanentFailure`: will not pass, the job fails now. Any other exception, and running
past the step's timeout (``DISPATCHER_HANDLER_TIMEOUT``), counts as retryable. The job's
reason is one line naming the handler and the order; a handler never takes the worker down.

**Exactly once, in effect.** A worker can die after a side effect and before the step is
recorded; the step then runs again. ``context.idempotency_key`` is the same for every attempt
of this step on this order and different for every other: send it with the side effect
(an ``Idempotency-Key`` header, a Message-ID, a unique column) so the repeat can be dropped.
For several effects in one step, ``context.effects.record(name)`` each one as it happens and
skip those for which ``context.effects.done(name)``.

**Processes and threads.** One handler instance per worker process (``dispatcher worker
--processes N`` runs N, each with its own chain). With ``DISPATCHER_FORK_PER_JOB=true`` (the
default) each job runs in a forked copy of the worker: what ``handle`` changes on ``self``,
and any connection it opens, is gone after the job. With ``false`` jobs run in the worker
process itself and the instance (and its connections) lives across jobs. With one thread
per worker (``--threads 1``, the default) a process runs one job at a time. With
``dispatcher worker --threads N`` (``DISPATCHER_WORKER_THREADS``) the process's one instance
is shared: ``handle`` is called by up to N threads at the same time, so it must be safe to
call concurrently (per-order data in locals, never on ``self``; thread-safe clients; see
docs/handlers.md, 7.). In ``web``, ``accepts`` runs in a thread of the pool, one order at a
time, and every delivery behind it waits: keep it quick.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from dispatcher._text import dotted, error_message
from dispatcher.kombo.models import Order
from dispatcher.redact import protect_settings
from dispatcher.settings import Settings
from dispatcher.tracing import HANDLER_TRACE, HandlerTrace

__all__ = [
    "BaseHandler",
    "Effects",
    "Handler",
    "HandlerConfigError",
    "HandlerContext",
    "PermanentFailure",
    "RetryLater",
    "handler_settings",
]


@runtime_checkable
class Handler(Protocol):
    """One step of the chain run on every order: all a handler must have.

    ``name`` is the entry point's name (the loader sets it when the class does not).
    ``handle`` returns a JSON-serialisable mapping (the step's output, passed to later steps)
    or ``None``. Raise :class:`RetryLater` for a failure that may pass (the job is retried
    with backoff), :class:`PermanentFailure` for one that will not. Any other exception is
    treated as retryable.
    """

    name: str

    def handle(self, order: Order, context: HandlerContext) -> Mapping[str, Any] | None: ...


class BaseHandler(ABC):
    """An optional base class: ``handle`` to write, the optional hooks declared with no-op
    defaults. A subclass without ``handle`` fails at start ("could not be created")."""

    name: str
    """The entry point's name; set by the loader unless the class sets it (to the same)."""

    @abstractmethod
    def handle(self, order: Order, context: HandlerContext) -> Mapping[str, Any] | None:
        """Do this step for ``order``; return its output (JSON-serialisable) or ``None``."""

    def accepts(self, order: Order) -> str | None:
        """``None`` to accept ``order`` at the webhook, or a message (shown in the ATS) to
        reject it. Runs in the ``web`` process, in the request: fast, no I/O.
        Override it only to refuse orders: the ``web`` process creates a handler only when
        its class overrides this."""
        return None

    def close(self) -> None:  # noqa: B027 (an optional hook: a no-op unless overridden)
        """Release what ``__init__`` acquired; called once when the worker shuts down."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler gets besides the order.

    ``outputs`` maps the name of every handler that already ran on this order to what it
    returned, so a later step can use an earlier one's result (a test link, say).
    ``idempotency_key`` is the same for every attempt of this step on this order and differs
    for every other (step, order): send it along with a side effect so that a repeat after a
    crash can be dropped downstream. ``attempt`` is 1 on the first run of the job, 2 on the
    first retry, and so on (crash recoveries and ``dispatcher retry`` count too).
    ``trace`` is the step's OpenTelemetry trace (:class:`dispatcher.tracing.HandlerTrace`):
    ``trace.headers()`` for a call of the handler's own, ``trace.http_client()`` for an httpx
    client whose requests join the order's trace; both work, untraced, when tracing is off.
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
    trace: HandlerTrace = HANDLER_TRACE


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


class RetryLater(Exception):
    """The step failed but may succeed later: retry the job with backoff."""


class PermanentFailure(Exception):
    """The step can never succeed for this order: fail the job without retrying."""


class HandlerConfigError(Exception):
    """A configured handler is missing, fails to import, or breaks the contract."""


_SettingsT = TypeVar("_SettingsT", bound=BaseModel)

# Every model handler_settings built: their variables are settings, not typos
# (dispatcher.unknown_settings).
_models: list[type[BaseModel]] = []


def settings_models() -> list[type[BaseModel]]:
    """The settings models handlers of this process built with :func:`handler_settings`."""
    return list(_models)


def handler_settings(model: type[_SettingsT]) -> _SettingsT:
    """Build a handler's own settings (a pydantic-settings class), or raise HandlerConfigError.

    The error names the environment variable and never echoes its value, so a handler whose
    configuration is missing stops the worker at start with one clear line. Every field
    declared ``SecretStr`` (and the password of a secret URL) is registered to be masked in
    logs and in failure reasons before they are stored (:mod:`dispatcher.redact`).
    """
    if model not in _models:
        _models.append(model)
    try:
        settings = model()
    except ValidationError as exc:

        def variable(location: Sequence[int | str]) -> str:
            field = model.model_fields.get(str(location[0])) if location else None
            return field.alias if field is not None and field.alias else dotted(location[:1])

        def problem(error: ErrorDetails) -> str:
            return "not set" if error["type"] == "missing" else error_message(error)

        # Every variable at fault, as load_settings names them: "(and 1 more)" left the
        # operator to find the second one by fixing the first and starting again.
        line = "; ".join(
            f"{variable(error['loc']) or model.__name__}: {problem(error)}"
            for error in exc.errors()
        )
        raise HandlerConfigError(line) from None
    protect_settings(settings)
    return settings
