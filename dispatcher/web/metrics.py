"""Prometheus exposition of the status snapshot (needs the ``web`` extra: prometheus-client).

Every scrape takes a fresh :class:`~dispatcher.ops.status.Snapshot`, so the numbers are Redis's,
shared by every process, not one process's memory: every ``web`` process serves the same
gauges (scrape one, or aggregate with ``max``, never ``sum``). The metric names are listed
in the README ("Operating it").

An integration's age since its last sweep is not a metric: Prometheus computes it from the
timestamp gauge (``time() - dispatcher_integration_last_sweep_timestamp_seconds``), and a
stored age would be as old as the scrape anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError, ResponseError

from dispatcher.ops.status import OK, Snapshot
from dispatcher.poller.telemetry import LATENCY_BUCKETS
from dispatcher.store.results import LATENCY_BUCKETS as RESULT_BUCKETS

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "exposition"]

log = logging.getLogger("dispatcher.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_WORKER_STATES = ("busy", "idle")
_JOB_STATES = ("queued", "started", "scheduled", "deferred", "finished", "failed", "canceled")


class SnapshotCollector(Collector):
    """Collects the dispatcher's metrics from a snapshot taken at scrape time.

    When Redis cannot be read, only ``dispatcher_redis_up 0`` is exposed: the scrape still
    succeeds, so an alert can tell "Redis down" from "exporter down".
    """

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self._take = take

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("dispatcher_redis_up", "1 when Redis answered this scrape.")
        problems = GaugeMetricFamily(
            "dispatcher_status_problems",
            "Problems `dispatcher status` lists (0: ok); broken keys included.",
        )
        broken = GaugeMetricFamily(
            "dispatcher_redis_broken_keys",
            "Keys Redis refused to read this scrape (another type than belongs there).",
        )
        try:
            snapshot = self._take()
        except ResponseError as exc:
            # Redis answered, and refused: not "down". The snapshot names broken keys
            # itself; this is a refusal it could not place.
            log.warning("metrics: Redis refused a read: %s", exc)
            up.add_metric([], 1)
            problems.add_metric([], 1)
            yield from (up, problems)
            return
        except (RedisError, OSError) as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        problems.add_metric([], len(snapshot.problems))
        broken.add_metric([], len(snapshot.broken_keys))
        yield from (up, problems, broken)
        yield from _queue_metrics(snapshot)
        yield from _order_metrics(snapshot)
        yield from _integration_metrics(snapshot)
        yield from _handler_metrics(snapshot)
        yield from _kombo_metrics(snapshot)
        yield from _result_metrics(snapshot)
        took = GaugeMetricFamily(
            "dispatcher_snapshot_duration_seconds", "Seconds this scrape spent reading Redis."
        )
        took.add_metric([], time.perf_counter() - started)
        yield took


def exposition(take: Callable[[], Snapshot]) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(take))
    return generate_latest(registry)


def _queue_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "dispatcher_queue_jobs",
        "Jobs of the dispatcher queue by state (finished and failed: those not yet expired).",
        labels=["queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "dispatcher_queue_oldest_queued_age_seconds",
        "How long the oldest queued job has waited (0 when the queue is empty).",
        labels=["queue"],
    )
    for queue in snapshot.queues:
        for state in _JOB_STATES:
            jobs.add_metric([queue.name, state], getattr(queue, state))
        oldest.add_metric([queue.name], queue.oldest_queued_age(snapshot.taken_at) or 0.0)
    workers = GaugeMetricFamily(
        "dispatcher_workers", "RQ workers on the dispatcher's queues by state.", labels=["state"]
    )
    # Busy and idle always: no worker running is 0, not an absent series (which an alert
    # on `dispatcher_workers == 0` would never see).
    states: dict[str, int] = dict.fromkeys(_WORKER_STATES, 0)
    for worker in snapshot.workers:
        states[worker.state] = states.get(worker.state, 0) + 1
    for state, count in sorted(states.items()):
        workers.add_metric([state], count)
    yield from (jobs, oldest, workers)


def _order_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    remembered = GaugeMetricFamily(
        "dispatcher_orders_remembered", "Order ids in the seen store (all integrations)."
    )
    remembered.add_metric([], snapshot.orders_seen)
    dispatched = CounterMetricFamily(
        "dispatcher_orders_dispatched", "Orders dispatched (enqueued) since the namespace began."
    )
    dispatched.add_metric([], snapshot.orders_dispatched)
    reconciled = CounterMetricFamily(
        "dispatcher_reconciled",
        "Orders and results the reconciler found in no queue or registry and put back, by "
        "kind: order (re-queued or rebuilt), unmarked (left to the next sweep), result.",
        labels=["kind"],
    )
    counts = (snapshot.reconcile or {}).get("reconciled") or {}
    for kind in sorted({"order", "unmarked", "result", *counts}):
        reconciled.add_metric([kind], counts.get(kind, 0))
    unconfirmed = GaugeMetricFamily(
        "dispatcher_webhook_unconfirmed",
        "Webhook orders waiting for Kombo to confirm them OPEN (kept while Kombo is down).",
    )
    oldest = GaugeMetricFamily(
        "dispatcher_webhook_unconfirmed_oldest_age_seconds",
        "How long the oldest webhook order has waited for Kombo's confirmation (0: none).",
    )
    waiting = snapshot.webhook_unconfirmed
    if waiting is not None:  # a key of the wrong type: no number rather than a false 0
        unconfirmed.add_metric([], waiting.count)
        oldest.add_metric([], waiting.oldest_age or 0.0)
    yield from (remembered, dispatched, reconciled, unconfirmed, oldest)


def _integration_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    labels = ["integration"]
    healthy = GaugeMetricFamily(
        "dispatcher_integration_healthy",
        "1 when the integration's last sweep succeeded recently, else 0.",
        labels=labels,
    )
    last = GaugeMetricFamily(
        "dispatcher_integration_last_sweep_timestamp_seconds",
        "Unix time of the integration's last successful sweep.",
        labels=labels,
    )
    errors = CounterMetricFamily(
        "dispatcher_integration_sweep_errors",
        "Sweeps of the integration that failed.",
        labels=labels,
    )
    seen = GaugeMetricFamily(
        "dispatcher_integration_orders_seen",
        "OPEN orders the integration's last successful sweep saw.",
        labels=labels,
    )
    remembered = GaugeMetricFamily(
        "dispatcher_integration_orders_remembered",
        "Order ids of the integration in the seen store.",
        labels=labels,
    )
    for integration in snapshot.integrations:
        name = [integration.integration_id]
        if integration.configured is not False:
            # Not configured nor registered: not polled, so neither healthy nor unhealthy.
            healthy.add_metric(name, 1 if integration.state == OK else 0)
        errors.add_metric(name, integration.error_count)
        remembered.add_metric(name, integration.remembered)
        if integration.last_sweep_at is not None:
            last.add_metric(name, integration.last_sweep_at)
        if integration.orders_seen is not None:
            seen.add_metric(name, integration.orders_seen)
    yield from (healthy, last, errors, seen, remembered)


def _handler_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    steps = CounterMetricFamily(
        "dispatcher_handler_steps",
        "Handler steps by outcome (completed, failed: every failed attempt counts).",
        labels=["handler", "outcome"],
    )
    for name, counts in snapshot.handlers.items():
        steps.add_metric([name, "completed"], counts.completed)
        steps.add_metric([name, "failed"], counts.failed)
    yield steps


def _go_float(value: float) -> str:
    # The spelling Prometheus clients use for `le` labels ("1.0", "+Inf").
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _kombo_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    labels = ["endpoint", "status"]
    requests = CounterMetricFamily(
        "dispatcher_kombo_requests",
        "Requests to Kombo by endpoint and HTTP status ('network' when no response came).",
        labels=labels,
    )
    latency = HistogramMetricFamily(
        "dispatcher_kombo_request_duration_seconds",
        "Seconds per Kombo request by endpoint and HTTP status.",
        labels=labels,
    )
    for series in snapshot.kombo_requests:
        names = [series.endpoint, series.status]
        requests.add_metric(names, series.count)
        buckets = [
            (_go_float(bound), float(count))
            for bound, count in zip(LATENCY_BUCKETS, series.buckets, strict=True)
        ]
        buckets.append(("+Inf", float(series.count)))
        latency.add_metric(names, buckets, series.seconds_sum)
    yield from (requests, latency)


def _result_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    """The way back: results by state, and per integration written, failed, latency."""
    states = GaugeMetricFamily(
        "dispatcher_results", "Results in the outbox by state.", labels=["state"]
    )
    for state, count in (snapshot.results or {}).items():
        states.add_metric([state], count)
    written = CounterMetricFamily(
        "dispatcher_results_written", "Results written to Kombo.", labels=["integration"]
    )
    failed = CounterMetricFamily(
        "dispatcher_results_failed", "Results that failed permanently.", labels=["integration"]
    )
    latency = HistogramMetricFamily(
        "dispatcher_result_write_seconds",
        "Seconds from a result's submit to its write.",
        labels=["integration"],
    )
    for integration, stats in sorted((snapshot.result_stats or {}).items()):
        written.add_metric([integration], stats.get("written", 0.0))
        failed.add_metric([integration], stats.get("failed", 0.0))
        if stats.get("written"):
            buckets = [
                (_go_float(bound), stats.get(f"le|{bound}", 0.0)) for bound in RESULT_BUCKETS
            ]
            buckets.append(("+Inf", stats.get("le|+Inf", 0.0)))
            latency.add_metric([integration], buckets, stats.get("latency_sum", 0.0))
    yield from (states, written, failed, latency)
