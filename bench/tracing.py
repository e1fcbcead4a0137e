"""What tracing costs per order: the tracing hooks of one order, off and on (issue 26).

    python bench/tracing.py [--orders 20000] [--reps 5]

One order's hooks, as the poller and the worker call them: the ``dispatch`` span (started,
its W3C context written into the job's meta, ended), the job span (its context read back from
the meta, a link to the first run noted) and one step span. Off, these are the checks every
order pays (``dispatcher.tracing`` with no endpoint set); on, the SDK makes the three spans,
batches them (``BatchSpanProcessor``) and encodes them to OTLP protobuf as the exporter does
before it sends them: CPU time of the whole process, the batch thread included, flushed at
the end. Not counted: the HTTP client spans of the instrumented httpx clients, and sending.

For throughput end to end, run bench/ingest.py and bench/dispatch.py side by side with and
without ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at ``bench/_otlp_sink.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from _support import Row, common_args, median, report
from dispatcher import tracing


class _Job:
    """What the job span reads of an RQ job."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.enqueued_at = None
        self.origin = "dispatcher-orders"
        self.id = "order-0"


def _orders(count: int) -> float:
    """CPU seconds per order for ``count`` orders' hooks, flushed."""
    ids = [f"order{index:06d}" for index in range(count)]
    started = time.process_time()
    for start in range(0, count, 250):  # a page at a time, as the ledger dispatches
        page = ids[start : start + 250]
        spans = tracing.dispatch_spans("greenhouse:Bench", page, source="poll")
        metas = [{"trace": tracing.carrier_of(spans.get(order_id))} for order_id in page]
        with tracing.ending_dispatch(spans) as traced:
            traced.extend(page)
        for meta in metas:
            with tracing.job_span("process_order", _Job(meta)), tracing.span("step log"):
                pass
    tracing.flush()
    return (time.process_time() - started) / count


def _encoding_exporter() -> Any:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Encoding(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    return Encoding()


def _traced(orders: int, reps: int, sampler: Any = None) -> list[float]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(_encoding_exporter(), max_queue_size=65536))
    tracing.install(provider)
    try:
        return [_orders(orders) * 1e6 for _ in range(reps)]
    finally:
        tracing.install(None)
        provider.shutdown()


def run(orders: int, reps: int) -> list[Row]:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    off = [_orders(orders) * 1e6 for _ in range(reps)]
    on = _traced(orders, reps)
    sampled = _traced(orders, reps, ParentBased(TraceIdRatioBased(0.1)))
    detail = f"{orders:,} orders, median of {reps}"
    rows = [
        Row(
            "tracing",
            "CPU per order, tracing off (the hooks' checks)",
            median(off),
            "µs",
            target="<= 5 µs per order (a dispatch costs ~400 µs)",
            met=median(off) <= 5,
            samples=off,
            detail=detail,
        ),
    ]
    for measure, samples in (
        ("CPU per order, tracing on (3 spans made, batched, encoded)", on),
        (
            "CPU per order, tracing on, 1 trace in 10 sampled "
            "(OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1)",
            sampled,
        ),
    ):
        rows.append(
            Row(
                "tracing",
                measure,
                median(samples),
                "µs",
                baseline="tracing off",
                baseline_value=median(off),
                ratio=median(off) / median(samples),
                ratio_note="(off / on: the fraction of the cost on that remains off)",
                target="reported",
                samples=samples,
                baseline_samples=off,
                detail=detail,
            )
        )
    return rows  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    common_args(parser, reps=5)
    args = parser.parse_args()
    report(run(args.orders, args.reps), args.json, header=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
