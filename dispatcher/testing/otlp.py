"""An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf), for the tracing tests and the
tracing overhead runs: what a collector would get from ``OTEL_EXPORTER_OTLP_ENDPOINT``.

Decoding needs opentelemetry-proto (the ``otel`` extra), imported when a receiver starts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dispatcher.testing import free_port

__all__ = ["ExportedSpan", "OtlpReceiver"]


@dataclass(frozen=True, slots=True)
class ExportedSpan:
    """One span as exported: ids in hex (``parent_id`` empty for a root)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int  # OTLP's SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    command: str  # the resource's dispatcher.command: the process that made the span
    pid: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class OtlpReceiver:
    """Receives exports on 127.0.0.1 (``port`` 0: a free one) in a daemon thread; keeps every
    span decoded (``keep``), or only counts them."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[ExportedSpan] = []
        self.count = 0
        self._lock = threading.Lock()
        receiver = self
        answer = ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                receiver._add(request, keep)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        """The spans of one trace received so far, by start time."""
        with self._lock:
            return sorted((s for s in self.spans if s.trace_id == trace_id), key=_start)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _add(self, request: Any, keep: bool) -> None:
        decoded: list[ExportedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                decoded.extend(_span(span, resource) for span in scope.spans)
        with self._lock:
            self.count += len(decoded)
            if keep:
                self.spans.extend(decoded)


def _start(span: ExportedSpan) -> int:
    return span.start_ns


def _span(span: Any, resource: dict[str, Any]) -> ExportedSpan:
    return ExportedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        kind=span.kind,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        attributes={a.key: _value(a.value) for a in span.attributes},
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        command=str(resource.get("dispatcher.command")),
        pid=int(resource.get("process.pid", 0)),
    )


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
