"""Tracing (issue 26) in one process, with the SDK's in-memory exporter: the span tree of an
order from the sweep (or the webhook) through the queue to the vendor, what a span may hold,
and that tracing off costs nothing (no OpenTelemetry import at all).

The end-to-end run over real processes and OTLP is tests/e2e/test_tracing_e2e.py.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis import Redis
from rq import Queue, SimpleWorker

from dispatcher import Settings, tracing
from dispatcher.kombo.client import KomboClient
from dispatcher.logs import configure_logging
from dispatcher.ops.order_record import describe_order
from dispatcher.ops.views import render_order
from dispatcher.poller.poller import Poller
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.web.webhook import WEBHOOK_PATH
from dispatcher.worker.jobs import Runtime, install_runtime
from support import order_payload
from support.webhook import AppClient, event_body, make_app, make_ledger, signed

pytestmark = pytest.mark.redis

FOREIGN_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def _hex(value: int, width: int = 16) -> str:
    return format(value, f"0{width}x")


def _named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def _children(finished: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in finished
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def _one(items: list[ReadableSpan]) -> ReadableSpan:
    assert len(items) == 1, [span.name for span in items]
    return items[0]


def _work(redis: Redis, queue: Queue, vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_URL", vendor.url)
    settings = Settings(_env_file=None, DISPATCHER_HANDLERS="provision_http")  # type: ignore[call-arg]
    runtime = Runtime.from_settings(settings)
    install_runtime(runtime)
    try:
        SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER).work(burst=True)
    finally:
        for handler in runtime.chain:
            handler.close()  # type: ignore[attr-defined]


def _status(span: ReadableSpan) -> Any:
    # The httpx instrumentation's attribute names: the stable ones once
    # OTEL_SEMCONV_STABILITY_OPT_IN=http is set, the older ones by default.
    attributes = span.attributes or {}
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def test_an_order_from_the_sweep_is_one_trace_down_to_the_vendor_call(
    spans: InMemorySpanExporter,
    redis: Redis,
    vendor: VendorAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = Simulator(1, 2, closed=0, seed=3)
    integration = sim.integration_ids[0]
    ledger = Ledger(
        redis, Queue("dispatcher-orders", connection=redis), "dispatcher",
        job_options=JobOptions(retry_intervals=(0,)),
    )  # fmt: skip
    with sim.serve() as server, KomboClient(DEFAULT_API_KEY, server.url, retry_budget=0) as c:
        assert Poller(c, ledger, sim.integration_ids).sweep().orders_new == 2
    vendor.failures = [503]  # the first job fails its step once, then is retried
    _work(redis, ledger.queue, vendor, monkeypatch)
    finished = spans.get_finished_spans()

    sweep = _one(_named(finished, "sweep"))
    assert sweep.parent is None
    assert dict(sweep.attributes or {}) == {
        "dispatcher.integration_id": integration,
        "dispatcher.full": True,
        "dispatcher.pages": 1,
        "dispatcher.orders_seen": 2,
        "dispatcher.orders_new": 2,
    }
    kombo = _one(_children(finished, sweep))
    assert kombo.name == "kombo GET"
    [http_get] = _children(finished, kombo)
    assert http_get.kind == SpanKind.CLIENT
    assert _status(http_get) == 200

    dispatches = _named(finished, "dispatch")
    assert len(dispatches) == 2
    vendor_parents = {call.headers["traceparent"].split("-")[2] for call in vendor.calls}
    for dispatch in dispatches:
        # Each order's trace starts at its dispatch, linked to the sweep that found it.
        assert dispatch.parent is None
        assert [link.context.span_id for link in dispatch.links] == [sweep.context.span_id]
        attributes = dict(dispatch.attributes or {})
        assert set(attributes) == {
            "dispatcher.order_id", "dispatcher.integration_id", "dispatcher.source",
            "dispatcher.enqueued",
        }  # fmt: skip
        assert attributes["dispatcher.enqueued"] is True
        runs = _children(finished, dispatch)
        assert {run.name for run in runs} == {"process_order"}
        for run in runs:
            assert run.kind == SpanKind.CONSUMER
            assert (run.attributes or {})["dispatcher.queue_wait_s"] >= 0
            [step] = _children(finished, run)
            assert step.name == "step provision_http"
            [post] = _children(finished, step)
            assert post.kind == SpanKind.CLIENT and post.name == "POST"
            # The vendor was told the client span as the parent of its own work.
            assert _hex(post.context.span_id) in vendor_parents
            assert step.attributes is not None and post.attributes is not None
            if _status(post) == 503:
                assert step.attributes["dispatcher.outcome"] == "retry"
            else:
                assert step.attributes["dispatcher.outcome"] == "completed"
    # The retried order: two runs in its trace, the second linked to the first.
    [retried] = [d for d in dispatches if len(_children(finished, d)) == 2]
    first, second = sorted(_children(finished, retried), key=lambda span: span.start_time or 0)
    assert first.links == ()
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert (second.attributes or {})["dispatcher.retried"] is True
    assert len(vendor.calls) == 3
    # No span holds the candidate's data.
    candidates = {json.dumps(order["candidate"]) for order in sim.orders(integration)}
    dumped = " ".join(span.to_json() for span in finished)
    for candidate in candidates:
        for value in json.loads(candidate).values():
            if isinstance(value, str) and "@" in value:
                assert value not in dumped


def test_a_webhook_delivery_starts_the_trace_and_a_sender_traceparent_is_only_a_link(
    spans: InMemorySpanExporter,
    redis: Redis,
    vendor: VendorAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = make_ledger(redis)
    client = AppClient(make_app(ledger))
    body = event_body(order_payload("WEBHOOK1"), "greenhouse:T1")
    sender = {"traceparent": f"00-{FOREIGN_TRACE}-b7ad6b7169203331-01"}
    assert client.post(WEBHOOK_PATH, content=body, headers=signed(body) | sender).status_code == 200
    # A garbled or huge traceparent is ignored: the delivery is answered as usual.
    for garbage in (
        "00-zz-1-01",
        "x" * 100_000,
        f"00-{FOREIGN_TRACE}-b7ad6b7169203331-01,{'y' * 9000}",
    ):
        other = event_body(order_payload(f"W{len(garbage)}"), "greenhouse:T1")
        headers = signed(other) | {"traceparent": garbage, "tracestate": "k=" + garbage}
        assert client.post(WEBHOOK_PATH, content=other, headers=headers).status_code == 200
    _work(redis, ledger.queue, vendor, monkeypatch)
    finished = spans.get_finished_spans()

    requests = _named(finished, "POST " + WEBHOOK_PATH)
    assert len(requests) == 4
    for request in requests:
        assert request.parent is None and request.kind == SpanKind.SERVER
        assert _hex(request.context.trace_id, 32) != FOREIGN_TRACE
        assert (request.attributes or {})["http.response.status_code"] == 200
    linked = [request for request in requests if request.links]
    assert len(linked) == 1
    assert _hex(linked[0].links[0].context.trace_id, 32) == FOREIGN_TRACE
    # Each order's trace: request -> dispatch -> job -> step -> POST, and the vendor got it.
    for request in requests:
        dispatch = _one(_children(finished, request))
        assert dispatch.name == "dispatch"
        run = _one(_children(finished, dispatch))
        post = _one(_children(finished, _one(_children(finished, run))))
        assert any(
            call.headers["traceparent"].split("-")[1:3]
            == [_hex(post.context.trace_id, 32), _hex(post.context.span_id)]
            for call in vendor.calls
        )

    # `dispatcher show` names the order's trace.
    [record] = describe_order(
        redis, "dispatcher", "dispatcher-orders", "WEBHOOK1", ["greenhouse:T1"]
    )
    assert record.trace_id == _hex(linked[0].context.trace_id, 32)
    assert f"trace        {record.trace_id}" in render_order(record, now=0)
    assert record.as_dict()["trace_id"] == record.trace_id
    # Once the job has expired, the trace is read from the order's dispatch record.
    redis.delete(f"rq:job:{ledger.job_id('greenhouse:T1', 'WEBHOOK1')}")
    [gone] = describe_order(redis, "dispatcher", "dispatcher-orders", "WEBHOOK1", ["greenhouse:T1"])
    assert gone.job_status is None and gone.trace_id == record.trace_id


def test_json_log_records_carry_the_trace_inside_a_span(spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        logger = logging.getLogger("dispatcher.test")
        logger.info("outside")
        with tracing.span("inside") as span:
            logger.info("inside")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        configure_logging("WARNING")
    assert "trace_id" not in lines[0]
    context = span.get_span_context()
    assert lines[1]["trace_id"] == _hex(context.trace_id, 32)
    assert lines[1]["span_id"] == _hex(context.span_id)


def test_a_handler_gets_the_steps_context_and_a_traced_client(
    spans: InMemorySpanExporter, vendor: VendorAPI
) -> None:
    trace = tracing.HANDLER_TRACE
    vendor.cookie = "session=first-order; Path=/"
    with tracing.span("step custom") as step:
        headers = trace.headers()
        with trace.http_client() as client:
            client.post(vendor.url, json={})
            client.post(vendor.url, json={})  # as for the next order: no cookie kept
    assert [call.headers.get("cookie") for call in vendor.calls] == [None, None]
    assert headers["traceparent"].split("-")[2] == _hex(step.get_span_context().span_id)
    post = next(span for span in spans.get_finished_spans() if span.name == "POST")
    assert post.parent is not None and post.parent.span_id == step.get_span_context().span_id
    assert vendor.calls[0].headers["traceparent"].split("-")[2] == _hex(post.context.span_id)


def test_off_the_hooks_do_nothing_and_keep_no_state() -> None:
    assert not tracing.enabled()
    meta: dict[str, Any] = {}
    with tracing.span("x") as span:
        assert span is None
    assert tracing.stamp(meta) == {} and tracing.headers() == {}
    assert tracing.dispatch_spans("i", ["o"], source="poll") == {}
    assert tracing.current_ids() is None
    assert tracing.HANDLER_TRACE.headers() == {}


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_variables_the_dispatcher_imports_nothing_of_opentelemetry() -> None:
    done = _python(
        """
        import sys
        import httpx, redis, rq, starlette  # redis-py imports OpenTelemetry's metrics itself
        def loaded():
            return {name for name in sys.modules if name.startswith("opentelemetry")}
        before = loaded()
        from click.testing import CliRunner
        from dispatcher.cli import cli
        import dispatcher.worker.run, dispatcher.web.app, dispatcher_handlers.provision_http
        result = CliRunner().invoke(cli, ["handlers", "--help"])
        assert result.exit_code == 0, result.output
        print(sorted(loaded() - before))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_endpoint_without_the_extra_is_one_warning_naming_what_to_install() -> None:
    done = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # the extra is not installed
        from dispatcher import tracing
        from dispatcher.logs import configure_logging
        configure_logging("INFO")
        print(tracing.configure("worker"), tracing.enabled())
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"
    [line] = done.stderr.splitlines()
    assert "WARNING" in line
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed" in line
    assert "pip install 'kombo-dispatcher[otel]'" in line


def test_the_standard_variables_configure_the_sdk() -> None:
    done = _python(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from dispatcher import tracing
        assert tracing.configure("poll")
        provider = tracing._provider
        attributes = provider.resource.attributes
        from dispatcher.redact import scrub
        print(attributes["service.name"], attributes["deployment.environment"],
              attributes["dispatcher.command"], type(provider.sampler).__name__,
              scrub("sent x-honeycomb-team=hcKey0123456789"))
        """,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:9/v1/traces",
        OTEL_SERVICE_NAME="dispatcher-eu",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging",
        OTEL_TRACES_SAMPLER="always_off",
        OTEL_EXPORTER_OTLP_HEADERS="x-honeycomb-team=hcKey0123456789,x-other=1",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "dispatcher-eu", "staging", "poll", "StaticSampler", "sent", "x-honeycomb-team=***",
    ]  # fmt: skip


def test_a_result_put_its_write_job_and_the_kombo_write_are_one_trace(
    spans: InMemorySpanExporter, redis: Redis, redis_url: str
) -> None:
    from dispatcher.settings import load_settings
    from dispatcher.store.keys import Keys
    from dispatcher.web.app import create_app
    from dispatcher.worker.results import WriterRuntime, install_writer

    sim = Simulator(1, 1, closed=0, seed=4)
    integration = sim.integration_ids[0]
    [order] = sim.orders(integration)
    redis.hset(Keys("dispatcher").seen(integration), order["id"], "1700000000")
    with sim.serve() as kombo:
        settings = load_settings(
            REDIS_URL=redis_url, DISPATCHER_API_TOKEN="results-token-0123456789",
            KOMBO_API_KEY=DEFAULT_API_KEY, KOMBO_BASE_URL=kombo.url,
        )  # fmt: skip
        answer = AppClient(create_app(settings, redis)).request(
            "PUT",
            f"/orders/{integration}/{order['id']}/result",
            json={"status": "COMPLETED", "result_url": "https://vendor.example/r/1"},
            headers={"Authorization": "Bearer results-token-0123456789"},
        )
        assert answer.status_code == 202, answer.text
        runtime = WriterRuntime.from_settings(settings, redis)
        install_writer(runtime)
        try:
            queue = Queue(settings.results_queue, connection=redis, serializer=JOB_SERIALIZER)
            SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER).work(burst=True)
        finally:
            install_writer(None)
            runtime.writer.client.close()
    finished = spans.get_finished_spans()
    put = _one(_named(finished, "PUT /orders/{integration_id}/{order_id}/result"))
    assert put.parent is None and (put.attributes or {})["http.response.status_code"] == 202
    job = _one(_children(finished, put))
    assert job.name == "write_result" and (job.attributes or {})["dispatcher.outcome"] == "written"
    kombo_put = _one(_children(finished, job))
    assert kombo_put.name == "kombo PUT"
    http_put = _one(_children(finished, kombo_put))
    assert http_put.kind == SpanKind.CLIENT and _status(http_put) == 200


def test_a_replayed_order_starts_a_trace_linked_to_its_first_one(
    spans: InMemorySpanExporter,
    redis: Redis,
    vendor: VendorAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatcher.ops.replay import replay

    sim = Simulator(1, 1, closed=0, seed=8)
    integration = sim.integration_ids[0]
    ledger = Ledger(redis, Queue("dispatcher-orders", connection=redis), "dispatcher")
    with sim.serve() as server, KomboClient(DEFAULT_API_KEY, server.url, retry_budget=0) as c:
        assert Poller(c, ledger, sim.integration_ids).sweep().orders_new == 1
        _work(redis, ledger.queue, vendor, monkeypatch)
        result = replay(ledger, c, integration, ["provision_http"], force=True)
        assert len(result.queued) == 1
        _work(redis, ledger.queue, vendor, monkeypatch)
    finished = spans.get_finished_spans()
    dispatch = _one(_named(finished, "dispatch"))
    replayed = _one(_named(finished, "replay"))
    assert replayed.parent is None and replayed.context.trace_id != dispatch.context.trace_id
    first, again = sorted(_named(finished, "process_order"), key=lambda s: s.start_time or 0)
    assert first.parent is not None and first.parent.span_id == dispatch.context.span_id
    assert again.parent is not None and again.parent.span_id == replayed.context.span_id
    # The replay's run links to the order's first trace (its dispatch).
    assert [link.context.span_id for link in again.links] == [dispatch.context.span_id]
    assert len(vendor.calls) == 2
