"""The RQ job entry point: run the handler chain on one order, each step once.

RQ calls job functions by import path, in whatever worker process pops the job, so the
function cannot be handed its settings and handlers directly: the worker installs a
:class:`Runtime` for the process at start (:func:`install_runtime`), and a plain ``rq worker``
builds one from the environment on first use.

Every completed step is recorded in Redis (``{ns}:steps:{integration}:{order}``,
dispatcher.worker.steps) with its output before the next step starts; a retried or
re-delivered job skips recorded steps and hands their recorded outputs to the later ones.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rq import get_current_job
from rq.job import Job
from rq.timeouts import BaseTimeoutException, JobTimeoutException

from dispatcher import tracing
from dispatcher.handler import Handler, HandlerContext, PermanentFailure, RetryLater
from dispatcher.kombo.models import Order
from dispatcher.logs import escape_controls
from dispatcher.plugins import load_handlers
from dispatcher.redact import scrub
from dispatcher.settings import Settings, load_settings
from dispatcher.store.failures import clean_reason, job_timeout_reason
from dispatcher.store.keys import Keys
from dispatcher.store.replication import ReplicaAck
from dispatcher.store.rq_jobs import PendingFinish
from dispatcher.store.timeline import chain_done, mark_provisioned
from dispatcher.worker._slot import ProcessSlot
from dispatcher.worker.deadlines import deadline
from dispatcher.worker.steps import MemoryEffects, StepStore, step_key, steps_read_at_start

__all__ = [
    "ForeignNamespace",
    "HandlerFailed",
    "HandlerTimeout",
    "RunReport",
    "Runtime",
    "install_runtime",
    "process_order",
    "take_report",
]

log = logging.getLogger("dispatcher.jobs")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a worker process needs to run jobs: settings and the loaded handler chain."""

    settings: Settings
    chain: list[Handler]

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings=settings, chain=load_handlers(settings.handlers))


_runtime: ProcessSlot[Runtime] = ProcessSlot(lambda: Runtime.from_settings(load_settings()))


def install_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one jobs of this process use (``None`` to reset)."""
    _runtime.install(runtime)


def current_runtime() -> Runtime:
    """The installed runtime, built from the environment when none was installed."""
    return _runtime.get()


class HandlerFailed(Exception):
    """A handler raised; the message names the handler and the order (RQ shows it).

    The message is one line with secrets masked, whatever the ids and the reason hold: RQ
    stores it, and ``dispatcher failed`` reads the handler and reason back from it.
    """

    def __init__(self, handler: str, integration_id: str, order_id: str, reason: str) -> None:
        self.handler = handler
        self.integration_id = integration_id
        self.order_id = order_id
        self.reason = clean_reason(reason)
        super().__init__(
            f"handler {handler} failed on order {escape_controls(order_id)} "
            f"(integration {escape_controls(integration_id)}): {self.reason}"
        )


class HandlerTimeout(BaseTimeoutException):
    """A handler ran past its timeout (retryable)."""


class ForeignNamespace(Exception):
    """The job belongs to another namespace than the worker's: running it would run the wrong
    chain and write step records under the wrong keys. Never retried."""

    def __init__(self, job_namespace: str, worker_namespace: str) -> None:
        self.job_namespace = job_namespace
        self.worker_namespace = worker_namespace
        super().__init__(
            f"job of namespace {escape_controls(job_namespace)} refused by a worker of namespace "
            f"{escape_controls(worker_namespace)} (DISPATCHER_NAMESPACE): run "
            f"`DISPATCHER_NAMESPACE={escape_controls(job_namespace)} dispatcher worker` "
            "on its queue, then `dispatcher retry`"
        )


@dataclass(slots=True)
class RunReport:
    """What one run of a job did, for the worker's outcome line: the steps it ran and those
    an earlier attempt had completed."""

    ran: list[str]
    skipped: list[str]


# Job id -> the report of its last run in this process (the worker takes it when it logs the
# job's outcome; a stock ``rq worker`` never does, so it is bounded).
_reports: dict[str, RunReport] = {}
_reports_lock = threading.Lock()
_MAX_REPORTS = 1024


def take_report(job_id: str) -> RunReport | None:
    """The report of the last run of ``job_id`` in this process, removed."""
    with _reports_lock:
        return _reports.pop(job_id, None)


def _keep_report(job_id: str, report: RunReport) -> None:
    with _reports_lock:
        if len(_reports) >= _MAX_REPORTS:
            _reports.pop(next(iter(_reports)))
        _reports[job_id] = report


def process_order(
    integration_id: str,
    order: dict[str, Any],
    namespace: str | None = None,
    handlers: list[str] | None = None,
) -> dict[str, Any]:
    """Run every configured handler, in order, on one order; return their outputs.

    Steps recorded as completed by an earlier attempt are skipped; their outputs are passed on.
    ``namespace`` is the dispatching namespace (jobs queued before it was recorded have none:
    they are the worker's own); a worker of another namespace refuses the job, for good.
    ``handlers`` restricts the run to those steps of the chain (``dispatcher replay``).
    With tracing on, the run is one span of the order's trace (:mod:`dispatcher.tracing`).
    """
    job = get_current_job()
    with tracing.job_span(
        "process_order",
        job,
        {"dispatcher.integration_id": integration_id, "dispatcher.order_id": order.get("id")},
    ):
        return _process_order(job, integration_id, order, namespace, handlers)


def _process_order(
    job: Job | None,
    integration_id: str,
    order: dict[str, Any],
    namespace: str | None,
    handlers: list[str] | None,
) -> dict[str, Any]:
    runtime = current_runtime()
    settings = runtime.settings
    chain = _chain_for(runtime, job, namespace, handlers)
    parsed = Order.model_validate(order)
    store = (
        StepStore(
            job.connection,
            Keys(settings.namespace),
            integration_id,
            parsed.id,
            settings.result_ttl,
            ack=ReplicaAck.from_settings(settings),
        )
        if job is not None
        else None
    )
    attempt, completed = (
        store.begin(steps_read_at_start(job, store.key)) if store is not None else (1, {})
    )
    if job is not None and store is not None:
        # For `dispatcher failed` / `show`: RQ's own retry count misses crash recoveries,
        # manual retries and permanent failures. Saved with the next step record (or
        # failure), in its round trip: a worker killed before that leaves the last attempt's
        # number, and the steps hash's count is the true one.
        job.meta["attempt"] = attempt
        store.defer("HSET", job.key, "meta", job.serializer.dumps(job.meta))
    outputs: dict[str, Mapping[str, Any]] = dict(completed)
    report = RunReport(ran=[], skipped=[])
    if job is not None:
        _keep_report(job.id, report)
    # The step whose record also marks the chain's end (one round trip for both); none when
    # every step was completed by an earlier attempt.
    to_run = [handler.name for handler in chain if handler.name not in outputs]
    last = to_run[-1] if to_run else None
    for handler in chain:
        if handler.name in outputs:
            report.skipped.append(handler.name)
            log.debug(
                "step %s already completed, skipped",
                handler.name,
                extra=_extra(integration_id, parsed.id, handler.name),
            )
            continue
        context = _context(
            runtime, job, store, handler, integration_id, parsed.id, outputs, attempt
        )
        try:
            output = _run_step(handler, parsed, context, settings.timeout_for(handler.name))
        except HandlerFailed as exc:
            if store is not None:
                store.failed(handler.name)
            if job is not None and isinstance(exc.__cause__, PermanentFailure):
                job.retries_left = 0  # RQ reads this on the same object: no retry
            raise
        if store is not None:
            # One clock reading, to the millisecond, for the step's record and the chain's
            # end: two readings, each rounded, once put the end before its last step.
            done_at = round(time.time(), 3)
            # At the chain's end: the order's timeline, and what `status` reads for orders
            # that never get a result.
            chain_end = (
                chain_done(
                    Keys(settings.namespace), integration_id, parsed.id,
                    [*outputs, handler.name], int(settings.seen_retention), done_at,
                )
                if handler.name == last
                else None
            )  # fmt: skip
            pending = _pending_finish(job) if chain_end is not None else None
            steps = {**outputs, handler.name: output}
            result = None if pending is None else _result(parsed.id, integration_id, steps)
            finish = None if pending is None else (pending, result)
            store.complete(
                handler.name, output, chain_end=chain_end, finish=finish, completed_at=done_at
            )
        report.ran.append(handler.name)
        outputs[handler.name] = output
    if store is not None:
        store.flush()  # no step ran
    if job is not None and last is None:
        # Every step was done before: the chain's end is recorded on its own.
        mark_provisioned(
            job.connection,
            Keys(settings.namespace),
            integration_id,
            parsed.id,
            list(outputs),
            timeline_ttl=int(settings.seen_retention),
        )
    return _result(parsed.id, integration_id, outputs)


def _result(
    order_id: str, integration_id: str, outputs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    return {"order_id": order_id, "integration_id": integration_id, "steps": outputs}


def _pending_finish(job: Job | None) -> PendingFinish | None:
    """The job's success, when the worker that started it lets the last step's record carry
    it (dispatcher.store.rq_jobs.PendingFinish; the threaded worker does)."""
    pending: PendingFinish | None = getattr(job, "_dispatcher_finish", None)
    return pending


def _chain_for(
    runtime: Runtime, job: Job | None, namespace: str | None, names: list[str] | None
) -> list[Handler]:
    """The steps to run: the worker's chain, or only the named steps of it (in chain order).
    A job of another namespace, or naming a step the worker lacks, fails for good."""
    worker_namespace = runtime.settings.namespace
    problem: Exception | None = None
    if namespace is not None and namespace != worker_namespace:
        problem = ForeignNamespace(namespace, worker_namespace)
    elif names is not None:
        loaded = {handler.name for handler in runtime.chain}
        missing = [name for name in names if name not in loaded]
        if missing:
            problem = PermanentFailure(
                f"handler {', '.join(missing)} is not in this worker's chain (DISPATCHER_HANDLERS)"
            )
    if problem is not None:
        if job is not None:
            job.retries_left = 0  # another worker of this namespace would refuse it too
        raise problem
    if names is None:
        return runtime.chain
    return [handler for handler in runtime.chain if handler.name in names]


def _context(
    runtime: Runtime,
    job: Job | None,
    store: StepStore | None,
    handler: Handler,
    integration_id: str,
    order_id: str,
    outputs: Mapping[str, Mapping[str, Any]],
    attempt: int,
) -> HandlerContext:
    return HandlerContext(
        integration_id=integration_id,
        order_id=order_id,
        job_id=job.id if job is not None else "-",
        handler_name=handler.name,
        idempotency_key=step_key(
            runtime.settings.namespace, integration_id, order_id, handler.name
        ),
        attempt=attempt,
        outputs=dict(outputs),
        settings=runtime.settings,
        logger=logging.LoggerAdapter(
            logging.getLogger(f"dispatcher.handlers.{handler.name}"),
            _extra(integration_id, order_id, handler.name),
        ),
        effects=store.effects(handler.name) if store is not None else MemoryEffects(),
        trace=tracing.HANDLER_TRACE,
    )


def _extra(integration_id: str, order_id: str, handler: str) -> dict[str, str]:
    return {"order_id": order_id, "integration_id": integration_id, "handler": handler}


def _run_step(
    handler: Handler, order: Order, context: HandlerContext, timeout: float
) -> Mapping[str, Any]:
    extra = _extra(context.integration_id, order.id, handler.name)
    try:
        output = _handle(handler, order, context, timeout)
    except Exception as exc:
        reason = clean_reason(_reason(exc))
        if isinstance(exc, HandlerTimeout):
            reason = f"timed out after {timeout:g}s"
        elif isinstance(exc, JobTimeoutException):
            # The job's deadline, met during this step: raised bare in a threaded worker
            # ("JobTimeoutException"), RQ's own wording in a work horse. Name the setting.
            job = get_current_job()
            reason = job_timeout_reason(job.timeout if job is not None else None)
        # The worker logs the job's outcome (one line); this one is for debugging.
        log.debug("handler %s failed: %s", handler.name, reason, extra=extra)
        raise HandlerFailed(handler.name, context.integration_id, order.id, reason) from exc
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
        # Outputs are stored in Redis and passed to later steps: only JSON goes through, and
        # no secret (a vendor's answer may echo the token it was sent).
        return dict(_scrub_json(json.loads(json.dumps(output))))
    except (TypeError, ValueError) as exc:
        raise HandlerFailed(
            handler.name,
            context.integration_id,
            order.id,
            f"returned a value that is not JSON-serialisable ({exc})",
        ) from None


def _handle(
    handler: Handler, order: Order, context: HandlerContext, timeout: float
) -> Mapping[str, Any] | None:
    attributes = {"dispatcher.handler": handler.name, "dispatcher.attempt": context.attempt}
    with tracing.span(f"step {handler.name}", attributes=attributes) as step_span:
        try:
            # A timer, not SIGALRM: RQ's own job timeout already owns the alarm in the work
            # horse, and jobs run in threads with --threads. One watcher thread keeps every
            # deadline.
            with deadline(timeout, HandlerTimeout):
                output = handler.handle(order, context)
        except Exception as exc:
            tracing.set_attributes(step_span, **{"dispatcher.outcome": _outcome(exc)})
            raise
        tracing.set_attributes(step_span, **{"dispatcher.outcome": "completed"})
    return output


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, HandlerTimeout | JobTimeoutException):
        return "timeout"
    return "permanent_failure" if isinstance(exc, PermanentFailure) else "retry"


def _scrub_json(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(key): _scrub_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_json(item) for item in value]
    return value


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = "" if isinstance(exc, PermanentFailure | RetryLater) else f"{type(exc).__name__}: "
    return f"{kind}{text}" if text else type(exc).__name__
