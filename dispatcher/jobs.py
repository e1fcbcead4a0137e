"""The RQ job entry point: run the handler chain on one order.

RQ calls job functions by import path, in whatever worker process pops the job, so the
function cannot be handed its settings and handlers directly: the worker installs a
:class:`Runtime` for the process at start (:func:`install_runtime`), and a plain ``rq worker``
builds one from the environment on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from .models import Order
from .plugins import Handler, HandlerContext, PermanentFailure, load_handlers
from .settings import Settings, load_settings

__all__ = ["HandlerFailed", "Runtime", "install_runtime", "process_order", "step_key"]

log = logging.getLogger("dispatcher.jobs")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a worker process needs to run jobs: settings and the loaded handler chain."""

    settings: Settings
    chain: list[Handler]

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings=settings, chain=load_handlers(settings.handlers))


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def install_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one jobs of this process use (``None`` to reset)."""
    global _runtime
    with _runtime_lock:
        _runtime = runtime


def current_runtime() -> Runtime:
    """The installed runtime, built from the environment when none was installed."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(load_settings())
        return _runtime


class HandlerFailed(Exception):
    """A handler raised; the message names the handler and the order (RQ shows it)."""

    def __init__(self, handler: str, integration_id: str, order_id: str, reason: str) -> None:
        self.handler = handler
        self.integration_id = integration_id
        self.order_id = order_id
        self.reason = reason
        super().__init__(
            f"handler {handler} failed on order {order_id} (integration {integration_id}): {reason}"
        )


def step_key(namespace: str, integration_id: str, order_id: str, handler: str) -> str:
    """The idempotency key of one step: stable across attempts, unique per (step, order)."""
    material = "\x00".join((namespace, integration_id, order_id, handler)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


def process_order(integration_id: str, order: dict[str, Any]) -> dict[str, Any]:
    """Run every configured handler, in order, on one order; return their outputs."""
    runtime = current_runtime()
    job = get_current_job()
    job_id = job.id if job is not None else "-"
    attempt = 1 + (job.number_of_retries or 0) if job is not None else 1
    parsed = Order.model_validate(order)
    outputs: dict[str, Mapping[str, Any]] = {}
    for handler in runtime.chain:
        context = HandlerContext(
            integration_id=integration_id,
            order_id=parsed.id,
            job_id=job_id,
            handler_name=handler.name,
            idempotency_key=step_key(
                runtime.settings.namespace, integration_id, parsed.id, handler.name
            ),
            attempt=attempt,
            outputs=dict(outputs),
            settings=runtime.settings,
            logger=logging.LoggerAdapter(
                logging.getLogger(f"dispatcher.handlers.{handler.name}"),
                {"order_id": parsed.id, "integration_id": integration_id, "handler": handler.name},
            ),
        )
        outputs[handler.name] = _run_step(handler, parsed, context)
    return {"order_id": parsed.id, "integration_id": integration_id, "steps": outputs}


def _run_step(handler: Handler, order: Order, context: HandlerContext) -> Mapping[str, Any]:
    extra = {
        "order_id": order.id,
        "integration_id": context.integration_id,
        "handler": handler.name,
    }
    try:
        output = handler.handle(order, context)
    except Exception as exc:
        log.warning("handler %s failed: %s", handler.name, _reason(exc), extra=extra)
        raise HandlerFailed(handler.name, context.integration_id, order.id, _reason(exc)) from exc
    if output is None:
        return {}
    if not isinstance(output, Mapping):
        raise HandlerFailed(
            handler.name,
            context.integration_id,
            order.id,
            f"returned {type(output).__name__}, expected a mapping or None",
        )
    try:
        # Outputs are stored in Redis and passed to later steps: only JSON goes through.
        return dict(json.loads(json.dumps(output)))
    except (TypeError, ValueError) as exc:
        raise HandlerFailed(
            handler.name,
            context.integration_id,
            order.id,
            f"returned a value that is not JSON-serialisable ({exc})",
        ) from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = "" if isinstance(exc, PermanentFailure) else f"{type(exc).__name__}: "
    return f"{kind}{text}" if text else type(exc).__name__
