"""Every Redis key the dispatcher owns, in one place.

All of them sit under the namespace (``DISPATCHER_NAMESPACE``) so that two deployments can
share one Redis. RQ's own keys (``rq:queue:*``, ``rq:job:*``, registries) are RQ's; the
dispatcher only chooses their queue name and job ids. See docs/redis-keys.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Keys", "job_id_for"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one namespace."""

    namespace: str

    def seen(self, integration_id: str) -> str:
        """Hash: order id -> unix time it was first dispatched (the dedupe store)."""
        return f"{self.namespace}:seen:{integration_id}"

    @property
    def seen_integrations(self) -> str:
        """Set of integration ids that have a seen hash (so counting needs no SCAN)."""
        return f"{self.namespace}:seen-integrations"

    def sweep(self, integration_id: str) -> str:
        """Hash: the last sweep of one integration (times, counts, last error)."""
        return f"{self.namespace}:sweep:{integration_id}"

    def steps(self, integration_id: str, order_id: str) -> str:
        """Hash: handler name -> JSON {"output": ..., "completed_at": unix time} of each
        completed step of one order. Expires with the result TTL (outputs may hold personal
        data)."""
        return f"{self.namespace}:steps:{integration_id}:{order_id}"

    def effects(self, integration_id: str, order_id: str, handler: str) -> str:
        """Set of sub-effects a step already performed (e.g. the recipients already mailed),
        so a retried step skips them. Expires with the result TTL."""
        return f"{self.namespace}:effects:{integration_id}:{order_id}:{handler}"

    @property
    def step_stats(self) -> str:
        """Hash of counters ``<handler>:completed`` / ``<handler>:failed``."""
        return f"{self.namespace}:step-stats"

    @property
    def stats(self) -> str:
        """Hash of counters: ``orders_dispatched``, ``orders_rejected``, ``results_written``."""
        return f"{self.namespace}:stats"

    def rejected(self, integration_id: str) -> str:
        """Hash: order id -> JSON {"reason": message shown in the ATS, "at": unix time} of
        each order the webhook receiver rejected (answered 422). Written in the same atomic
        step that marks the order seen as ``rejected:<unix time>``, so polling skips it."""
        return f"{self.namespace}:rejected:{integration_id}"

    def results(self, integration_id: str) -> str:
        """Hash: order id -> JSON {"status": COMPLETED|CANCELLED, "at": unix time} of each
        order whose result was written back to Kombo (``dispatcher result``): finished."""
        return f"{self.namespace}:results:{integration_id}"


def job_id_for(namespace: str, integration_id: str, order_id: str) -> str:
    """The RQ job id of one order: deterministic, unique per (namespace, integration, order).

    RQ job ids allow only letters, digits, ``_`` and ``-``, and integration ids contain ``:``,
    so the triple is hashed rather than escaped. The namespace is part of it because RQ's job
    keys (``rq:job:<id>``) are shared by every namespace on one Redis.
    """
    digest = hashlib.blake2b(
        "\x00".join((namespace, integration_id, order_id)).encode(), digest_size=16
    ).hexdigest()
    return f"order-{digest}"
