"""Tracing end to end over real processes (issue 26): ``dispatcher poll`` (or ``web``) ->
Redis -> ``dispatcher worker`` (forked work horses) -> the vendor stand-in, which records each
call's headers, with every process exporting OTLP/HTTP to a receiver here that decodes the
protobuf. Every provisioning POST carries a ``traceparent`` whose trace holds the poller's
(or web process's) spans and the worker's, the step and the HTTP client span included; a
retried job links to its first run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from _webhook_support import event_body, signed
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from _support import dispatcher_env, dispatcher_web, wait_until
from dispatcher.testing import free_port
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.simulator import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.web.webhook import WEBHOOK_PATH

pytestmark = pytest.mark.redis
SECRET = "kombo-test-secret"


@dataclass(frozen=True)
class Span:
    """One exported span, as the receiver decoded it."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    command: str  # the resource's dispatcher.command: the process that made the span
    pid: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) on a free port."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        decoded = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    decoded.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in span.links),
                            command=str(resource.get("dispatcher.command")),
                            pid=int(resource.get("process.pid", 0)),
                        )
                    )
        with self.lock:
            self.spans.extend(decoded)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return sorted(
                (s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def span_tree(spans: list[Span]) -> list[str]:
    """The spans of one trace as indented lines: name, duration, process."""
    by_parent: dict[str, list[Span]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        by_parent.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in by_parent.get(parent, []):
            link = f" (linked to {len(span.links)})" if span.links else ""
            lines.append(f"{'  ' * depth}{span.name}  {span.ms:.1f} ms  [{span.command}]{link}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def _env(redis_url: str, receiver: Receiver, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in dispatcher_env(redis_url).items() if not k.startswith("OTEL_")}
    return {
        **clean,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "dispatcher-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "DISPATCHER_RETRY_BACKOFF": "0",
        **extra,
    }


def _run(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _parent(call_headers: dict[str, str]) -> tuple[str, str]:
    _, trace_id, span_id, _ = call_headers["traceparent"].split("-")
    return trace_id, span_id


def _check_worker_half(spans: list[Span], vendor_span: str) -> Span:
    """The worker's part of one order's trace, down to the vendor call: its job span."""
    [post] = [s for s in spans if s.span_id == vendor_span]
    assert post.command == "worker" and post.name == "POST" and post.kind == 3  # CLIENT
    by_id = {s.span_id: s for s in spans}
    step = by_id[post.parent_id]
    assert step.name == "step provision_http" and step.command == "worker"
    job = by_id[step.parent_id]
    assert job.name == "process_order" and job.command == "worker"
    assert job.attributes["dispatcher.queue_wait_s"] >= 0
    return job


def test_each_provisioning_call_carries_a_trace_holding_the_poller_and_the_worker(
    receiver: Receiver, redis_url: str, vendor: VendorAPI, mailbox: Mailbox
) -> None:
    sim = Simulator(1, 3, closed=0, seed=5)
    vendor.failures = [503]  # one job fails its first attempt: retried, linked to its first run
    with sim.serve() as kombo:
        env = _env(
            redis_url, receiver,
            KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=sim.integration_ids[0],
            DISPATCHER_HANDLERS="provision_http,notify_email",
            PROVISION_URL=vendor.url, SMTP_URL=mailbox.url, NOTIFY_FROM="Acme <t@acme.example>",
        )  # fmt: skip
        _run(env, "poll", "--once")
        _run(env, "worker", "--burst")

    assert len(vendor.calls) == 4
    traces = {_parent(call.headers)[0] for call in vendor.calls}
    assert len(traces) == 3  # one trace per order
    for call in vendor.calls:
        trace_id, span_id = _parent(call.headers)
        wait_until(lambda t=trace_id, s=span_id: any(x.span_id == s for x in receiver.trace(t)),
                   what="the worker's spans")  # fmt: skip
        spans = receiver.trace(trace_id)
        job = _check_worker_half(spans, span_id)
        by_id = {s.span_id: s for s in spans}
        dispatch = by_id[job.parent_id]
        assert dispatch.name == "dispatch" and dispatch.command == "poll"
        assert dispatch.attributes["dispatcher.order_id"] in {
            o["id"] for o in sim.orders(sim.integration_ids[0])
        }
        # Linked to the poller's sweep (a trace of its own, with its Kombo requests).
        [(sweep_trace, sweep_id)] = dispatch.links
        sweep = [s for s in receiver.trace(sweep_trace) if s.span_id == sweep_id]
        assert [s.name for s in sweep] == ["sweep"]
        names = {s.name for s in spans}
        assert {"step notify_email", "smtp send"} <= names or job.attributes.get(
            "dispatcher.retried"
        ) is False
    # The retried order: two job spans in its trace, the second linked to the first.
    retried = [t for t in traces if sum(s.name == "process_order" for s in receiver.trace(t)) == 2]
    assert len(retried) == 1
    first, second = [s for s in receiver.trace(retried[0]) if s.name == "process_order"]
    assert second.links == ((first.trace_id, first.span_id),)
    assert first.pid == second.pid  # the worker's resource; each ran in a forked work horse

    Path(os.environ.get("DISPATCHER_TRACE_TREE", os.devnull)).write_text(
        json.dumps([s.__dict__ for s in receiver.trace(retried[0])], default=str)
    )
    print("\n".join(span_tree(receiver.trace(retried[0]))))


def test_a_webhook_delivery_is_one_trace_from_the_request_to_the_vendor_call(
    receiver: Receiver, redis_url: str, vendor: VendorAPI, tmp_path: Path
) -> None:
    sim = Simulator(1, 1, closed=0, seed=6)
    [order] = sim.orders(sim.integration_ids[0])
    with sim.serve() as kombo:
        env = _env(
            redis_url, receiver,
            KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=sim.integration_ids[0], KOMBO_WEBHOOK_SECRET=SECRET,
            DISPATCHER_WEBHOOK_CONFIRM="false", DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor.url,
        )  # fmt: skip
        body = event_body(order, sim.integration_ids[0])
        foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with dispatcher_web(env, tmp_path / "web.log") as url:
            answer = httpx.post(
                url + WEBHOOK_PATH, content=body, headers=signed(body) | {"traceparent": foreign}
            )
            assert answer.status_code == 200, answer.text
        _run(env, "worker", "--burst")

    [call] = vendor.calls
    trace_id, span_id = _parent(call.headers)
    wait_until(lambda: any(s.span_id == span_id for s in receiver.trace(trace_id)), what="spans")
    spans = receiver.trace(trace_id)
    job = _check_worker_half(spans, span_id)
    by_id = {s.span_id: s for s in spans}
    dispatch = by_id[job.parent_id]
    assert dispatch.name == "dispatch" and dispatch.command == "web"
    request = by_id[dispatch.parent_id]
    assert request.name == "POST " + WEBHOOK_PATH and request.command == "web"
    assert request.parent_id == ""  # the sender's traceparent is a link, not the parent
    assert request.links == (("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),)
    assert request.attributes["http.response.status_code"] == 200
