"""One trace per order: OpenTelemetry tracing, off unless configured (issue 26).

**On and off.** Tracing is on in a process when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set and the ``otel`` extra is installed
(``pip install 'kombo-dispatcher[otel]'``); the SDK reads the other standard variables itself
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``...). Spans go to
the endpoint over OTLP/HTTP in batches. Off, nothing of OpenTelemetry is imported and every
function here returns at its first test of ``_on``; an endpoint set without the extra is one
WARNING line naming what to install.

**The shape of an order's trace.** A dispatch span per new order (poller or webhook) starts
the order's trace: a root linked to the sweep that found it, or the child of the webhook
request that brought it. Its W3C context travels in the job's meta (``trace``, as the
namespace does) so the worker's job span is its child, with the queue wait as an attribute;
each step is a child of the job span, and the vendor's HTTP (or SMTP) call a child of its
step. A job's first run leaves its context in the meta (``trace_first``): a retried or
replayed job's span links to it.

**Context leaves the building.** httpx clients made through :func:`instrument` get the
maintained httpx instrumentation: an HTTP client span per request and ``traceparent`` /
``tracestate`` headers. A handler gets the same through ``context.trace``
(:class:`HandlerTrace`).

**Trust.** A ``traceparent`` a webhook sender sends is a stranger's: it is cut to a bounded
length, parsed by the SDK's W3C propagator only, and becomes a *link* of the request's span,
never its parent (a sender cannot put spans into another order's trace). Attributes hold ids
and counts only, never a secret or the candidate's data.

**Processes.** Each process flushes on exit (the SDK's ``atexit`` hook); a forked work horse
leaves by ``os._exit``, so a job span ended in a process other than the one that configured
tracing flushes before the job returns.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx

from dispatcher.redact import protect_secrets
from dispatcher.untrusted import no_cookies

__all__ = [
    "FIRST_RUN_KEY",
    "HANDLER_TRACE",
    "META_KEY",
    "HandlerTrace",
    "carrier_of",
    "configure",
    "current",
    "current_ids",
    "dispatch_spans",
    "enabled",
    "ending_dispatch",
    "event",
    "flush",
    "headers",
    "install",
    "instrument",
    "job_span",
    "link_to_dispatch",
    "remote_link_span",
    "server_span",
    "set_attributes",
    "span",
    "stamp",
    "trace_id_of",
]

log = logging.getLogger("dispatcher.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INSTALL_HINT = "pip install 'kombo-dispatcher[otel]'"
# Job meta keys: the context the job belongs to, and its first run's (linked by later runs).
META_KEY = "trace"
FIRST_RUN_KEY = "trace_first"
# A traceparent is 55 characters; tracestate at most 32 members of 256: anything longer is not
# W3C and is not parsed at all.
_MAX_TRACEPARENT = 64
_MAX_TRACESTATE = 8192
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

_on = False
_provider: Any = None
_tracer: Any = None
_propagator: Any = None
_api: Any = None  # opentelemetry.trace, once on
_pid = 0
_NOOP: AbstractContextManager[None] = nullcontext()
_MetaT = TypeVar("_MetaT", bound=MutableMapping[str, Any])


def enabled() -> bool:
    """Whether this process exports spans."""
    return _on


def client_needed() -> bool:
    """Whether HTTP requests must go through an ``httpx.Client``: its instrumentation is how
    tracing sees them, and it mounts the proxies the environment names (``HTTPS_PROXY``,
    ``NO_PROXY``...). Otherwise the clients here send through their transport directly,
    without the client's per-request work (URL, header and cookie merging, the auth and
    redirect flows)."""
    return _on or bool(urllib.request.getproxies())


def configure(command: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process if the standard variables ask for it; once, at start.

    ``command`` (``poll``, ``worker``, ``web``...) becomes the resource's ``dispatcher.command``
    attribute, so a span says which process made it. Returns whether tracing is on.
    """
    env = os.environ if environ is None else environ
    variable = next((name for name in ENDPOINT_VARIABLES if env.get(name)), None)
    if _on or variable is None or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return _on
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "%s is set but OpenTelemetry is not installed: no traces are sent (%s)",
            variable,
            INSTALL_HINT,
        )
        return False
    # The exporter's headers carry the backend's API key (Honeycomb, Grafana Cloud...): masked
    # in every log line like the dispatcher's own secrets.
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        header_values = (item.partition("=")[2].strip() for item in env.get(name, "").split(","))
        protect_secrets(unquote(value) for value in header_values if value)
    resource = Resource.create({"dispatcher.command": command, "process.pid": os.getpid()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "kombo-dispatcher"}))
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the exporter reads its endpoint,
    # headers and timeout from the OTEL_EXPORTER_OTLP_* variables.
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def install(provider: Any) -> None:
    """Use ``provider`` (an SDK TracerProvider) for this process's spans; ``None`` turns
    tracing off again (tests)."""
    global _on, _provider, _tracer, _propagator, _pid, _api
    if provider is None:
        _on, _provider, _tracer = False, None, None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _api = trace
    _provider, _tracer = provider, provider.get_tracer("dispatcher")
    _propagator = TraceContextTextMapPropagator()
    _pid = os.getpid()
    _on = True


def flush() -> None:
    """Export every ended span now (a process about to ``os._exit``)."""
    if _on:
        _provider.force_flush(5000)


# -- spans --------------------------------------------------------------------------------


def _kind(name: str) -> Any:
    return _api.SpanKind[name.upper()]


def span(
    name: str, *, kind: str = "internal", attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """A span around the block, child of the current one (``None`` inside when off).

    An exception leaving the block is recorded on it and marks it failed."""
    if not _on:
        return _NOOP
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        name, kind=_kind(kind), attributes=_clean(attributes)
    )


def event(name: str, **attributes: Any) -> None:
    """An event on the current span (a retry, say)."""
    if _on:
        _api.get_current_span().add_event(name, _clean(attributes))


def set_attributes(target: Any = None, **attributes: Any) -> None:
    """Set attributes on ``target`` (a span from :func:`span`) or on the current span."""
    if _on:
        (target or _api.get_current_span()).set_attributes(_clean(attributes))


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # OTel accepts str, bool, int, float (and lists of them); None would be dropped with a
    # warning per call.
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def current_ids() -> tuple[str, str] | None:
    """The trace and span id (hex) of the current span, for log records; None without one."""
    if not _on:
        return None
    context = _api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# -- context in and out -------------------------------------------------------------------


def headers(into: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, added to ``into``."""
    carrier: MutableMapping[str, str] = {} if into is None else into
    if _on:
        _propagator.inject(carrier)
    return carrier


def stamp(meta: _MetaT) -> _MetaT:
    """Put the current span's context into a job's ``meta`` (nothing when off)."""
    if _on:
        carrier = headers()
        if carrier:
            meta[META_KEY] = dict(carrier)
    return meta


def _extract(carrier: Any) -> Any:
    """An OTel Context from a W3C carrier, bounded; an empty Context (a new trace) when it
    holds nothing valid."""
    from opentelemetry.context import Context

    if not isinstance(carrier, Mapping):
        return Context()
    parent = carrier.get("traceparent")
    state = carrier.get("tracestate")
    bounded: dict[str, str] = {}
    if isinstance(parent, str) and len(parent) <= _MAX_TRACEPARENT:
        bounded["traceparent"] = parent
        if isinstance(state, str) and len(state) <= _MAX_TRACESTATE:
            bounded["tracestate"] = state
    try:
        return _propagator.extract(bounded, context=Context())
    except Exception:  # a stranger's header must never break the request
        return Context()


def _link_to(carrier: Any) -> list[Any]:
    context = _api.get_current_span(_extract(carrier)).get_span_context()
    return [_api.Link(context)] if context.is_valid else []


def remote_link_span(
    name: str, remote: Mapping[str, str], *, kind: str = "server", **attributes: Any
) -> AbstractContextManager[Any]:
    """A span that starts a new trace, linked (not parented) to the context in ``remote``
    (a request's headers, untrusted): see "Trust" above."""
    if not _on:
        return _NOOP
    from opentelemetry.context import Context

    carrier = {"traceparent": remote.get("traceparent"), "tracestate": remote.get("tracestate")}
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        name,
        context=Context(),
        kind=_kind(kind),
        links=_link_to(carrier),
        attributes=_clean(attributes),
    )


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Awaitable[Any]])


def server_span(name: str) -> Callable[[_Endpoint], _Endpoint]:
    """Decorate an async Starlette endpoint: with tracing on, each request is a server span
    ``name`` (a new trace linked to the caller's ``traceparent``, see "Trust") with its
    answer's status."""

    def decorate(endpoint: _Endpoint) -> _Endpoint:
        @functools.wraps(endpoint)
        async def traced(*args: Any) -> Any:
            if not _on:
                return await endpoint(*args)
            request = args[-1]
            method, _, route = name.partition(" ")
            attributes = {"http.request.method": method, "http.route": route}
            with remote_link_span(name, request.headers, **attributes) as server:
                response = await endpoint(*args)
                server.set_attribute("http.response.status_code", response.status_code)
            return response

        return traced  # type: ignore[return-value]

    return decorate


def current() -> Any:
    """The current OTel context (to hand to :func:`dispatch_spans` from another thread)."""
    if not _on:
        return None
    from opentelemetry import context

    return context.get_current()


def dispatch_spans(
    integration_id: str,
    order_ids: Sequence[str],
    *,
    source: str,
    parents: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One started ``dispatch`` span per order: the start of the order's trace, a child of
    ``parents[order_id]`` (a context from :func:`current`) or a new trace linked to the
    current span (the sweep). End them with :func:`ending_dispatch`. Empty when off."""
    if not _on:
        return {}
    from opentelemetry.context import Context

    here = _api.get_current_span().get_span_context()
    links = [_api.Link(here)] if here.is_valid else []
    kind = _kind("producer")
    spans: dict[str, Any] = {}
    for order_id in order_ids:
        parent = (parents or {}).get(order_id)
        spans[order_id] = _tracer.start_span(
            "dispatch",
            context=parent if parent is not None else Context(),
            kind=kind,
            links=() if parent is not None else links,
            attributes={
                "dispatcher.order_id": order_id,
                "dispatcher.integration_id": integration_id,
                "dispatcher.source": source,
            },
        )
    return spans


def carrier_of(span_: Any) -> dict[str, str] | None:
    """The W3C carrier of a span from :func:`dispatch_spans` (``None`` for no span)."""
    if span_ is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=_api.set_span_in_context(span_))
    return carrier


class _Discard(list[Any]):
    def extend(self, _: Any) -> None:
        pass


@contextmanager
def _ending(spans: Mapping[str, Any], enqueued: list[Any]) -> Iterator[list[Any]]:
    try:
        yield enqueued
    except BaseException as exc:
        for item in spans.values():
            item.record_exception(exc)
            item.set_status(_error_status(exc))
        raise
    finally:
        done = {item.decode() if isinstance(item, bytes) else item for item in enqueued}
        for order_id, item in spans.items():
            item.set_attribute("dispatcher.enqueued", order_id in done)
            item.end()


def _error_status(exc: BaseException) -> Any:
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR, type(exc).__name__)


def ending_dispatch(spans: Mapping[str, Any]) -> AbstractContextManager[list[Any]]:
    """Around the write of :func:`dispatch_spans`'s orders: extend the yielded list with the
    ids enqueued; each span ends saying whether its order was (or with the error)."""
    if not spans:
        return nullcontext(_Discard())
    return _ending(spans, [])


def link_to_dispatch(meta: MutableMapping[str, Any], recorded: bytes | str | None) -> None:
    """A replay's job ``meta``: link its runs to the order's first trace, whose context is in
    the meta of the order's dispatch record (``recorded``, JSON as stored)."""
    if not _on or recorded is None:
        return
    try:
        original = json.loads(recorded)
    except ValueError:
        return
    carrier = original.get(META_KEY) if isinstance(original, dict) else None
    if isinstance(carrier, dict):
        meta[FIRST_RUN_KEY] = carrier


def job_span(
    name: str, job: Any, attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """The span of one run of an RQ ``job``: a child of the context in its meta, linked to
    its first run (a retry, a replay), with the queue wait; flushed at its end in a work horse.
    The caller saves the job's meta (it gains the first run's context)."""
    if not _on or job is None:
        return _NOOP
    return _job_span(name, job, attributes)


@contextmanager
def _job_span(name: str, job: Any, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
    from rq.utils import now

    meta = job.meta
    first = meta.get(FIRST_RUN_KEY)
    wait = (now() - job.enqueued_at).total_seconds() if job.enqueued_at else None
    try:
        with _tracer.start_as_current_span(
            name,
            context=_extract(meta.get(META_KEY)),
            kind=_kind("consumer"),
            links=_link_to(first) if first else (),
            attributes=_clean(
                {
                    "messaging.system": "rq",
                    "messaging.destination.name": job.origin,
                    "messaging.message.id": job.id,
                    "dispatcher.queue_wait_s": round(wait, 6) if wait is not None else None,
                    "dispatcher.retried": first is not None,
                    **(attributes or {}),
                }
            ),
        ) as current_span:
            if first is None:
                meta[FIRST_RUN_KEY] = dict(headers())
            yield current_span
    finally:
        if os.getpid() != _pid:  # a work horse: it leaves by os._exit, past atexit
            flush()


def instrument(client: httpx.Client) -> httpx.Client:
    """``client`` with HTTP client spans and ``traceparent`` on its requests (when on)."""
    if _on:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider)
    return client


class HandlerTrace:
    """The trace, as a handler sees it (``context.trace``): works the same when tracing is
    off (no headers, plain clients, no spans)."""

    __slots__ = ()

    def headers(self) -> dict[str, str]:
        """``traceparent``/``tracestate`` of the step's span, for a call the handler makes
        through a client of its own."""
        return dict(headers())

    def http_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client(**kwargs)`` whose requests are traced under the step; it keeps no
        cookies unless given ``cookies`` (see :func:`dispatcher.untrusted.no_cookies`)."""
        kwargs.setdefault("cookies", no_cookies())
        return instrument(httpx.Client(**kwargs))

    def span(
        self, name: str, *, kind: str = "internal", **attributes: Any
    ) -> AbstractContextManager[Any]:
        """A span of the handler's own inside the step (``kind``: ``internal``, ``client``...;
        attributes: ids and counts only, no candidate data)."""
        return span(name, kind=kind, attributes=attributes)

    @property
    def context(self) -> Any:
        """The OpenTelemetry context of the step (``None`` when tracing is off)."""
        return current()


HANDLER_TRACE = HandlerTrace()


def trace_id_of(meta: Any) -> str | None:
    """The trace id in a job's meta (no OpenTelemetry needed: ``dispatcher show``)."""
    carrier = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    parent = carrier.get("traceparent") if isinstance(carrier, Mapping) else None
    match = _TRACEPARENT.fullmatch(parent) if isinstance(parent, str) else None
    return match.group(1) if match else None
