"""Kombo request telemetry: counted where Kombo is called, kept in Redis for everyone else.

The poller talks to Kombo; ``dispatcher status`` and ``dispatcher web`` (``/metrics``) run in
other processes. :class:`RequestStats` is the client's observer: it aggregates requests in
memory (thread-safe, no Redis), and the poller adds what accumulated to
``{ns}:kombo-requests`` in the pipeline that records each integration's sweep, so telemetry
costs no extra round trip. :func:`read_request_series` turns that hash back into series.

Hash fields, per endpoint and status (``200``, ``429``, ... or ``network`` when no response
came): ``<endpoint>|<status>|count``, ``<endpoint>|<status>|sum`` (seconds) and
``<endpoint>|<status>|le|<bound>``, the number of requests that took at most ``bound`` seconds
and more than the next smaller bound (cumulated when read).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from dispatcher._text import as_str

__all__ = [
    "LATENCY_BUCKETS",
    "RequestSeries",
    "RequestStats",
    "normalise_endpoint",
    "read_request_series",
]

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Path segments made only of lower-case words are routes; anything else (Kombo ids are
# mixed-case alphanumerics) is an id, folded into "{id}" to keep label cardinality bounded.
_ROUTE_SEGMENT = re.compile(r"^[a-z_\-]+$")


def normalise_endpoint(endpoint: str) -> str:
    """``"GET /assessment/orders/B7s9.../result"`` -> ``"GET /assessment/orders/{id}/result"``."""
    method, _, path = endpoint.partition(" ")
    path = path.split("?", 1)[0]
    segments = [
        segment if not segment or _ROUTE_SEGMENT.match(segment) else "{id}"
        for segment in path.split("/")
    ]
    return f"{method} {'/'.join(segments)}"


def _bucket(seconds: float) -> str | None:
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return f"{bound:g}"
    return None  # only in +Inf, which is the count


class RequestStats:
    """Aggregates Kombo requests in memory until :meth:`drain` hands them over.

    :meth:`observe` fits :data:`dispatcher.kombo.client.RequestObserver`; it is called from every
    sweep thread, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds: dict[str, float] = {}

    def observe(self, endpoint: str, status: int | None, seconds: float) -> None:
        """Count one request."""
        series = f"{normalise_endpoint(endpoint)}|{status if status is not None else 'network'}"
        bucket = _bucket(seconds)
        with self._lock:
            self._counts[f"{series}|count"] += 1
            if bucket is not None:
                self._counts[f"{series}|le|{bucket}"] += 1
            self._seconds[f"{series}|sum"] = self._seconds.get(f"{series}|sum", 0.0) + seconds

    def drain(self) -> tuple[dict[str, int], dict[str, float]]:
        """Take what accumulated: (integer increments, float increments), then start afresh."""
        with self._lock:
            counts, seconds = dict(self._counts), dict(self._seconds)
            self._counts.clear()
            self._seconds.clear()
        return counts, seconds

    def restore(self, counts: Mapping[str, int], seconds: Mapping[str, float]) -> None:
        """Put drained increments back (their write to Redis failed), to be sent next time."""
        with self._lock:
            self._counts.update(counts)
            for field, value in seconds.items():
                self._seconds[field] = self._seconds.get(field, 0.0) + value


@dataclass(frozen=True, slots=True)
class RequestSeries:
    """All requests to one endpoint that ended with one status, since the counters began.

    ``buckets`` are cumulative counts per bound of :data:`LATENCY_BUCKETS` (Prometheus style).
    """

    endpoint: str
    status: str
    count: int
    seconds_sum: float
    buckets: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "status": self.status,
            "count": self.count,
            "seconds_sum": round(self.seconds_sum, 6),
        }


def read_request_series(raw: Mapping[bytes | str, bytes | str]) -> list[RequestSeries]:
    """Parse the ``{ns}:kombo-requests`` hash (as HGETALL returns it), sorted by series."""
    counts: dict[tuple[str, str], int] = {}
    sums: dict[tuple[str, str], float] = {}
    per_bucket: dict[tuple[str, str], dict[str, int]] = {}
    for raw_field, raw_value in raw.items():
        field, value = as_str(raw_field), as_str(raw_value)
        parts = field.split("|")
        if len(parts) < 3:
            continue  # not ours: ignore rather than break the whole read
        series = (parts[0], parts[1])
        try:
            if parts[2] == "count":
                counts[series] = int(value)
            elif parts[2] == "sum":
                sums[series] = float(value)
            elif parts[2] == "le" and len(parts) == 4:
                per_bucket.setdefault(series, {})[parts[3]] = int(value)
        except ValueError:
            continue
    result: list[RequestSeries] = []
    for series in sorted(counts):
        running = 0
        cumulative: list[int] = []
        for bound in LATENCY_BUCKETS:
            running += per_bucket.get(series, {}).get(f"{bound:g}", 0)
            cumulative.append(running)
        result.append(
            RequestSeries(
                endpoint=series[0],
                status=series[1],
                count=counts[series],
                seconds_sum=sums.get(series, 0.0),
                buckets=tuple(cumulative),
            )
        )
    return result
